"""Fan-out (revchat/core/fanout.py) through the engine and on its own: counters for /metrics, events
a broker hands over twice, the room's cache, slow and vanished sockets, and frames of one's own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from revchat.backends.memory import MemoryBroker, MemoryHistory
from revchat.core.codes import SLOW_CONSUMER
from revchat.core.engine import Engine, Limits
from revchat.core.events import Event, User, typing_frame
from revchat.core.fanout import Fanout
from revchat.core.room import Room, Subscription
from tests.support.sink import Sink, line_frame

ANN = User("guest:ann", "Ann")
BOB = User("guest:bob", "Bob")
CAROL = User("guest:carol", "Carol")


class Broken(Sink):
    """A socket whose transport raises on write once ``broken`` (uvloop, after the peer left)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def write(self, data: bytes) -> None:
        if self.broken:
            raise RuntimeError("the transport is closed")
        super().write(data)


async def open_engine(**limits: float) -> Engine:
    broker = MemoryBroker(MemoryHistory())
    await broker.open()
    return Engine(broker, Limits(**{"write_delay": 0.0, "rate": 0, **limits}), frame=line_frame)  # type: ignore[arg-type]


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = await open_engine(queue_size=10_000)
    yield engine
    await engine.broker.close()


def texts(sink: Sink) -> list[str]:
    return [f["text"] for f in sink.events("message")]


def message(n: int, room: str = "lobby") -> Event:
    return Event("message", str(n), room, ANN, n, f"m{n}")


def held(write_delay: float) -> tuple[Fanout, Room, Sink]:
    """A fan-out holding room "lobby" with one subscriber, whose sink it returns."""
    fanout = Fanout(frame=line_frame, queue_size=10_000, write_delay=write_delay, cache=10)
    room = fanout.rooms["lobby"] = Room("lobby")
    sink = Sink()
    room.subs.add(Subscription(room, ANN, sink))
    return fanout, room, sink


class FrozenClock:
    """The fan-out's monotonic clock stopped at one instant, so a quiet spell can end exactly now."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


async def test_counters_count_events_deliveries_and_writes() -> None:
    """After one flush of three events to two subscribers: 3 events, 6 deliveries, 2 writes."""
    engine = await open_engine(write_delay=60.0)
    sinks = [Sink(), Sink()]
    subs = [await engine.subscribe("lobby", user, sink) for user, sink in zip((ANN, BOB), sinks, strict=True)]
    room = engine.rooms["lobby"]
    engine._flush(room)  # the joins: the next events wait for the 60 s write delay
    before = (engine.stats.events, engine.stats.deliveries, engine.stats.writes)
    for n in range(3):
        await engine.say(subs[0], f"m{n}")
    assert len(room.pending) == 3
    engine._flush(room)
    after = (engine.stats.events, engine.stats.deliveries, engine.stats.writes)
    assert tuple(a - b for a, b in zip(after, before, strict=True)) == (3, 6, 2)
    assert engine.stats.subscriptions == 2
    assert all(texts(s) == ["m0", "m1", "m2"] for s in sinks)
    await engine.broker.close()


async def test_events_handed_over_again_are_delivered_once(engine: Engine) -> None:
    """A broker that re-reads after reconnecting hands over events already held: each is
    delivered once, and the new ones after them still are."""
    sink = Sink()
    await engine.subscribe("lobby", ANN, sink)
    await sink.count("join", 1)
    last = engine.rooms["lobby"].recent[-1].key[0]
    events = [message(last + n) for n in (1, 2, 3, 4)]
    engine.deliver(events[:2])
    engine.deliver(events[1:3])  # m2 again, then the new m3
    engine.deliver(events[:1] + events[3:])  # m1 again, then the new m4
    await sink.until(lambda: len(texts(sink)) >= 4)
    assert texts(sink) == [e.text for e in events]
    assert [e.id for e in engine.rooms["lobby"].recent[1:]] == [e.id for e in events]


async def test_events_of_rooms_not_held_are_ignored(engine: Engine) -> None:
    """Events of a room nobody here subscribes to are dropped, and the other rooms' are kept."""
    sink = Sink()
    await engine.subscribe("lobby", ANN, sink)
    last = engine.rooms["lobby"].recent[-1].key[0]
    engine.deliver([message(last + 1, "elsewhere"), message(last + 2)])
    await sink.until(lambda: texts(sink) == [f"m{last + 2}"])
    assert "elsewhere" not in engine.rooms


