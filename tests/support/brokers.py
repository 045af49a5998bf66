"""Redis broker workers for tests: a listener that records what a broker hands it, and the
factory behind the ``make`` fixture (tests/conftest.py), which closes every worker it opened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from revchat.backends.redis_broker import RedisBroker
from revchat.core.events import Event, User
from revchat.core.sessions import Ended

TIMEOUT = 15.0


class Signal:
    """Wakes waiters whenever something they may be waiting for changed."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                await self._changed.wait()
                self._changed.clear()


class Recorder(Signal):
    """A listener that keeps what a broker delivers and relays."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []
        self.typing: list[tuple[str, User]] = []
        self.ended: list[Ended] = []
        self.forgotten: list[str] = []

    def deliver(self, events: Sequence[Event]) -> None:
        self.events.extend(events)
        self.notify()

    def relay(self, room: str, user: User) -> None:
        self.typing.append((room, user))
        self.notify()

    def sessions_ended(self, ended: Ended) -> None:
        self.ended.append(ended)
        self.notify()

    def user_forgotten(self, user_id: str) -> None:
        self.forgotten.append(user_id)
        self.notify()

    def of(self, room: str, kind: str | None = None) -> list[Event]:
        return [e for e in self.events if e.room == room and kind in (None, e.type)]

    async def count(self, n: int) -> None:
        """Wait until at least ``n`` events were delivered."""
        await self.until(lambda: len(self.events) >= n)


Make = Callable[..., Awaitable[RedisBroker]]


@asynccontextmanager
async def brokers(prefix: str) -> AsyncIterator[Make]:
    """Opens brokers (workers) on a server's URL with a :class:`Recorder` listener (unless
    ``listen=False``); closes them all after."""
    made: list[RedisBroker] = []

    async def make_broker(url: str, *, listen: bool = True, **options: Any) -> RedisBroker:
        broker = RedisBroker(url, prefix=prefix, **options)
        broker.retry_max = 0.3  # recover quickly in tests; production caps at 5 s
        if listen:
            broker.listener = Recorder()
        await broker.open()
        made.append(broker)
        return broker

    try:
        yield make_broker
    finally:
        for broker in made:
            await broker.close()


def recorder(broker: RedisBroker) -> Recorder:
    assert isinstance(broker.listener, Recorder)
    return broker.listener
