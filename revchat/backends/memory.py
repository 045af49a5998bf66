"""The in-process backend (``memory://``): one worker, nothing shared, history optional.

:class:`MemoryBroker` hands stored events straight to this process's engine, in order;
:class:`MemoryPresence` counts this process's sockets; :class:`MemoryHistory` keeps events in
memory (``--history memory://``) for tests and throwaway servers.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Sequence

from revchat.core.broker import Broker
from revchat.core.commit import CommitStats, GroupCommit
from revchat.core.errors import BrokerUnavailable
from revchat.core.events import Draft, Event, User, id_key
from revchat.core.history import History, HistoryUnavailable, forgotten
from revchat.core.presence import Presence
from revchat.core.sessions import Ended, SessionBook

log = logging.getLogger("revchat.broker")


class MemoryBroker(Broker):
    """One process: stored events go straight to this process's engine, in order."""

    name = "memory"

    def __init__(self, history: History) -> None:
        super().__init__()
        self.history = history
        self._commits = GroupCommit(history.append, self._deliver, self._fail, faults=self.faults)
        self.presence = MemoryPresence()
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

    def problem(self) -> str | None:
        stopped = self._commits.problem()
        if stopped is not None:
            return f"publisher: {stopped}"
        return f"history: {self._failure}" if self._failure else None


class MemoryPresence(Presence):
    """One process's count of sockets per room and user."""

    def __init__(self) -> None:
        self._presence: dict[str, Counter[str]] = {}
        self._users: dict[tuple[str, str], User] = {}

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
        for events in self._rooms.values():
            for index, event in enumerate(events):
                if event.user.id == user_id:
                    events[index] = forgotten(event)
                    count += 1
        return count
