"""Where a room's events are kept: the History interface.

Its backends live in :mod:`revchat.backends`, picked by URL: ``memory://`` keeps events in this
process only, ``sqlite:///PATH`` in a file, and the Redis broker keeps each room in a stream. A
store gives events their ids: increasing per room, in the order
:meth:`History.append` receives them. :meth:`History.append` takes a whole batch and commits it
once; the broker's publishing loop is what groups concurrent messages into batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence

from revchat.core.errors import Unavailable
from revchat.core.events import Draft, Event, User
from revchat.core.sessions import Ended


class HistoryUnavailable(Unavailable):
    """The store cannot be read or written right now; the message says why, in one line."""


class History(ABC):
    """A room's stored events. All methods are safe to call from the event loop (never block it)."""

    name = "history"

    async def open(self) -> None:
        """Make the store ready (create files, run migrations)."""

    async def close(self) -> None:
        """Finish pending writes and release the store."""

    @abstractmethod
    async def append(self, drafts: Sequence[Draft]) -> list[Event]:
        """Store a batch in one commit; return the events with their ids, in the same order."""

    @abstractmethod
    async def recent(self, room: str, limit: int) -> list[Event]:
        """The last ``limit`` events of ``room``, oldest first."""

    @abstractmethod
    async def after(self, room: str, event_id: str, limit: int) -> list[Event] | None:
        """At most ``limit`` events after ``event_id``, oldest first; None if the id is not kept."""

    @abstractmethod
    async def before(self, room: str, event_id: str | None, limit: int) -> tuple[list[Event], bool]:
        """At most ``limit`` events older than ``event_id`` (or the newest), oldest first, and
        whether older ones remain."""

    @abstractmethod
    async def purge(self, room: str) -> int:
        """Delete every event of ``room``; return how many were deleted."""

    @abstractmethod
    def export(self, room: str) -> AsyncIterator[Event]:
        """Every event of ``room``, oldest first."""

    @abstractmethod
    async def forget_user(self, user_id: str) -> int:
        """Anonymise a user's name and avatar in stored events (data deletion); return the count."""

    @abstractmethod
    async def ended_sessions(self) -> Ended:
        """The sessions and users ended on the server that have not expired yet."""

    @abstractmethod
    async def end_sessions(self, ended: Ended) -> None:
        """Keep ``ended`` (merged with what is kept) until its entries expire."""

    async def check(self) -> None:
        """Raise :class:`HistoryUnavailable` if the store cannot be used."""


FORGOTTEN_NAME = "Deleted user"
"""The name a user's stored events show once the user asked for their data to be deleted."""


def forgotten_user(user_id: str) -> User:
    """How a user who asked for their data to be deleted is shown: the same id, no name, no avatar."""
    return User(user_id, FORGOTTEN_NAME, None)


def forgotten(event: Event) -> Event:
    """``event`` with its author anonymised (:func:`forgotten_user`)."""
    return Event(event.type, event.id, event.room, forgotten_user(event.user.id), event.timestamp,
                 event.text)
