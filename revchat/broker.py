"""How events reach every worker: the Broker interface and the in-process backend, picked by URL.

In the manner of encode/broadcaster: ``memory://`` (one process) lives here; ``redis://`` lives in
:mod:`revchat.redis_broker` and is imported only when asked for. A broker stores each event (through its
history) before it hands it to its :class:`Listener` — the room engine — and it hands every event
of a room over in one order, from one task: the seed's ``chatroom()`` loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from revchat.config import Settings
from revchat.events import Draft, Event, User, storable
from revchat.faults import Faults, one_line
from revchat.history import History, HistoryUnavailable, open_history
from revchat.sessions import Ended

log = logging.getLogger("revchat.broker")


class BrokerUnavailable(Exception):
    """Events cannot be published right now (store or broker down); one line says why."""


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


class Unstorable(Exception):
    """The store refused one draft for what it holds (not because it is down). Only that draft's
    publisher hears of it; the batch it came in is stored without it."""


@dataclass
class CommitStats:
    """What the publishing loop has done, for ``/metrics``."""

    batches: int = 0
    """Batches committed to the store: history writes."""
    events: int = 0
    """Events stored."""
    failed: int = 0
    """Batches the store could not take (it was unavailable)."""
    unexpected: int = 0
    """Errors nothing foresaw, each logged (also counted in the broker's :class:`Faults`)."""


class GroupCommit:
    """Stores drafts in batches from one task, in the order they were submitted.

    The drafts that arrive while a batch is being stored go into the next one (group commit), so
    durability costs one write per batch, not one per message. ``stored`` sees each stored batch
    before its publishers are answered; ``failed`` sees each failure, whose publishers get
    :class:`BrokerUnavailable`.

    The loop cannot die of what it is given: a batch that fails for any other reason than an
    unavailable store is stored again draft by draft, so only the culprit's publisher gets
    :class:`Unstorable`; an error in ``stored`` is logged and counted, and the publishers are
    still answered. :attr:`running` is false once the task has ended, however it ended.
    """

    def __init__(
        self,
        store: Callable[[list[Draft]], Awaitable[list[Event]]],
        stored: Callable[[list[Event]], None],
        failed: Callable[[HistoryUnavailable], None],
        max_batch: int = 4096,
        faults: Faults | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.stats = CommitStats()
        self._faults = faults or Faults(log)
        self._store = store
        self._stored = stored
        self._failed = failed
        self._queue: list[tuple[Draft, asyncio.Future[Event]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self, name: str) -> None:
        self._task = asyncio.create_task(self._run(), name=name)
        self._task.add_done_callback(self._ended)

    @property
    def running(self) -> bool:
        task = self._task
        return task is not None and not task.done() and not self._stopping

    def problem(self) -> str | None:
        """Why nothing can be published, or None (``/healthz``)."""
        if self._task is not None and not self.running and not self._stopping:
            return "the publisher has stopped"
        return None

    def submit(self, draft: Draft) -> asyncio.Future[Event]:
        """Queue a draft now (so submission order is store order); the future is its event.

        A draft that no store could keep or no socket send (text or user that is not valid
        Unicode) fails at once with :class:`Unstorable`, whatever the caller checked before.
        """
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        if not storable_draft(draft):
            future.set_exception(Unstorable("the message is not valid Unicode text"))
            return future
        if not self.running:
            reason = "the server is shutting down" if self._stopping else "the publisher is not running"
            future.set_exception(BrokerUnavailable(reason))
            return future
        self._queue.append((draft, future))
        self._wakeup.set()
        return future

    async def stop(self, timeout: float | None = None) -> None:
        """Store what is queued (waiting at most ``timeout``), then stop; fail what is left."""
        self._stopping = True
        self._wakeup.set()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait((task,), timeout=timeout)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        fail(self._queue, "the server is shutting down")
        self._queue.clear()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                try:
                    await self._commit(batch)
                except Exception as exc:  # a bug of ours: answer the batch, keep the loop
                    self._unexpected("publishing a batch", exc)
                    fail(batch, "the message could not be published")
            if self._stopping:
                return

    async def _commit(self, batch: list[tuple[Draft, asyncio.Future[Event]]]) -> None:
        try:
            events = await self._store([draft for draft, _ in batch])
        except HistoryUnavailable as exc:
            self._unavailable(batch, exc)
            return
        except asyncio.CancelledError:
            fail(batch, "the server is shutting down")  # stop() gave up waiting
            raise
        except Exception as exc:
            if len(batch) == 1:
                self._unstorable(batch[0], exc)
                return
            # Something in the batch the store cannot take: store it draft by draft, in order,
            # so that only the culprit's publisher hears of it.
            for index, item in enumerate(batch):
                try:
                    await self._commit([item])
                except asyncio.CancelledError:
                    fail(batch[index:], "the server is shutting down")
                    raise
            return
        self._done(batch, events)

    def _done(self, batch: list[tuple[Draft, asyncio.Future[Event]]], events: list[Event]) -> None:
        if len(events) != len(batch):
            raise RuntimeError(f"the store returned {len(events)} events for {len(batch)} drafts")
        self.stats.batches += 1
        self.stats.events += len(events)
        try:
            self._stored(events)
        except Exception as exc:  # stored all the same: the publishers must hear so
            self._unexpected("delivering a batch", exc)
        for (_, future), event in zip(batch, events, strict=True):
            if not future.done():
                future.set_result(event)

    def _unavailable(self, batch: list[tuple[Draft, asyncio.Future[Event]]],
                     exc: HistoryUnavailable) -> None:
        self.stats.failed += 1
        try:
            self._failed(exc)
        finally:
            fail(batch, "history is unavailable")

    def _unstorable(self, item: tuple[Draft, asyncio.Future[Event]], exc: Exception) -> None:
        draft, future = item
        self._unexpected(f"storing a {draft.type} of {draft.user.id} in {draft.room}", exc)
        if not future.done():
            future.set_exception(Unstorable("the message cannot be stored"))

    def _unexpected(self, what: str, exc: BaseException) -> None:
        self.stats.unexpected += 1
        self._faults.record(what, exc)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        log.error("the publisher stopped: %s", one_line(exc) if exc else "it returned",
                  exc_info=exc)


def storable_draft(draft: Draft) -> bool:
    """True when every text of the draft can be stored and sent as UTF-8."""
    user, avatar = draft.user, draft.user.avatar
    if draft.text.isascii() and user.name.isascii() and user.id.isascii() and \
            (avatar is None or avatar.isascii()):
        return True  # the common case, without a call per text
    return storable(draft.text) and storable(user.id) and storable(user.name) and \
        (avatar is None or storable(avatar))


def fail(batch: Sequence[tuple[Draft, asyncio.Future[Event]]], reason: str) -> None:
    """Answer every publisher of ``batch`` with :class:`BrokerUnavailable`."""
    for _, future in batch:
        if not future.done():
            future.set_exception(BrokerUnavailable(reason))


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
