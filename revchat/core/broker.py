"""How events reach every worker: the Broker interface.

In the manner of encode/broadcaster's ``backends/base.py``: the implementations live in
:mod:`revchat.backends` (``memory://`` for one process, ``redis://`` for many), picked by URL in
:mod:`revchat.backends.factory`. A broker stores each event (through its history) before it hands
it to its :class:`Listener` (the room engine), and it hands every event of a room over in one
order, from one task: the seed's ``chatroom()`` loop.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

from revchat.core.commit import CommitStats
from revchat.core.errors import BrokerUnavailable
from revchat.core.events import Draft, Event, User
from revchat.core.faults import Faults
from revchat.core.history import History, HistoryUnavailable
from revchat.core.presence import Presence
from revchat.core.sessions import Ended

log = logging.getLogger("revchat.broker")


class Listener(Protocol):
    """What a broker feeds: the room engine."""

    def deliver(self, events: Sequence[Event]) -> None:
        """Stored events, in the room's one order. Must not block."""

    def relay(self, room: str, user: User) -> None:
        """A live typing notice (never stored)."""

    def sessions_ended(self, ended: Ended) -> None:
        """Sessions ended on the server (on any worker): refuse them from now on."""

    def user_forgotten(self, user_id: str) -> None:
        """A user's data was deleted (on any worker): show them anonymised from now on."""


class Broker(ABC):
    """Publishes events and feeds the engine every event of its rooms in order; its
    :attr:`history` keeps them and its :attr:`presence` counts who is in which room."""

    name = "broker"
    history: History
    """Where the rooms' events are read back from (archive, resume, scroll-back)."""
    presence: Presence
    """Who is in which room, on every worker."""

    def __init__(self) -> None:
        self.listener: Listener | None = None
        self.faults = Faults(log)
        """Unexpected errors of this worker (the engine and the socket count theirs here too)."""

    async def open(self) -> None:
        """Connect; raise :class:`BrokerUnavailable` if that is impossible."""

    async def close(self) -> None:
        """Publish what is pending, then stop."""

    @abstractmethod
    async def publish(self, draft: Draft) -> Event:
        """Store the draft and deliver it to every worker; return it once stored.

        Raises :class:`BrokerUnavailable` when it cannot be stored (nothing is delivered then).
        """

    @abstractmethod
    def typing(self, room: str, user: User) -> None:
        """Relay a typing notice to every worker's subscribers of ``room`` (best effort)."""

    def subscribe(self, room: str, after: str | None) -> None:
        """Start delivering ``room``'s events that come after ``after`` (None: from the start)."""

    def unsubscribe(self, room: str) -> None:
        """Stop delivering ``room``'s events to this worker."""

    async def connected(self, room: str, user: User) -> bool:
        """Count one more socket of ``user`` in ``room``; True if it is the user's first anywhere.

        Raises :class:`BrokerUnavailable` when presence cannot be reached (so do the next two).
        """
        return await self.presence.connected(room, user)

    async def disconnected(self, room: str, user: User) -> bool:
        """Count one socket less; True if it was the user's last anywhere."""
        return await self.presence.disconnected(room, user)

    async def members(self, room: str) -> list[User]:
        """Users with at least one socket in ``room``, on any worker."""
        return await self.presence.members(room)

    async def ended_sessions(self) -> Ended:
        """What the store says was ended (read once at start); :class:`BrokerUnavailable`."""
        try:
            return await self.history.ended_sessions()
        except HistoryUnavailable as exc:
            raise BrokerUnavailable(str(exc)) from exc

    async def end_sessions(self, ended: Ended) -> None:
        """Keep ``ended`` in the store, then hand it to every worker's listener.

        Raises :class:`BrokerUnavailable` when it cannot be kept (nothing is ended then).
        """
        try:
            await self.history.end_sessions(ended)
        except HistoryUnavailable as exc:
            raise BrokerUnavailable(str(exc)) from exc
        self._tell_ended(ended)

    def _tell_ended(self, ended: Ended) -> None:
        if self.listener is not None:
            self.listener.sessions_ended(ended)

    async def forget_user(self, user_id: str) -> int:
        """Anonymise ``user_id`` in the store, then have every worker's listener show them
        anonymised (their cached events and member entries); return how many stored events
        changed. Raises what the history raises when the store cannot be written."""
        count = await self.history.forget_user(user_id)
        self._tell_forgotten(user_id)
        return count

    def _tell_forgotten(self, user_id: str) -> None:
        if self.listener is not None:
            self.listener.user_forgotten(user_id)

    def problem(self) -> str | None:
        """Why the broker cannot be used now, or None when it is healthy (``/healthz``).

        It names the part ("publisher", "history", "broker") and says what is wrong in words a
        visitor may read: no file path, no address (those go to the log).
        """
        return None

    @property
    def commit_stats(self) -> CommitStats:
        """The publishing loop's counters (``/metrics``)."""
        return CommitStats()
