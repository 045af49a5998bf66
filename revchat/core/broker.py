"""How events reach every worker: the Broker interface and the in-process backend, picked by URL.

In the manner of encode/broadcaster: ``memory://`` (one process) lives here; ``redis://`` lives in
:mod:`revchat.redis_broker` and is imported only when asked for. A broker stores each event (through its
history) before it hands it to its :class:`Listener` — the room engine — and it hands every event
of a room over in one order, from one task: the seed's ``chatroom()`` loop.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

from revchat.commit import CommitStats, GroupCommit
from revchat.config import Settings
from revchat.errors import BrokerUnavailable
from revchat.events import Draft, Event, User
from revchat.faults import Faults
from revchat.history import History, HistoryUnavailable, open_history
from revchat.sessions import Ended

log = logging.getLogger("revchat.broker")


class Listener(Protocol):
    """What a broker feeds: the room engine."""

    def deliver(self, events: Sequence[Event]) -> None:
        """Stored events, in the room's one order. Must not block."""

    def relay(self, room: str, user: User) -> None:
        """A live typing notice (never stored)."""

    def sessions_ended(self, ended: Ended) -> None:
        """Sessions ended on the server (on any worker): refuse them from now on."""


class Broker(ABC):
    """Publishes events, keeps presence, and feeds the engine every event of its rooms in order."""

    name = "broker"
    history: History
    """Where the rooms' events are read back from (archive, resume, scroll-back)."""

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

    @abstractmethod
    async def connected(self, room: str, user: User) -> bool:
        """Count one more socket of ``user`` in ``room``; True if it is the user's first anywhere."""

    @abstractmethod
    async def disconnected(self, room: str, user: User) -> bool:
        """Count one socket less; True if it was the user's last anywhere."""

    @abstractmethod
    async def members(self, room: str) -> list[User]:
        """Users with at least one socket in ``room``, on any worker."""

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


class MemoryBroker(Broker):
    """One process: stored events go straight to this process's engine, in order."""

    name = "memory"

    def __init__(self, history: History) -> None:
        super().__init__()
        self.history = history
        self._commits = GroupCommit(history.append, self._deliver, self._fail, faults=self.faults)
        self._presence: dict[str, Counter[str]] = {}
        self._users: dict[tuple[str, str], User] = {}
        self._failure: str | None = None

    async def open(self) -> None:
        try:
            await self.history.open()
        except HistoryUnavailable as exc:
            raise BrokerUnavailable(str(exc)) from exc
        self._commits.start("revchat-publisher")

    async def close(self) -> None:
        await self._commits.stop()
        await self.history.close()

    async def publish(self, draft: Draft) -> Event:
        return await self._commits.submit(draft)

    @property
    def commit_stats(self) -> CommitStats:
        return self._commits.stats

    def _deliver(self, events: list[Event]) -> None:
        if self._failure is not None:
            log.info("history writes work again")
            self._failure = None
        if self.listener is not None:
            self.listener.deliver(events)

    def _fail(self, exc: HistoryUnavailable) -> None:
        if self._failure is None:  # once per outage, not once per batch
            log.error("history write failed: %s", exc)
        self._failure = "history cannot be written"

    def typing(self, room: str, user: User) -> None:
        if self.listener is not None:
            self.listener.relay(room, user)

    async def connected(self, room: str, user: User) -> bool:
        counts = self._presence.setdefault(room, Counter())
        counts[user.id] += 1
        self._users[(room, user.id)] = user
        return counts[user.id] == 1

    async def disconnected(self, room: str, user: User) -> bool:
        counts = self._presence.get(room)
        if counts is None or counts[user.id] <= 0:
            return False
        counts[user.id] -= 1
        if counts[user.id] > 0:
            return False
        del counts[user.id]
        self._users.pop((room, user.id), None)
        if not counts:
            del self._presence[room]
        return True

    async def members(self, room: str) -> list[User]:
        return [self._users[(room, uid)] for uid in self._presence.get(room, ())]

    def problem(self) -> str | None:
        stopped = self._commits.problem()
        if stopped is not None:
            return f"publisher: {stopped}"
        return f"history: {self._failure}" if self._failure else None


def open_broker(settings: Settings) -> Broker:
    """The broker the settings name, with its history; nothing is connected until ``open()``.

    ``memory://`` stores through ``--history``; ``redis://`` (the redis extra) keeps each room's
    history in its stream.
    """
    scheme = urlsplit(settings.broker).scheme
    if scheme == "memory":
        history = open_history(
            settings.history,
            keep=max(settings.resume_limit, settings.archive_size, 100),
            retention_count=settings.retention_count,
            retention_days=settings.retention_days,
        )
        return MemoryBroker(history)
    if scheme in {"redis", "rediss"}:
        try:
            from revchat.redis_broker import RedisBroker
        except ImportError as exc:
            raise BrokerUnavailable(
                "--broker redis:// needs the redis extra: pip install 'revchat[redis]'"
            ) from exc
        return RedisBroker(settings.broker, prefix=settings.redis_prefix,
                           maxlen=settings.retention_count)
    raise ValueError(f"unknown broker URL {settings.broker!r} (expected memory:// or redis://...)")
