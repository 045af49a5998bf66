"""A subscription interrupted at each await of its life leaves no trace: the engine driven with
a real MemoryBroker whose history and presence can be held at one named point, while the
subscribing task (the socket handler, for a client that went away) is cancelled there."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Sequence

import pytest

from revchat.backends.memory import MemoryBroker, MemoryHistory
from revchat.core.engine import Engine, Limits, SessionEnded
from revchat.core.events import Draft, Event, User
from revchat.core.history import HistoryUnavailable
from revchat.core.quota import SocketQuota, TooManySockets
from revchat.core.room import Subscription
from revchat.core.sessions import Ended, new_session
from tests.support.sink import Sink, line_frame

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
    engine = Engine(broker, Limits(write_delay=0, rate=0, archive_size=5, user_sockets=5), frame=line_frame)
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


async def test_the_clean_up_task_is_let_go_once_done(setup: tuple[Engine, GatedBroker, Gate]) -> None:
    """The task that undoes an interrupted join is kept only while it runs."""
    engine, broker, gate = setup
    gate.arm("history.append(join)")
    task = asyncio.ensure_future(engine.subscribe("lobby", ANN, Sink()))
    await asyncio.wait_for(gate.reached.wait(), 5)
    task.cancel()
    gate.released.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settled(broker)
    assert engine._tasks == set()
    assert presence_events(broker, "lobby", ANN) == ["join", "leave"]


async def test_a_failed_load_nobody_awaits_is_not_reported_lost(
    setup: tuple[Engine, GatedBroker, Gate]
) -> None:
    """A room load that fails after its only subscriber left raises nowhere: the loop's exception
    handler hears nothing of it, and the room opens afresh for the next subscriber."""
    engine, broker, gate = setup
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        gate.arm("history.recent", fail=True)
        first = asyncio.ensure_future(engine.subscribe("lobby", ANN, Sink()))
        await asyncio.wait_for(gate.reached.wait(), 5)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        gate.released.set()
        await settled(broker)
        del first
        gc.collect()
        await settled(broker)
        assert reported == []
    finally:
        loop.set_exception_handler(None)
    sink = Sink()
    sub = await engine.subscribe("lobby", BOB, sink)
    assert (await sink.wait_for(1))[0]["type"] == "welcome"
    await engine.cancel(sub)


async def test_a_failed_load_fails_its_subscriber_and_lets_the_room_go(
    setup: tuple[Engine, GatedBroker, Gate]
) -> None:
    """A subscriber whose room cannot be loaded gets the store's error; the room is not kept, so
    the next subscriber loads it again and is welcomed."""
    engine, _, gate = setup
    gate.arm("history.recent", fail=True)
    first = asyncio.ensure_future(engine.subscribe("lobby", ANN, Sink()))
    await asyncio.wait_for(gate.reached.wait(), 5)
    gate.released.set()
    with pytest.raises(HistoryUnavailable):
        await first
    assert "lobby" not in engine.rooms and engine.quota.held(ANN.id) == 0
    sink = Sink()
    sub = await engine.subscribe("lobby", ANN, sink)
    assert (await sink.wait_for(1))[0]["type"] == "welcome"
    await engine.cancel(sub)


async def test_the_cache_is_not_trimmed_while_a_resume_reads_history(
    setup: tuple[Engine, GatedBroker, Gate]
) -> None:
    """While a resume's history read is in flight the room keeps every event it receives, so the
    read and the cache meet without a gap; once it is done the cache is bounded again."""
    engine, broker, gate = setup
    watcher = await engine.subscribe("lobby", BOB, Sink())
    said = [await engine.say(watcher, f"m{i}") for i in range(5)]
    await engine.cancel(watcher)  # let the room go: opened again it caches the last 100
    for i in range(150):
        await broker.publish(Draft("message", "lobby", BOB, 0, f"n{i}"))
    holder = await engine.subscribe("lobby", BOB, Sink())
    room = engine.rooms["lobby"]
    gate.arm("history.after")
    late = Sink()
    resume = asyncio.ensure_future(engine.subscribe("lobby", ANN, late, since=said[0].id))
    await asyncio.wait_for(gate.reached.wait(), 5)
    for i in range(250):  # past twice the cache: trimmed at once but for the resume
        await broker.publish(Draft("message", "lobby", BOB, 0, f"live{i}"))
    await settled(broker)
    assert len(room.recent) > 300
    gate.released.set()
    sub = await resume
    welcome = (await late.wait_for(1))[0]
    texts = [e["text"] for e in welcome["archive"] if e["type"] == "message"]
    assert welcome["resumed"] is True
    assert texts[:4] == ["m1", "m2", "m3", "m4"] and texts[-1] == "live249"
    assert len(texts) == 4 + 150 + 250
    await broker.publish(Draft("message", "lobby", BOB, 0, "after"))
    await settled(broker)
    assert len(room.recent) <= 200
    await engine.cancel(sub)
    await engine.cancel(holder)


# -- the socket quota on its own --------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_quota_refuses_the_socket_over_the_open_limit_and_says_so() -> None:
    """With a limit of 2, a third open socket is refused with the reason the page shows; closing
    one makes room, and other users are not affected."""
    quota = SocketQuota(2)
    quota._opening._clock = Clock()
    quota.hold("ann")
    quota.hold("ann")
    with pytest.raises(TooManySockets) as caught:
        quota.hold("ann")
    assert str(caught.value) == "you have 2 sockets open already; close a tab"
    assert quota.held("ann") == 2
    quota.hold("bob")
    quota.release("ann")
    assert quota.held("ann") == 1


def test_quota_refuses_reconnecting_faster_than_the_limit_a_minute() -> None:
    """With a limit of 2, a user may open 2 sockets at once and then one per 30 s, however many
    they close; the refusal says to wait, and other users have their own budget."""
    clock = Clock()
    quota = SocketQuota(2)
    quota._opening._clock = clock
    for _ in range(2):
        quota.hold("ann")
        quota.release("ann")
    with pytest.raises(TooManySockets) as caught:
        quota.hold("ann")
    assert str(caught.value) == "you are reconnecting too often; wait a minute"
    assert quota.held("ann") == 0
    quota.hold("bob")
    clock.now += 29.0
    with pytest.raises(TooManySockets):
        quota.hold("ann")
    clock.now += 1.0
    quota.hold("ann")
    assert quota.held("ann") == 1


def test_quota_of_one_allows_one_socket_a_minute() -> None:
    """A limit of 1 allows a single reconnect per minute, not two at once."""
    quota = SocketQuota(1)
    quota._opening._clock = Clock()
    quota.hold("ann")
    quota.release("ann")
    with pytest.raises(TooManySockets, match="reconnecting"):
        quota.hold("ann")


def test_no_quota_counts_without_refusing() -> None:
    """A limit of 0 refuses nothing but still counts each user's sockets."""
    quota = SocketQuota(0)
    for _ in range(100):
        quota.hold("ann")
    assert quota.held("ann") == 100


