"""The room engine driven directly, without Sanic: order, encode-once, slow consumers,
presence, resume, typing and shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from revchat.backends.memory import MemoryBroker, MemoryHistory
from revchat.core.codes import SIGNED_OUT, SLOW_CONSUMER
from revchat.core.engine import Closing, Engine, Limits, RateLimited
from revchat.core.events import Draft, Event, User
from revchat.core.history import HistoryUnavailable
from tests.support.sink import Sink, line_frame

ANN = User("guest:ann", "Ann")
BOB = User("guest:bob", "Bob")


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    broker = MemoryBroker(MemoryHistory())
    await broker.open()
    yield Engine(broker, Limits(write_delay=0.001, rate=0, queue_size=1000), frame=line_frame)
    await broker.close()


def kinds(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


async def test_subscribe_welcomes_then_joins(engine: Engine) -> None:
    """A subscriber gets the welcome, then its own join live."""
    sink = Sink()
    await engine.subscribe("lobby", ANN, sink)
    frames = await sink.wait_for(2)
    assert kinds(frames) == ["welcome", "join"]
    assert frames[0]["you"] == ANN.as_dict()


async def test_one_order_for_all_and_one_write_per_flush(engine: Engine) -> None:
    """Concurrent messages reach every subscriber in one order, coalesced into few writes."""
    sinks = [Sink() for _ in range(5)]
    subs = [await engine.subscribe("lobby", User(f"guest:{i}", f"U{i}"), s)
            for i, s in enumerate(sinks)]
    for s in sinks:
        await s.wait_for(1)
    await asyncio.gather(*(engine.say(sub, f"{i}-{n}") for n in range(10)
                           for i, sub in enumerate(subs)))
    expected = None
    for s in sinks:
        frames = await s.wait_for(len(s.frames()))
        texts = [f["text"] for f in frames if f["type"] == "message"]
        while len(texts) < 50:
            texts = [f["text"] for f in await s.wait_for(len(s.frames()) + 1)
                     if f["type"] == "message"]
        expected = expected or texts
        assert texts == expected
    assert all(s.writes < 30 for s in sinks), "frames are coalesced, not one write each"


async def test_event_is_encoded_once(engine: Engine) -> None:
    """One frame encoding serves every subscriber (encode once, not once per subscriber)."""
    encoded: list[str] = []
    original = engine.frame

    def counting(text: str) -> bytes:
        encoded.append(text)
        return original(text)

    engine.frame = counting
    sinks = [Sink() for _ in range(20)]
    subs = [await engine.subscribe("lobby", ANN, s) for s in sinks]
    encoded.clear()
    await engine.say(subs[0], "hello")
    await sinks[-1].wait_for(2)
    assert sum('"hello"' in text for text in encoded) == 1


async def test_slow_consumer_is_dropped_not_waited_for(engine: Engine) -> None:
    """A subscriber over its bound is closed with 1013 and others keep receiving."""
    slow, fast = Sink(), Sink()
    sub = await engine.subscribe("lobby", ANN, slow)
    await engine.subscribe("lobby", BOB, fast)
    slow.stalled = 1
    for i in range(20):
        await engine.say(sub, "x" * 100 + str(i))
    frames = await fast.wait_for(2 + 20)
    assert slow.closed == SLOW_CONSUMER.args
    assert [f["text"] for f in frames if f["type"] == "message"][-1].endswith("19")
    assert engine.stats.slow_consumers == 1


async def test_tabs_are_one_member(engine: Engine) -> None:
    """Two sockets of a user publish one join; the leave comes with the last one."""
    watcher = Sink()
    await engine.subscribe("lobby", BOB, watcher)
    tab1 = await engine.subscribe("lobby", ANN, Sink())
    tab2 = await engine.subscribe("lobby", ANN, Sink())
    await engine.cancel(tab1)
    await engine.say(tab2, "still here")
    await engine.cancel(tab2)
    frames = await watcher.wait_for(5)
    assert [(f["type"], f["user"]["name"]) for f in frames[1:]] == [
        ("join", "Bob"), ("join", "Ann"), ("message", "Ann"), ("leave", "Ann")]
    assert list(engine.rooms["lobby"].members) == [BOB.id]


async def test_rate_limit(tmp_path: Any) -> None:
    """After the burst, say raises RateLimited and nothing is published."""
    broker = MemoryBroker(MemoryHistory())
    await broker.open()
    engine = Engine(broker, Limits(rate=1.0, burst=3), frame=line_frame)
    sub = await engine.subscribe("lobby", ANN, Sink())
    for _ in range(3):
        await engine.say(sub, "ok")
    with pytest.raises(RateLimited):
        await engine.say(sub, "too many")
    assert len(await broker.history.recent("lobby", 10)) == 4  # join + 3 messages
    await broker.close()


async def test_resume_from_history_and_cache(engine: Engine) -> None:
    """since= replays exactly the events after the id, whether cached or read from history."""
    sink = Sink()
    sub = await engine.subscribe("lobby", ANN, sink)
    first = await engine.say(sub, "one")
    await engine.say(sub, "two")
    again = Sink()
    bob = await engine.subscribe("lobby", BOB, again, since=first.id)
    welcome = (await again.wait_for(1))[0]
    assert welcome["resumed"] is True
    assert [e["text"] for e in welcome["archive"]] == ["two"]
    # Once the room is dropped and loaded again, the same resume is read from history.
    await engine.cancel(sub)
    await engine.cancel(bob)
    assert "lobby" not in engine.rooms
    late = Sink()
    await engine.subscribe("lobby", BOB, late, since=first.id)
    welcome = (await late.wait_for(1))[0]
    assert welcome["resumed"] is True
    assert [(e["type"], e["text"]) for e in welcome["archive"]][:2] == [
        ("message", "two"), ("join", "")]


async def test_typing_skips_the_typist(engine: Engine) -> None:
    """A typing notice goes to the others only."""
    ann_sink, bob_sink = Sink(), Sink()
    ann = await engine.subscribe("lobby", ANN, ann_sink)
    await engine.subscribe("lobby", BOB, bob_sink)
    await bob_sink.wait_for(2)
    engine.typing(ann)
    frames = await bob_sink.wait_for(3)
    assert frames[-1]["type"] == "typing" and frames[-1]["user"]["id"] == ANN.id
    assert all(f["type"] != "typing" for f in ann_sink.frames())


async def test_join_storm_is_not_flushed_per_joiner(engine: Engine) -> None:
    """Joiners while frames are pending get only what their archive lacks, in one flush."""
    first = Sink()
    ann = await engine.subscribe("lobby", ANN, first)
    await first.wait_for(2)
    writes = first.writes
    message = asyncio.ensure_future(engine.say(ann, "hello"))
    await message
    late = [Sink() for _ in range(5)]
    for i, sink in enumerate(late):
        await engine.subscribe("lobby", User(f"guest:{i}", f"U{i}"), sink)
    frames = await first.wait_for(2 + 1 + 5)
    assert [f["type"] for f in frames[2:]] == ["message"] + ["join"] * 5
    assert first.writes - writes < 5, "joins coalesced, not one write per joiner"
    for i, sink in enumerate(late):
        got = await sink.wait_for(1 + 5 - i)
        texts = [e["text"] for e in got[0]["archive"] if e["type"] == "message"]
        assert texts == ["hello"]
        assert [f["user"]["name"] for f in got[1:]] == [f"U{j}" for j in range(i, 5)]


async def test_close_sends_1001_and_refuses_newcomers(engine: Engine) -> None:
    """Shutdown closes every socket with 1001 and takes no new subscriber."""
    sink = Sink()
    await engine.subscribe("lobby", ANN, sink)
    engine.close()
    assert sink.closed == (1001, "server shutting down")
    with pytest.raises(Closing):
        await engine.subscribe("lobby", BOB, Sink())


async def test_forget_user_anonymises_store_and_open_rooms(engine: Engine) -> None:
    """Data deletion reaches the store and the archive of rooms held open right now."""
    watcher = Sink()
    ann = await engine.subscribe("lobby", ANN, Sink())
    await engine.subscribe("lobby", BOB, watcher)
    await engine.say(ann, "hello")
    assert await engine.forget_user(ANN.id) == 2  # join + message
    late = Sink()
    await engine.subscribe("lobby", BOB, late)
    welcome = (await late.wait_for(1))[0]
    names = {e["user"]["name"] for e in welcome["archive"] if e["user"]["id"] == ANN.id}
    assert names == {"Deleted user"}
    assert [m["name"] for m in welcome["members"] if m["id"] == ANN.id] == ["Deleted user"]
    stored = await engine.broker.history.recent("lobby", 10)
    assert all(e.user.name == "Deleted user" for e in stored if e.user.id == ANN.id)


def test_malformed_ids_have_no_key() -> None:
    """Ids that are not one or two ASCII numbers are malformed (never a crash)."""
    from revchat.core.events import id_key

    assert id_key("42") == (42, 0) and id_key("1764489600123-7") == (1764489600123, 7)
    for bad in ("", "-", "1-2-3", "x", "²", "1e5", " 1", "9" * 21):
        assert id_key(bad) is None


class Clock:
    """A clock the test moves by hand (the engine's typing budget reads it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def open_engine(history: MemoryHistory | None = None, **limits: Any) -> Engine:
    broker = MemoryBroker(history or MemoryHistory())
    await broker.open()
    return Engine(broker, Limits(**{"write_delay": 0.0, "rate": 0, **limits}), frame=line_frame)


async def test_room_rate_is_per_user_and_room() -> None:
    """The room budget is one user's in one room: after Ann's burst in the lobby she may still
    speak elsewhere and Bob in the lobby; each refusal is counted."""
    engine = await open_engine(rate=1.0, burst=2)
    ann = await engine.subscribe("lobby", ANN, Sink())
    for _ in range(2):
        await engine.say(ann, "ok")
    with pytest.raises(RateLimited):
        await engine.say(ann, "too many")
    await engine.say(await engine.subscribe("other", ANN, Sink()), "elsewhere")
    await engine.say(await engine.subscribe("lobby", BOB, Sink()), "bob")
    assert engine.stats.rate_limited == 1
    with pytest.raises(RateLimited):
        await engine.say(ann, "still too many")
    assert engine.stats.rate_limited == 2
    await engine.broker.close()


async def test_user_rate_spans_rooms_in_bursts_of_twice_burst() -> None:
    """--user-rate is one budget per user across every room, in bursts of twice --burst; other
    users have their own."""
    engine = await open_engine(user_rate=0.001, burst=2)
    ann = [await engine.subscribe(room, ANN, Sink()) for room in ("a", "b", "c", "d", "e")]
    for sub in ann[:4]:
        await engine.say(sub, "ok")
    with pytest.raises(RateLimited):
        await engine.say(ann[4], "fifth")
    await engine.say(await engine.subscribe("a", BOB, Sink()), "bob")
    await engine.broker.close()


async def test_typing_notices_are_three_at_once_then_one_a_second(engine: Engine) -> None:
    """A typist's notices in a room pass three at once, then one a second; other rooms and other
    typists have their own budget."""
    clock = Clock()
    engine._typing_limiter._clock = clock  # the only budget without a clock of its own to pass
    watcher = Sink()
    await engine.subscribe("lobby", BOB, watcher)
    ann = await engine.subscribe("lobby", ANN, Sink())
    carol = await engine.subscribe("lobby", User("guest:carol", "Carol"), Sink())
    ann_elsewhere = await engine.subscribe("other", ANN, Sink())
    other_watcher = Sink()
    await engine.subscribe("other", BOB, other_watcher)

    def notices(sink: Sink, user: User) -> int:
        return sum(f["type"] == "typing" and f["user"]["id"] == user.id for f in sink.frames())

    for _ in range(5):
        engine.typing(ann)
        engine.typing(carol)
        engine.typing(ann_elsewhere)
    assert (notices(watcher, ANN), notices(watcher, carol.user), notices(other_watcher, ANN)) == (3, 3, 3)
    clock.now += 0.75
    engine.typing(ann)
    assert notices(watcher, ANN) == 3
    clock.now += 0.25
    engine.typing(ann)
    engine.typing(ann)
    assert notices(watcher, ANN) == 4


async def test_cancel_twice_counts_once(engine: Engine) -> None:
    """Cancelling a subscription twice releases its socket once: the user's other tab keeps them
    a member and keeps its place in the socket count."""
    watcher = Sink()
    await engine.subscribe("lobby", BOB, watcher)
    tab1 = await engine.subscribe("lobby", ANN, Sink())
    tab2 = await engine.subscribe("lobby", ANN, Sink())
    await engine.cancel(tab1)
    await engine.cancel(tab1)
    assert engine.quota.held(ANN.id) == 1
    await engine.say(tab2, "still here")
    await watcher.until(lambda: any(f.get("text") == "still here" for f in watcher.frames()))
    assert [f["type"] for f in watcher.events() if f["user"]["id"] == ANN.id] == ["join", "message"]
    assert ANN.id in engine.rooms["lobby"].members


async def test_ending_a_session_closes_only_its_sockets() -> None:
    """end_sessions closes every socket of that session as signed out after the frames
    pending for it, and stops writing to it; other sessions and guests without one stay."""
    from revchat.core.sessions import Ended, new_session

    engine = await open_engine(write_delay=60.0)
    ended, kept = new_session(ANN), new_session(BOB)
    ann_sink, ann_late, bob_sink, guest_sink = Sink(), Sink(), Sink(), Sink()
    ann = await engine.subscribe("lobby", ANN, ann_sink, session=ended)
    bob = await engine.subscribe("lobby", BOB, bob_sink, session=kept)
    await engine.subscribe("lobby", User("guest:g", "G"), guest_sink)
    engine._flush(engine.rooms["lobby"])
    await engine.say(bob, "before")  # pending: written before the close
    await engine.subscribe("lobby", ANN, ann_late, session=ended)  # welcomed while frames are pending
    await engine.end_sessions(Ended(sessions={ended.id: ended.expires}))
    for sink in (ann_sink, ann_late):
        assert sink.closed == SIGNED_OUT.args
    assert any(f.get("text") == "before" for f in ann_sink.frames())
    assert bob_sink.closed is None and guest_sink.closed is None
    assert engine.sessions.ended(ended) and not engine.sessions.ended(kept)
    await engine.say(bob, "after")
    engine._flush(engine.rooms["lobby"])
    assert ann_sink.writes_after_close == ann_late.writes_after_close == 0
    assert any(f.get("text") == "after" for f in guest_sink.frames())
    await engine.cancel(ann)
    await engine.broker.close()


async def test_timestamps_are_the_clock_in_milliseconds() -> None:
    """Events carry the engine clock's time in whole Unix milliseconds."""
    broker = MemoryBroker(MemoryHistory())
    await broker.open()
    engine = Engine(broker, Limits(rate=0), clock=lambda: 1764489600.1234, frame=line_frame)
    sub = await engine.subscribe("lobby", ANN, Sink())
    assert (await engine.say(sub, "hi")).timestamp == 1764489600123
    await broker.close()


async def test_resume_from_the_cache_when_the_store_no_longer_keeps_it() -> None:
    """A resume from an id the room still caches is served from the cache, even the oldest
    cached one, when the store has already trimmed it away."""
    engine = await open_engine(MemoryHistory(keep=3), archive_size=2)
    sink = Sink()
    sub = await engine.subscribe("lobby", ANN, sink)
    said = [await engine.say(sub, f"m{i}") for i in range(6)]
    oldest = engine.rooms["lobby"].recent[0]
    for since, expected in ((said[1].id, [f"m{i}" for i in range(2, 6)]),
                            (oldest.id, [f"m{i}" for i in range(6)])):
        late = Sink()
        await engine.subscribe("lobby", BOB, late, since=since)
        welcome = (await late.wait_for(1))[0]
        assert welcome["resumed"] is True
        assert [e["text"] for e in welcome["archive"] if e["type"] == "message"] == expected
    await engine.broker.close()


async def test_resume_from_before_the_cache_reads_the_history() -> None:
    """A resume from an id older than the room's cache is read from the history: every event
    after it, once, in order."""
    engine = await open_engine(archive_size=5, resume_limit=500)
    sub = await engine.subscribe("lobby", ANN, Sink())
    said = [await engine.say(sub, f"m{i}") for i in range(130)]
    await engine.cancel(sub)  # the room is let go; opened again it caches the last 100 events
    late = Sink()
    await engine.subscribe("lobby", BOB, late, since=said[10].id)
    assert engine.rooms["lobby"].recent[0].key > said[10].key
    welcome = (await late.wait_for(1))[0]
    assert welcome["resumed"] is True
    assert [e["text"] for e in welcome["archive"] if e["type"] == "message"] == [
        f"m{i}" for i in range(11, 130)]
    await engine.broker.close()


class Recording(MemoryBroker):
    """A memory broker that records what the engine asks it to deliver."""

    def __init__(self) -> None:
        super().__init__(MemoryHistory())
        self.calls: list[tuple[str, str, str | None]] = []

    def subscribe(self, room: str, after: str | None) -> None:
        self.calls.append(("subscribe", room, after))

    def unsubscribe(self, room: str) -> None:
        self.calls.append(("unsubscribe", room, None))


async def test_the_broker_is_asked_for_events_after_the_last_one_loaded() -> None:
    """Opening a room asks the broker for its events after the newest one loaded (from the start
    for an empty room), and the last subscriber leaving stops that."""
    broker = Recording()
    await broker.open()
    engine = Engine(broker, Limits(rate=0, write_delay=0), frame=line_frame)
    sub = await engine.subscribe("lobby", ANN, Sink())
    await engine.say(sub, "hi")
    await engine.cancel(sub)
    newest = (await broker.history.recent("lobby", 1))[0]  # Ann's leave
    again = await engine.subscribe("lobby", ANN, Sink())
    await engine.cancel(again)
    assert broker.calls == [("subscribe", "lobby", None), ("unsubscribe", "lobby", None),
                            ("subscribe", "lobby", newest.id), ("unsubscribe", "lobby", None)]
    assert engine.faults is broker.faults
    await broker.close()


async def test_a_live_room_caches_its_last_100_events() -> None:
    """Once a room holds more than 200 events it keeps its last 100 (more than the archive): a
    resume from the oldest of those is served from the cache, one from just before it is not
    resumed when the store no longer keeps it."""
    engine = await open_engine(MemoryHistory(keep=3), archive_size=2)
    sub = await engine.subscribe("lobby", ANN, Sink())
    said = [await engine.say(sub, f"m{i}") for i in range(200)]  # with the join, 201 events
    for since, resumed in ((said[100].id, True), (said[99].id, False)):
        late = Sink()
        await engine.subscribe("lobby", BOB, late, since=since)
        assert (await late.wait_for(1))[0]["resumed"] is resumed
    await engine.broker.close()


async def test_a_resume_of_exactly_the_limit_is_read_whole_from_the_store() -> None:
    """A resume of exactly resume_limit events older than the cache has every one of them as the
    store has it: once the store forgot a user (a data deletion on another worker), none of them
    shows the name this worker's cache still holds."""
    engine = await open_engine(resume_limit=150, archive_size=5)
    ann = await engine.subscribe("lobby", ANN, Sink())
    said = [await engine.say(ann, f"m{i}") for i in range(160)]
    await engine.cancel(ann)  # let go: opened again it caches the last 100
    await engine.subscribe("lobby", ANN, Sink())  # her join makes 150 events after said[11]
    await engine.broker.history.forget_user(ANN.id)  # the store only, as another worker does
    late = Sink()
    await engine.subscribe("lobby", BOB, late, since=said[11].id)
    welcome = (await late.wait_for(1))[0]
    assert welcome["resumed"] is True and len(welcome["archive"]) == 150
    assert {e["user"]["name"] for e in welcome["archive"]} == {"Deleted user"}
    await engine.broker.close()


class OutageHistory(MemoryHistory):
    """A memory store that refuses every write while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def append(self, drafts: Sequence[Draft]) -> list[Event]:
        if self.down:
            raise HistoryUnavailable("the test's store is down")
        return await super().append(drafts)


async def test_a_join_or_leave_not_stored_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """A join or leave the store cannot take fails neither the subscribe nor the cancel: each is
    logged as a warning naming the user, the room and why."""
    history = OutageHistory()
    engine = await open_engine(history)
    history.down = True
    sink = Sink()
    with caplog.at_level(logging.WARNING, logger="revchat.engine"):
        await engine.cancel(await engine.subscribe("lobby", ANN, sink))
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "revchat.engine"] == [
        (logging.WARNING, f"{kind} of guest:ann in lobby not published: history is unavailable")
        for kind in ("join", "leave")]
    assert kinds(sink.frames()) == ["welcome"]
    assert "lobby" not in engine.rooms and engine.quota.held(ANN.id) == 0
    await engine.broker.close()
