"""Where a room's events are kept: the History interface and its backends, picked by URL.

``memory://`` keeps events in this process only; ``sqlite:///PATH`` keeps them in a file
(:mod:`revchat.sqlite`). A store gives events their ids: increasing per room, in the order
:meth:`History.append` receives them. :meth:`History.append` takes a whole batch and commits it
once; the broker's publishing loop is what groups concurrent messages into batches.
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

from revchat.events import Draft, Event, User, id_key
from revchat.sessions import Ended, SessionBook


class HistoryUnavailable(Exception):
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


class MemoryHistory(History):
    """Events kept in this process (at most ``keep`` per room); nothing survives a restart."""

    name = "memory"

    def __init__(self, keep: int = 1000) -> None:
        self.keep = max(1, keep)
        self._rooms: dict[str, deque[Event]] = defaultdict(lambda: deque(maxlen=self.keep))
        # Ids start from the clock, so a client resuming with an id from before a restart
        # never matches an unrelated event of this process.
        self._ids = itertools.count(time.time_ns() // 1000)
        self._ended = SessionBook()

    async def append(self, drafts: Sequence[Draft]) -> list[Event]:
        events = [Event.stored(d, str(next(self._ids))) for d in drafts]
        for event in events:
            self._rooms[event.room].append(event)
        return events

    async def recent(self, room: str, limit: int) -> list[Event]:
        events = self._rooms.get(room, ())
        return list(events)[-limit:] if limit > 0 else []

    async def after(self, room: str, event_id: str, limit: int) -> list[Event] | None:
        events = list(self._rooms.get(room, ()))
        for index, event in enumerate(events):
            if event.id == event_id:
                return events[index + 1 : index + 1 + limit]
        return None

    async def before(self, room: str, event_id: str | None, limit: int) -> tuple[list[Event], bool]:
        events = list(self._rooms.get(room, ()))
        key = id_key(event_id) if event_id is not None else None
        if key is not None:
            events = [e for e in events if e.key < key]
        elif event_id is not None:
            return [], False
        page = events[-limit:] if limit > 0 else []
        return page, len(events) > len(page)

    async def purge(self, room: str) -> int:
        return len(self._rooms.pop(room, ()))

    async def export(self, room: str) -> AsyncIterator[Event]:
        for event in list(self._rooms.get(room, ())):
            yield event

    async def ended_sessions(self) -> Ended:
        self._ended.apply(Ended())
        return self._ended.snapshot()

    async def end_sessions(self, ended: Ended) -> None:
        self._ended.apply(ended)

    async def forget_user(self, user_id: str) -> int:
        count = 0
        anonymous = User(user_id, FORGOTTEN_NAME, None)
        for room, events in self._rooms.items():
            for index, event in enumerate(events):
                if event.user.id == user_id:
                    events[index] = Event(event.type, event.id, room, anonymous, event.timestamp,
                                          event.text)
                    count += 1
        return count


def open_history(url: str, *, keep: int = 1000, retention_count: int = 0,
                 retention_days: float = 0.0) -> History:
    """The history store for ``url``: ``memory://`` or ``sqlite:///PATH``."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryHistory(keep=keep)
    if scheme == "sqlite":
        from revchat.sqlite import SQLiteHistory

        return SQLiteHistory(sqlite_path(url), retention_count=retention_count,
                             retention_days=retention_days)
    raise ValueError(f"unknown history URL {url!r} (expected sqlite:///PATH or memory://)")


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///PATH`` URL: ``sqlite:///rel.db`` is relative, ``sqlite:////abs`` not."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"{url!r} is not sqlite:///PATH")
    return url[len("sqlite:///"):]