def test_releasing_forgets_users_with_no_socket_left() -> None:
    """Releasing a user's last socket forgets them, and releasing one who holds none is harmless."""
    quota = SocketQuota(0)
    quota.release("nobody")
    quota.hold("ann")
    quota.hold("ann")
    quota.release("ann")
    assert quota.held("ann") == 1
    quota.release("ann")
    assert quota._open == {}
    quota.release("ann")
    assert quota.held("ann") == 0 and quota.held("nobody") == 0 and quota._open == {}


class SnapshotHistory(MemoryHistory):
    """A history whose ``after`` reads at once, then holds its answer until the test releases it
    (a slow store answering with what it had when asked)."""

    def __init__(self) -> None:
        super().__init__(keep=10_000)
        self.held: list[asyncio.Event] = []
        self.changed = asyncio.Event()

    async def after(self, room: str, event_id: str, limit: int) -> list[Event] | None:
        events = await super().after(room, event_id, limit)
        release = asyncio.Event()
        self.held.append(release)
        self.changed.set()
        await release.wait()
        return events


async def test_two_resumes_in_flight_each_meet_the_cache() -> None:
    """With two resumes reading history at once, the first to finish does not let the cache be
    trimmed under the other: the second still gets every event after its id, once."""
    history = SnapshotHistory()
    broker = MemoryBroker(history)
    await broker.open()
    engine = Engine(broker, Limits(write_delay=0, rate=0, archive_size=5, resume_limit=10_000),
                    frame=line_frame)
    first = await engine.subscribe("lobby", BOB, Sink())
    since = (await engine.say(first, "old")).id
    await engine.cancel(first)
    for i in range(150):
        await broker.publish(Draft("message", "lobby", BOB, 0, f"n{i}"))
    holder = await engine.subscribe("lobby", BOB, Sink())
    sinks = [Sink(), Sink()]
    resumes = [asyncio.ensure_future(engine.subscribe("lobby", ANN, sink, since=since)) for sink in sinks]
    async with asyncio.timeout(5):
        while len(history.held) < 2:
            history.changed.clear()
            await history.changed.wait()
    history.held[0].set()
    subs = [await resumes[0]]
    for i in range(250):
        await broker.publish(Draft("message", "lobby", BOB, 0, f"live{i}"))
    await settled(broker)
    history.held[1].set()
    subs.append(await resumes[1])
    welcome = (await sinks[1].wait_for(1))[0]
    texts = [e["text"] for e in welcome["archive"] if e["type"] == "message"]
    assert texts == [f"n{i}" for i in range(150)] + [f"live{i}" for i in range(250)]
    for sub in (*subs, holder):
        await engine.cancel(sub)
    await broker.close()


