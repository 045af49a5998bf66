"""A subscription interrupted at each await of its life leaves no trace: the engine driven with
a real MemoryBroker whose history and presence can be held at one named point, while the
subscribing task (the socket handler, for a client that went away) is cancelled there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from revchat.broker import MemoryBroker
from revchat.engine import Engine, Limits, SessionEnded
from revchat.events import Draft, Event, User
from revchat.history import HistoryUnavailable, MemoryHistory
from revchat.quota import TooManySockets
from revchat.room import Subscription
from revchat.sessions import Ended, new_session
from tests.support.sink import Sink

ANN = User("guest:ann", "Ann")
BOB = User("guest:bob", "Bob")


class Gate:
    """Named points where a coroutine stops while the point is armed, until released."""

    def __init__(self) -> None:
        self.armed: str | None = None
        self.fail = False
        self.reached = asyncio.Event()
        self.released = asyncio.Event()

    def arm(self, point: str, *, fail: bool = False) -> None:
        self.armed, self.reached, self.released = point, asyncio.Event(), asyncio.Event()
        self.fail = fail

    async def point(self, name: str) -> None:
        if self.armed == name:
            self.armed = None  # once
            self.reached.set()
            await self.released.wait()
            if self.fail:
                raise HistoryUnavailable("the test's store failed")


class GatedHistory(MemoryHistory):
    def __init__(self, gate: Gate) -> None:
        super().__init__(keep=10_000)
        self.gate = gate

    async def recent(self, room: str, limit: int) -> list[Event]:
        await self.gate.point("history.recent")
        return await super().recent(room, limit)

    async def after(self, room: str, event_id: str, limit: int) -> list[Event] | None:
        await self.gate.point("history.after")
        return await super().after(room, event_id, limit)

    async def append(self, drafts: Sequence[Draft]) -> list[Event]:
        if any(d.type == "join" for d in drafts):
            await self.gate.point("history.append(join)")
        return await super().append(drafts)


class GatedBroker(MemoryBroker):
    def __init__(self, gate: Gate) -> None:
        super().__init__(GatedHistory(gate))
        self.gate = gate

    async def members(self, room: str) -> list[User]:
        await self.gate.point("broker.members")
        return await super().members(room)

    async def connected(self, room: str, user: User) -> bool:
        await self.gate.point("broker.connected")
        return await super().connected(room, user)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Engine, GatedBroker, Gate]]:
    gate = Gate()
    broker = GatedBroker(gate)
    await broker.open()
    engine = Engine(broker, Limits(write_delay=0, rate=0, archive_size=5, user_sockets=5))
    await engine.open()
    yield engine, broker, gate
    await broker.close()


async def settled(broker: GatedBroker) -> None:
    """Wait until everything submitted so far is stored and delivered (one order)."""
    await broker.publish(Draft("message", "elsewhere", BOB, 0, "marker"))
    for _ in range(5):
        await asyncio.sleep(0)  # let the engine's call_soon flushes and cleanup tasks run


def presence_events(broker: GatedBroker, room: str, user: User) -> list[str]:
    stored = list(broker.history._rooms.get(room, ()))
    return [e.type for e in stored if e.user.id == user.id and e.type in {"join", "leave"}]


POINTS = ["history.recent", "broker.members", "history.after", "broker.connected",
          "history.append(join)"]


@pytest.mark.parametrize("point", POINTS)
async def test_interrupted_subscription_leaves_no_trace(
    setup: tuple[Engine, GatedBroker, Gate], point: str
) -> None:
    """Cancelled while held at ``point``: not a member, not counted, the room freed, and a
    join that was stored is followed by its leave."""
    engine, broker, gate = setup
    since = None
    if point == "history.after":
        # a resume from before what the room keeps in memory reads the history
        for i in range(120):
            await broker.publish(Draft("message", "lobby", BOB, 0, f"old {i}"))
        since = next(iter(broker.history._rooms["lobby"])).id
    gate.arm(point)
    task = asyncio.ensure_future(engine.subscribe("lobby", ANN, Sink(), since=since))
    await asyncio.wait_for(gate.reached.wait(), 5)
    task.cancel()
    gate.released.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settled(broker)
    assert await broker.members("lobby") == []
    assert "lobby" not in engine.rooms
    assert engine.quota.held(ANN.id) == 0
    assert presence_events(broker, "lobby", ANN) in ([], ["join", "leave"])


async def test_cancelled_twice_still_cleans_up(setup: tuple[Engine, GatedBroker, Gate]) -> None:
    """A second cancellation while the join is being stored cannot stop the clean-up half-way."""
    engine, broker, gate = setup
    gate.arm("history.append(join)")
    task = asyncio.ensure_future(engine.subscribe("lobby", ANN, Sink()))
    await asyncio.wait_for(gate.reached.wait(), 5)
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()
    gate.released.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settled(broker)
    assert await broker.members("lobby") == []
    assert presence_events(broker, "lobby", ANN) == ["join", "leave"]


async def test_others_see_the_interrupted_user_come_and_go(
    setup: tuple[Engine, GatedBroker, Gate]
) -> None:
    """A member present all along sees the vanished user's join and then its leave, in order,
    and the member list it would hand a newcomer no longer has them."""
    engine, broker, gate = setup
    watcher_sink = Sink()
    watcher = await engine.subscribe("lobby", BOB, watcher_sink)
    gate.arm("history.append(join)")
    task = asyncio.ensure_future(engine.subscribe("lobby", ANN, Sink()))
    await asyncio.wait_for(gate.reached.wait(), 5)
    task.cancel()
    gate.released.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settled(broker)
    seen = [(f["type"], f["user"]["id"]) for f in watcher_sink.frames() if f["type"] in {"join", "leave"}]
    assert seen == [("join", BOB.id), ("join", ANN.id), ("leave", ANN.id)]
    assert set(engine.rooms["lobby"].members) == {BOB.id}
    await engine.cancel(watcher)


async def test_socket_quota_counts_from_the_start(setup: tuple[Engine, GatedBroker, Gate]) -> None:
    """Sockets waiting for their room to load count against --user-sockets, and every one that
    ends, however it ends, gives its place back."""
    engine, _, _ = setup
    subs: list[Subscription] = [await engine.subscribe("lobby", ANN, Sink()) for _ in range(5)]
    with pytest.raises(TooManySockets):
        await engine.subscribe("other", ANN, Sink())
    for sub in subs:
        await engine.cancel(sub)
    assert engine.quota.held(ANN.id) == 0


async def test_a_stale_load_does_not_take_a_newer_room(setup: tuple[Engine, GatedBroker, Gate]) -> None:
    """A room's first subscriber leaves while the room loads, a second one opens it again, then
    the first load fails: the second subscriber's room is untouched and still delivers."""
    engine, broker, gate = setup
    gate.arm("history.recent", fail=True)
    first = asyncio.ensure_future(engine.subscribe("lobby", ANN, Sink()))
    await asyncio.wait_for(gate.reached.wait(), 5)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    sink = Sink()
    second = await engine.subscribe("lobby", BOB, sink)
    gate.released.set()  # the first load now fails
    await settled(broker)
    await engine.say(second, "still delivered")
    await settled(broker)
    assert [f.get("text") for f in sink.frames() if f["type"] == "message"] == ["still delivered"]
    await engine.cancel(second)


async def test_a_session_ended_while_its_socket_opens_is_refused(
    setup: tuple[Engine, GatedBroker, Gate]
) -> None:
    """Signed out while the socket waits for its room to load: the subscription is refused
    with SessionEnded, leaving no trace, instead of living on with a dead session."""
    engine, broker, gate = setup
    session = new_session(ANN)
    gate.arm("history.recent")
    task = asyncio.ensure_future(engine.subscribe("lobby", ANN, Sink(), session=session))
    await asyncio.wait_for(gate.reached.wait(), 5)
    await engine.end_sessions(Ended(sessions={session.id: session.expires}))
    gate.released.set()
    with pytest.raises(SessionEnded):
        await task
    await settled(broker)
    assert await broker.members("lobby") == []
    assert engine.quota.held(ANN.id) == 0 and "lobby" not in engine.rooms
