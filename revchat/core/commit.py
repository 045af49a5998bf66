"""Group commit: the one task per worker that stores what is published, in batches, in the order
it was submitted, and answers each publisher (the memory and Redis brokers both use it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from revchat.core.errors import BrokerUnavailable, Refused, one_line
from revchat.core.events import Draft, Event, storable
from revchat.core.faults import Faults
from revchat.core.history import HistoryUnavailable

log = logging.getLogger("revchat.broker")


class Unstorable(Refused):
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
        # The publishers are answered first: whatever the listener does with the list, each
        # hears of its own stored event (their code runs only after this returns).
        for (_, future), event in zip(batch, events, strict=True):
            if not future.done():
                future.set_result(event)
        try:
            self._stored(events)
        except Exception as exc:  # stored all the same: the publishers have heard so
            self._unexpected("delivering a batch", exc)

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
        if exc is not None:  # it returns only once stopping
            log.error("the publisher stopped: %s", one_line(exc), exc_info=exc)


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