async def test_events_delivered_while_the_room_loads_are_not_lost(
    setup: tuple[Engine, GatedBroker, Gate]
) -> None:
    """Events handed over while a room loads are kept once it has loaded (so its first welcome
    holds them), in order, leaving out those its load already read: one already held does not
    stop the ones after it."""
    engine, broker, gate = setup
    await broker.publish(Draft("message", "lobby", BOB, 0, "stored"))
    stored = (await broker.history.recent("lobby", 1))[0]
    newer = [Event("message", str(stored.key[0] + n), "lobby", BOB, 0, f"new{n}") for n in (1, 2)]
    gate.arm("broker.members")  # the room's recent events are read; its members are not yet
    sink = Sink()
    task = asyncio.ensure_future(engine.subscribe("lobby", ANN, sink))
    await asyncio.wait_for(gate.reached.wait(), 5)
    engine.deliver([stored, newer[0]])  # the broker re-reads: the first one is already held
    engine.deliver([stored, newer[1]])
    gate.released.set()
    sub = await task
    welcome = (await sink.wait_for(1))[0]
    assert [e["text"] for e in welcome["archive"] if e["type"] == "message"] == ["stored", "new1", "new2"]
    await engine.cancel(sub)


async def test_a_subscriber_just_after_a_failed_load_loads_the_room_afresh(
    setup: tuple[Engine, GatedBroker, Gate]
) -> None:
    """A subscriber arriving in the loop pass after a room's load failed, before that load's own
    waiters have run, loads the room again instead of inheriting the failure."""
    engine, _, gate = setup
    gate.arm("history.recent", fail=True)
    first = asyncio.ensure_future(engine.subscribe("lobby", ANN, Sink()))
    await asyncio.wait_for(gate.reached.wait(), 5)
    gate.released.set()
    await asyncio.sleep(0)  # one loop pass: the load fails; its waiter has not run yet
    assert not first.done()
    sink = Sink()
    second = asyncio.ensure_future(engine.subscribe("lobby", BOB, sink))
    with pytest.raises(HistoryUnavailable):
        await first
    sub = await second
    assert (await sink.wait_for(1))[0]["type"] == "welcome"
    await engine.cancel(sub)


async def test_emptied_is_set_exactly_while_no_room_is_held(setup: tuple[Engine, GatedBroker, Gate]) -> None:
    """engine.emptied is set while the engine holds no room: cleared by the first subscriber,
    kept clear while any room is held (even when another room's load fails), set by the last leave."""
    engine, _, gate = setup
    assert engine.emptied.is_set()
    sub = await engine.subscribe("lobby", ANN, Sink())
    assert not engine.emptied.is_set()
    gate.arm("history.recent", fail=True)
    failing = asyncio.ensure_future(engine.subscribe("other", BOB, Sink()))
    await asyncio.wait_for(gate.reached.wait(), 5)
    gate.released.set()
    with pytest.raises(HistoryUnavailable):
        await failing
    assert not engine.emptied.is_set() and list(engine.rooms) == ["lobby"]
    await engine.cancel(sub)
    assert engine.emptied.is_set() and engine.rooms == {}