async def test_the_room_cache_is_trimmed_to_its_size_past_twice_that() -> None:
    """A room keeps up to twice ``cache`` recent events, then is cut back to the last ``cache``;
    while a resume reads history it is not cut at all."""
    fanout = Fanout(frame=str.encode, queue_size=1000, write_delay=0.0, cache=2)
    room = fanout.rooms["lobby"] = Room("lobby")
    fanout.deliver([message(n) for n in range(1, 5)])
    assert [e.id for e in room.recent] == ["1", "2", "3", "4"]
    fanout.deliver([message(5)])
    assert [e.id for e in room.recent] == ["4", "5"]
    room.resuming = 1
    fanout.deliver([message(n) for n in range(6, 12)])
    assert len(room.recent) == 8
    room.resuming = 0
    fanout.deliver([message(12)])
    assert [e.id for e in room.recent] == ["11", "12"]


async def test_a_quiet_room_flushes_on_the_next_loop_pass() -> None:
    """After a quiet spell the first event goes out on the next loop pass, not after write_delay."""
    engine = await open_engine(write_delay=60.0)
    sink = Sink()
    sub = await engine.subscribe("lobby", ANN, sink)
    await sink.count("join", 1)
    engine.rooms["lobby"].quiet_until = 0.0  # long quiet
    await engine.say(sub, "now")
    await sink.until(lambda: texts(sink) == ["now"], timeout=5)
    await engine.broker.close()


async def test_a_busy_room_waits_for_its_write_delay() -> None:
    """Within write_delay of the last flush, new events wait for the delayed flush."""
    engine = await open_engine(write_delay=60.0)
    sink = Sink()
    sub = await engine.subscribe("lobby", ANN, sink)
    await sink.count("join", 1)
    await engine.say(sub, "held")
    for _ in range(5):
        await asyncio.sleep(0)  # loop passes: nothing is due yet
    assert texts(sink) == []
    room = engine.rooms["lobby"]
    assert room.flush is not None and room.pending
    engine._flush(room)
    assert texts(sink) == ["held"]
    await engine.broker.close()


@pytest.mark.parametrize("quiet_until", [0.0, 1000.0], ids=["long-quiet", "quiet-ends-now"])
async def test_a_due_frame_is_written_first_on_the_next_loop_pass(
    monkeypatch: pytest.MonkeyPatch, quiet_until: float,
) -> None:
    """A frame whose room's quiet spell is over (long ago, or at this very instant) is queued
    like a callback, not as a timer: it goes out first on the next loop pass, in a write of its
    own, and an event the loop hands over after it goes in the next write."""
    monkeypatch.setattr("revchat.core.fanout.time", FrozenClock(1000.0))
    fanout, room, sink = held(write_delay=0.0)
    room.quiet_until = quiet_until
    fanout.deliver([message(1)])
    asyncio.get_running_loop().call_soon(fanout.deliver, [message(2)])
    await sink.until(lambda: len(texts(sink)) == 2)
    assert texts(sink) == ["m1", "m2"] and sink.writes == 2


async def test_an_explicit_flush_leaves_no_flush_scheduled() -> None:
    """Events arriving while a flush is scheduled join it rather than scheduling another, so a
    flush done early (before a typing notice or an error) leaves none behind: the next event
    waits for its write_delay."""
    fanout, room, sink = held(write_delay=60.0)
    fanout.deliver([message(1)])  # a quiet room: flush on the next loop pass
    fanout.deliver([message(2)])
    fanout._flush(room)
    fanout.deliver([message(3)])
    for _ in range(5):
        await asyncio.sleep(0)  # loop passes: nothing is due for 60 s
    assert texts(sink) == ["m1", "m2"] and sink.writes == 1 and len(room.pending) == 1
    assert room.flush is not None
    room.flush.cancel()


