"""The room engine driven directly, without Sanic: order, encode-once, slow consumers,
presence, resume, typing and shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from revchat.broker import MemoryBroker
from revchat.engine import Closing, Engine, Limits, RateLimited
from revchat.events import User
from revchat.history import MemoryHistory
from tests.support.sink import Sink

ANN = User("guest:ann", "Ann")
BOB = User("guest:bob", "Bob")


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    broker = MemoryBroker(MemoryHistory())
    await broker.open()
    yield Engine(broker, Limits(write_delay=0.001, rate=0, queue_size=1000))
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
    assert slow.closed == (1013, "slow consumer")
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
    engine = Engine(broker, Limits(rate=1.0, burst=3))
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
    from revchat.events import id_key

    assert id_key("42") == (42, 0) and id_key("1764489600123-7") == (1764489600123, 7)
    for bad in ("", "-", "1-2-3", "x", "²", "1e5", " 1", "9" * 21):
        assert id_key(bad) is None