async def test_every_slow_consumer_of_one_flush_is_dropped() -> None:
    """Two subscribers over their bound in the same flush are both closed as slow consumers and counted,
    and the one keeping up is not; a buffer exactly at the bound is not over it."""
    engine = await open_engine(queue_size=5000, write_delay=60.0)
    slow1, slow2, fast = Sink(stalled=True), Sink(stalled=True), Sink()
    at_bound = Sink(stalled=True)
    for user, sink in ((ANN, slow1), (BOB, slow2), (CAROL, fast), (User("guest:dan", "Dan"), at_bound)):
        await engine.subscribe("lobby", user, sink)
    room = engine.rooms["lobby"]
    engine._flush(room)
    sub = next(s for s in room.subs if s.sink is fast)
    await engine.say(sub, "x" * 50)
    written = len(room.pending[0])
    at_bound.unsent = 5000 - written  # after this flush it holds exactly the bound
    slow1.unsent = slow2.unsent = 5000
    engine._flush(room)
    assert slow1.closed == slow2.closed == SLOW_CONSUMER.args
    assert fast.closed is None and at_bound.closed is None and at_bound.unsent == 5000
    assert engine.stats.slow_consumers == 2
    assert {s.sink for s in room.subs} == {fast, at_bound}
    await engine.broker.close()


async def test_a_single_write_exactly_at_the_bound_keeps_the_socket(engine: Engine) -> None:
    """A frame written on its own (a typing notice) that fills the buffer exactly to the bound
    keeps the socket; one byte more closes it as a slow consumer."""
    exact, over = Sink(stalled=True), Sink(stalled=True)
    typist = await engine.subscribe("lobby", ANN, Sink())
    await engine.subscribe("lobby", BOB, exact)
    await engine.subscribe("lobby", CAROL, over)
    engine._flush(engine.rooms["lobby"])
    notice = len(engine.frame(typing_frame("lobby", ANN)))
    exact.unsent = 10_000 - notice
    over.unsent = 10_000 - notice + 1
    engine.typing(typist)
    assert exact.closed is None and exact.unsent == 10_000
    assert over.closed == SLOW_CONSUMER.args


async def test_a_slow_consumer_is_logged_with_its_user_and_room(
    engine: Engine, caplog: pytest.LogCaptureFixture,
) -> None:
    """Closing a slow consumer logs, at INFO on revchat.engine, which user in which room."""
    caplog.set_level(logging.INFO, logger="revchat.engine")
    typist = await engine.subscribe("lobby", ANN, Sink())
    slow = Sink(stalled=True)
    await engine.subscribe("lobby", BOB, slow)
    engine._flush(engine.rooms["lobby"])
    slow.unsent = 20_000
    engine.typing(typist)
    assert slow.closed == SLOW_CONSUMER.args
    assert [r.getMessage() for r in caplog.records if r.name == "revchat.engine"] == [
        "closing slow consumer guest:bob in lobby"]


async def test_a_vanished_transport_is_dropped_without_a_close(engine: Engine) -> None:
    """Sockets whose transport raises on write are dropped quietly (their handlers clean up), all
    of those of one flush: no close frame, not counted slow, and the others still receive."""
    gone, also_gone, other = Broken(), Broken(), Sink()
    ann = await engine.subscribe("lobby", ANN, gone)
    await engine.subscribe("lobby", CAROL, also_gone)
    await engine.subscribe("lobby", BOB, other)
    await other.count("join", 1)  # its own; the others' are in its welcome
    gone.broken = also_gone.broken = True
    await engine.say(ann, "hello")
    await other.until(lambda: texts(other) == ["hello"])
    assert gone.closed is None and also_gone.closed is None and engine.stats.slow_consumers == 0
    assert [s.sink for s in engine.rooms["lobby"].subs] == [other]
    await engine.cancel(ann)


async def test_a_vanished_transport_on_a_single_write(engine: Engine) -> None:
    """A socket whose transport raises on a frame written to it alone (typing) is dropped quietly too."""
    gone, other = Broken(), Sink()
    typist = await engine.subscribe("lobby", ANN, Sink())
    await engine.subscribe("lobby", BOB, gone)
    await engine.subscribe("lobby", CAROL, other)
    engine._flush(engine.rooms["lobby"])
    gone.broken = True
    engine.typing(typist)
    assert gone.closed is None and engine.stats.slow_consumers == 0
    assert other.frames()[-1]["type"] == "typing"
    assert {s.sink for s in engine.rooms["lobby"].subs} == {other, typist.sink}


async def test_a_joiner_over_its_bound_is_dropped() -> None:
    """A subscriber welcomed while frames are pending, whose welcome alone is over its bound, is
    closed as slow consumers and gets none of the pending frames."""
    engine = await open_engine(queue_size=100, write_delay=60.0)
    first = Sink()
    ann = await engine.subscribe("lobby", ANN, first)
    await engine.say(ann, "pending")
    room = engine.rooms["lobby"]
    assert room.pending
    late = Sink(stalled=True)
    await engine.subscribe("lobby", BOB, late)
    assert late.closed == SLOW_CONSUMER.args
    writes = late.writes
    engine._flush(room)
    assert late.writes == writes and all(s.sink is not late for s in room.subs)
    await engine.broker.close()


async def test_a_joiner_whose_welcome_holds_every_pending_frame_gets_no_other_write() -> None:
    """A socket welcomed while frames are pending, whose welcome already holds them all (a
    user's second socket: no join of its own), gets no other write at the flush, and receives
    the events after it."""
    engine = await open_engine(queue_size=10_000, write_delay=60.0)
    ann = await engine.subscribe("lobby", ANN, Sink())
    await engine.say(ann, "pending")
    room = engine.rooms["lobby"]
    second = Sink()
    joined = await engine.subscribe("lobby", ANN, second)
    assert room.joining == {joined: len(room.pending)}
    assert second.frames()[0]["archive"][-1]["text"] == "pending"
    engine._flush(room)
    assert second.writes == 1 and joined in room.subs
    await engine.say(ann, "after")
    engine._flush(room)
    assert second.writes == 2 and texts(second) == ["after"]
    await engine.broker.close()


async def test_send_comes_after_pending_frames_and_only_to_live_subscribers() -> None:
    """A frame of one's own (an error) follows the room's pending frames, reaches only that
    subscriber, and is not sent to one already dropped or cancelled."""
    engine = await open_engine(write_delay=60.0, queue_size=10_000)
    sink, other = Sink(), Sink()
    sub = await engine.subscribe("lobby", ANN, sink)
    await engine.subscribe("lobby", BOB, other)
    await engine.say(sub, "first")
    engine.send(sub, '{"type":"error","code":"bad_request","message":"no"}')
    assert [f["type"] for f in sink.frames()][-2:] == ["message", "error"]
    assert all(f["type"] != "error" for f in other.frames())
    dropped = next(s for s in engine.rooms["lobby"].subs if s.sink is other)
    other.unsent = 20_000
    engine.typing(sub)  # over its bound: dropped, not yet cancelled
    assert other.closed == SLOW_CONSUMER.args and not dropped.closed
    before = other.writes
    engine.send(dropped, '{"type":"error","code":"bad_request","message":"no"}')
    await engine.cancel(sub)
    engine.send(sub, '{"type":"error","code":"bad_request","message":"late"}')
    assert other.writes == before
    assert [f.get("message") for f in sink.frames() if f["type"] == "error"] == ["no"]
    await engine.broker.close()


async def test_connections_and_queued_bytes_cover_every_room(engine: Engine) -> None:
    """connections counts every subscriber of every room; queued_bytes adds up what their
    sockets have not sent yet."""
    a, b, c = Sink(stalled=True), Sink(stalled=True), Sink()
    await engine.subscribe("lobby", ANN, a)
    await engine.subscribe("lobby", BOB, b)
    await engine.subscribe("other", ANN, c)
    for room in engine.rooms.values():
        engine._flush(room)
    assert engine.connections == 3
    assert engine.queued_bytes() == a.unsent + b.unsent > 0


def test_a_subscription_starts_open() -> None:
    """A new subscription is neither closed nor has a closed transport, and keeps its session."""
    sub = Subscription(Room("lobby"), ANN, Sink())
    assert sub.closed is False and sub.closed_transport is False and sub.session is None
