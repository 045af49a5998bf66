"""The Redis broker against a real redis-server: order across workers, presence, faults, engine.

Two :class:`RedisBroker` instances in one event loop stand for two workers (they share nothing
but Redis). Every test uses its own key prefix; the tests that kill Redis get their own server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence

import pytest
import redis.asyncio as aioredis

from revchat.backends.factory import open_broker
from revchat.backends.redis_broker import RedisBroker
from revchat.core.engine import Engine, Limits
from revchat.core.errors import BrokerUnavailable
from revchat.core.events import Draft, User, id_key
from revchat.core.history import FORGOTTEN_NAME
from revchat.settings.config import Settings
from tests.support.brokers import Make, Recorder, recorder
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer, require_redis_server
from tests.support.sink import Sink, line_frame
from tests.support.waiting import eventually

pytestmark = pytest.mark.redis

ANN = User("guest:ann", "Ann")
BOB = User("guest:bob", "Bob", "https://example.com/bob.png")


def increasing(ids: Sequence[str]) -> bool:
    keys = [id_key(i) for i in ids]
    return all(k is not None for k in keys) and all(
        a < b for a, b in itertools.pairwise(keys))  # type: ignore[operator]


def draft(room: str, text: str, user: User = ANN, kind: str = "message") -> Draft:
    return Draft(kind, room, user, 1764489600000, text)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(shared_redis: RedisServer) -> RedisServer:
    return shared_redis


async def crash(broker: RedisBroker) -> None:
    """Make a broker stop as a killed worker would: no goodbye, its heartbeat just stops."""
    for name in list(broker._tasks):
        await broker._stop(name)
    await broker._close_clients()


# -- order and ids ----------------------------------------------------------------------------


async def test_two_workers_deliver_one_order(server: RedisServer, make: Make) -> None:
    """Events published concurrently on two workers reach both in the same increasing order."""
    a, b = await make(server.url), await make(server.url)
    a.subscribe("lobby", None)
    b.subscribe("lobby", None)
    published = await asyncio.gather(
        *(a.publish(draft("lobby", f"a{i}")) for i in range(40)),
        *(b.publish(draft("lobby", f"b{i}", BOB)) for i in range(40)))
    for rec in (recorder(a), recorder(b)):
        await rec.count(80)
    ids_a = [e.id for e in recorder(a).events]
    assert ids_a == [e.id for e in recorder(b).events]
    assert increasing(ids_a)
    assert set(ids_a) == {e.id for e in published}
    assert [e.text for e in recorder(a).events if e.user == ANN] == [f"a{i}" for i in range(40)]


async def test_subscribe_resumes_after_an_id_and_ignores_other_rooms(
        server: RedisServer, make: Make) -> None:
    """A worker subscribed after an id gets only later events, and only of its rooms."""
    a, b = await make(server.url), await make(server.url)
    first = await a.publish(draft("r1", "before"))
    b.subscribe("r1", first.id)
    await a.publish(draft("r2", "elsewhere"))
    later = await a.publish(draft("r1", "after"))
    await recorder(b).until(lambda: len(recorder(b).events) >= 1)
    assert [e.id for e in recorder(b).events] == [later.id]
    b.unsubscribe("r1")
    b.subscribe("r2", None)
    await recorder(b).until(lambda: len(recorder(b).of("r2")) >= 1)
    assert [e.text for e in recorder(b).of("r2")] == ["elsewhere"]


async def test_a_far_future_id_bounds_ids_after_redis_loses_its_data(
        server: RedisServer, make: Make, prefix: str) -> None:
    """After Redis forgets a room, a worker that saw its last id still publishes above it."""
    a = await make(server.url)
    a.subscribe("lobby", None)
    raw = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        await raw.xadd(f"{prefix}:room:lobby", {"type": "message", "user": json.dumps(
            ANN.as_dict()), "ts": "1", "text": "from the future"}, id="99999999999999-5")
        await recorder(a).until(lambda: len(recorder(a).events) == 1)
        await raw.delete(f"{prefix}:room:lobby")  # what a restart without persistence does
        event = await a.publish(draft("lobby", "next"))
    finally:
        await raw.aclose()
    assert event.id == "99999999999999-6"
    assert (await a.publish(draft("lobby", "then"))).key > event.key


# -- history ----------------------------------------------------------------------------------


async def test_history_reads_the_stream(server: RedisServer, make: Make) -> None:
    """recent, after, before, export and purge read the room's stream; unknown ids give None."""
    a = await make(server.url)
    history = a.history
    events = [await a.publish(draft("lobby", f"m{i}")) for i in range(7)]
    ids = [e.id for e in events]
    assert [e.id for e in await history.recent("lobby", 3)] == ids[-3:]
    assert await history.recent("lobby", 0) == []
    assert await history.recent("empty", 5) == []
    assert [e.id for e in await history.after("lobby", ids[2], 2) or []] == ids[3:5]
    assert await history.after("lobby", ids[-1], 10) == []
    assert await history.after("lobby", "1-0", 10) is None
    assert await history.after("lobby", "not-an-id", 10) is None
    assert await history.after("empty", ids[0], 10) is None
    page, more = await history.before("lobby", ids[5], 3)
    assert ([e.id for e in page], more) == (ids[2:5], True)
    page, more = await history.before("lobby", None, 10)
    assert ([e.id for e in page], more) == (ids, False)
    assert await history.before("lobby", "junk", 3) == ([], False)
    assert [e.as_dict() for e in await history.recent("lobby", 1)] == [events[-1].as_dict()]
    assert [e.id async for e in history.export("lobby")] == ids
    assert await history.purge("lobby") == 7
    assert await history.recent("lobby", 10) == []
    await history.check()


async def test_export_pages_through_long_rooms(server: RedisServer, make: Make) -> None:
    """export yields every event of a room longer than one page, oldest first."""
    a = await make(server.url)
    published = await asyncio.gather(*(a.publish(draft("big", str(i))) for i in range(1203)))
    assert [e.id async for e in a.history.export("big")] == [e.id for e in published]


async def test_forget_user_anonymises_on_read(server: RedisServer, make: Make) -> None:
    """A forgotten user's events read back with the placeholder name and no avatar."""
    a = await make(server.url)
    await a.publish(draft("r1", "hi", BOB))
    await a.publish(draft("r1", "hello", ANN))
    await a.publish(draft("r2", "again", BOB))
    assert await a.history.forget_user(BOB.id) == 2
    users = [e.user for e in await a.history.recent("r1", 10)]
    assert users == [User(BOB.id, FORGOTTEN_NAME, None), ANN]
    page, _ = await a.history.before("r2", None, 5)
    assert page[0].user.name == FORGOTTEN_NAME


async def test_a_user_forgotten_on_one_worker_is_forgotten_on_every_worker(
        server: RedisServer, make: Make) -> None:
    """Data deletion on one worker reaches every worker's listener, once, after the store
    already reads the user anonymised."""
    a, b = await make(server.url), await make(server.url)
    await a.publish(draft("r1", "hi", BOB))
    assert await a.forget_user(BOB.id) == 1
    for broker in (a, b):
        recorder: Recorder = broker.listener  # type: ignore[assignment]
        await eventually(lambda r=recorder: r.forgotten == [BOB.id])  # type: ignore[misc]
    assert [e.user for e in await b.history.recent("r1", 5)] == [User(BOB.id, FORGOTTEN_NAME, None)]


async def test_a_room_held_on_another_worker_shows_the_forgotten_user_anonymised(
        server: RedisServer, make: Make) -> None:
    """Facebook's data deletion arrives on worker one; worker two holds the room with the user's
    message in its cache: its next joiner sees the placeholder name, not the deleted one."""
    a = await make(server.url, listen=False)
    b = await make(server.url, listen=False)
    limits = Limits(rate=0, write_delay=0)
    one, two = Engine(a, limits, frame=line_frame), Engine(b, limits, frame=line_frame)
    bob_1, ann_2 = Sink(), Sink()
    sub_bob = await one.subscribe("lobby", BOB, bob_1)
    sub_ann = await two.subscribe("lobby", ANN, ann_2)
    await one.say(sub_bob, "remember me")
    await ann_2.count("message", 1)
    await one.forget_user(BOB.id)
    await eventually(lambda: all(e.user.name == FORGOTTEN_NAME
                                 for e in two.rooms["lobby"].recent if e.user.id == BOB.id))
    joiner = Sink()
    sub_cy = await two.subscribe("lobby", User("guest:cy", "Cy"), joiner)
    authors = {f["user"]["name"] for f in joiner.frames()[0]["archive"] if f["user"]["id"] == BOB.id}
    assert authors == {FORGOTTEN_NAME}
    for engine, sub in ((two, sub_cy), (two, sub_ann), (one, sub_bob)):
        await engine.cancel(sub)


async def test_maxlen_trims_streams(server: RedisServer, make: Make, prefix: str) -> None:
    """With maxlen, a room's stream is trimmed to about that many entries."""
    a = await make(server.url, maxlen=10)
    await asyncio.gather(*(a.publish(draft("lobby", str(i))) for i in range(500)))
    raw = aioredis.Redis.from_url(server.url)
    try:
        length = await raw.xlen(f"{prefix}:room:lobby")
    finally:
        await raw.aclose()
    assert 10 <= length < 500


# -- presence and typing ----------------------------------------------------------------------


async def test_presence_counts_sockets_on_all_workers(server: RedisServer, make: Make) -> None:
    """Two tabs on two workers are one member: first socket joins, last one leaves."""
    a, b = await make(server.url), await make(server.url)
    assert await a.connected("lobby", ANN) is True
    assert await b.connected("lobby", ANN) is False
    assert await a.connected("lobby", ANN) is False
    assert await b.connected("lobby", BOB) is True
    assert await a.members("lobby") == await b.members("lobby") == [ANN, BOB]
    assert await a.disconnected("lobby", ANN) is False
    assert await a.disconnected("lobby", ANN) is False
    assert await a.disconnected("lobby", ANN) is False  # a has no third socket of Ann
    assert await b.disconnected("lobby", ANN) is True
    assert await b.members("lobby") == [BOB]
    assert await a.members("other") == []


async def test_a_dead_workers_members_are_swept(server: RedisServer, make: Make) -> None:
    """When a worker stops beating, another removes its sockets and publishes the leaves."""
    a = await make(server.url, heartbeat=0.6)
    b = await make(server.url, heartbeat=0.6)
    b.subscribe("lobby", None)
    assert await a.connected("lobby", ANN) is True
    assert await a.connected("lobby", BOB) is True
    assert await b.connected("lobby", BOB) is False
    await crash(a)
    rec = recorder(b)
    await rec.until(lambda: len(rec.of("lobby", "leave")) >= 1)
    assert [e.user for e in rec.of("lobby", "leave")] == [ANN]
    assert await b.members("lobby") == [BOB]
    assert await b.disconnected("lobby", BOB) is True


async def test_a_worker_that_was_swept_registers_again(server: RedisServer, make: Make) -> None:
    """A worker swept while it was silent puts its sockets back, and they join again."""
    a = await make(server.url, heartbeat=0.6)
    b = await make(server.url, heartbeat=0.6)
    b.subscribe("lobby", None)
    assert await a.connected("lobby", ANN) is True
    await a._stop("heartbeat")  # a stalls: no heartbeat, but it keeps its socket
    rec = recorder(b)
    await rec.until(lambda: len(rec.of("lobby", "leave")) == 1)
    assert await b.members("lobby") == []
    await a._beat()
    await rec.until(lambda: len(rec.of("lobby", "join")) == 1)
    assert await b.members("lobby") == [ANN]
    assert await a.disconnected("lobby", ANN) is True


async def test_close_takes_the_workers_sockets_away(server: RedisServer, make: Make) -> None:
    """A worker that shuts down with sockets still counted publishes their users' leave."""
    a, b = await make(server.url), await make(server.url)
    b.subscribe("lobby", None)
    await a.connected("lobby", ANN)
    await a.close()
    await recorder(b).until(lambda: len(recorder(b).of("lobby", "leave")) == 1)
    assert await b.members("lobby") == []
    with pytest.raises(BrokerUnavailable):
        await a.publish(draft("lobby", "late"))


async def test_typing_reaches_every_worker_once(
        server: RedisServer, make: Make, prefix: str) -> None:
    """A typing notice is relayed by the typist's worker at once and by the others via Redis."""
    a, b = await make(server.url), await make(server.url)
    raw = aioredis.Redis.from_url(server.url)
    try:
        async def subscribed() -> bool:
            counts = await raw.pubsub_numsub(f"{prefix}:typing")
            return bool(counts and counts[0][1] >= 2)

        await eventually(subscribed)
    finally:
        await raw.aclose()
    a.typing("lobby", ANN)
    await recorder(b).until(lambda: len(recorder(b).typing) == 1)
    assert recorder(b).typing == [("lobby", ANN)]
    assert recorder(a).typing == [("lobby", ANN)]
    # The channel keeps its order: once a has Bob's notice, its own came back and was ignored.
    b.typing("lobby", BOB)
    await recorder(a).until(lambda: len(recorder(a).typing) == 2)
    assert recorder(a).typing == [("lobby", ANN), ("lobby", BOB)]
    assert recorder(b).typing == [("lobby", ANN), ("lobby", BOB)]


# -- faults -----------------------------------------------------------------------------------


async def test_open_fails_when_redis_is_unreachable() -> None:
    """open() says in one line which Redis it cannot reach."""
    port = free_port()
    broker = RedisBroker(f"redis://127.0.0.1:{port}/0", timeout=1.0)
    where = f"cannot reach redis at 127.0.0.1:{port}: "
    with pytest.raises(BrokerUnavailable, match=where) as info:
        await broker.open()
    assert "\n" not in str(info.value)
    await broker.close()


async def test_open_broker_builds_a_redis_broker() -> None:
    """open_broker picks RedisBroker for redis:// URLs and keeps the prefix."""
    settings = Settings(broker="redis://127.0.0.1:1/0", redis_prefix="custom", retention_count=9)
    broker = open_broker(settings.broker, **settings.store_options())
    assert isinstance(broker, RedisBroker)
    assert broker.prefix == "custom" and broker.history.prefix == "custom"
    assert broker.history.maxlen == 9
    assert broker.problem() is None
    await broker.close()


@pytest.mark.parametrize("empty", [False, True], ids=["kept-data", "restarted-empty"])
async def test_redis_restart_mid_conversation(own_server: RedisServer, make: Make,
                                              empty: bool) -> None:
    """Redis dies: publish fails, problem() names it; back again, readers resume by themselves."""
    a, b = await make(own_server.url), await make(own_server.url)
    for broker in (a, b):
        broker.subscribe("lobby", None)
    before = [await a.publish(draft("lobby", f"m{i}")) for i in range(3)]
    # Both must have read them: what Redis loses before a worker reads it is lost to it.
    await recorder(a).count(3)
    await recorder(b).count(3)

    await asyncio.to_thread(own_server.kill)
    with pytest.raises(BrokerUnavailable) as info:
        await a.publish(draft("lobby", "lost"))
    assert "\n" not in str(info.value)
    await eventually(lambda: a.problem() is not None and b.problem() is not None)
    problem = b.problem()
    # /healthz shows it to anyone: the part, not the address (that goes to the log)
    assert problem == "broker: redis is unreachable"

    await asyncio.to_thread(own_server.restart, empty=empty)
    await eventually(lambda: a.problem() is None and b.problem() is None)
    after = [await b.publish(draft("lobby", f"n{i}", BOB)) for i in range(3)]
    for broker in (a, b):
        rec = recorder(broker)
        await rec.count(6)
        assert [e.id for e in rec.events] == [e.id for e in before + after]
    assert increasing([e.id for e in before + after])
    assert await a.history.recent("lobby", 10) == (after if empty else before + after)


async def test_presence_comes_back_after_redis_restarts_empty(
        own_server: RedisServer, make: Make) -> None:
    """Workers put their sockets back into a Redis that lost them, and those users join again."""
    a = await make(own_server.url, heartbeat=3.0)
    b = await make(own_server.url, heartbeat=3.0)
    b.subscribe("lobby", None)
    assert await a.connected("lobby", ANN) is True
    assert await b.connected("lobby", BOB) is True
    await asyncio.to_thread(own_server.restart, empty=True)
    rec = recorder(b)
    await rec.until(lambda: {e.user.id for e in rec.of("lobby", "join")} == {ANN.id, BOB.id})
    assert await a.members("lobby") == [ANN, BOB]
    assert await a.disconnected("lobby", ANN) is True


async def test_disconnect_during_an_outage_is_settled_later(
        own_server: RedisServer, make: Make) -> None:
    """A socket closed while Redis was down is taken out of presence once Redis is back."""
    a = await make(own_server.url, heartbeat=3.0)
    b = await make(own_server.url, heartbeat=3.0)
    b.subscribe("lobby", None)
    assert await a.connected("lobby", ANN) is True
    await asyncio.to_thread(own_server.kill)
    with pytest.raises(BrokerUnavailable):
        await a.disconnected("lobby", ANN)
    await asyncio.to_thread(own_server.restart)  # the data, Ann included, is still there
    rec = recorder(b)
    await rec.until(lambda: len(rec.of("lobby", "leave")) == 1)
    assert await b.members("lobby") == []


async def test_presence_events_lost_to_an_outage_are_published_later(
        own_server: RedisServer, make: Make) -> None:
    """A join or leave that Redis already counted but could not store is published when it is back."""
    a = await make(own_server.url, heartbeat=3.0)
    b = await make(own_server.url, heartbeat=3.0)
    b.subscribe("lobby", None)
    await asyncio.to_thread(own_server.kill)
    a._announce([("leave", "lobby", ANN)])
    await eventually(lambda: bool(a._unpublished))
    await asyncio.to_thread(own_server.restart)
    rec = recorder(b)
    await rec.until(lambda: len(rec.of("lobby", "leave")) == 1)
    assert rec.of("lobby", "leave")[0].user == ANN


def test_missing_redis_server_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI=true a missing redis-server binary fails the test instead of skipping it."""
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("REDIS_SERVER", "")
    monkeypatch.setenv("PATH", "")
    # BaseException: a skip must not slip through (it would skip this very test)
    with pytest.raises(BaseException) as under_ci:
        require_redis_server()
    assert under_ci.type is pytest.fail.Exception
    assert "redis-server is not installed" in str(under_ci.value)
    monkeypatch.setenv("CI", "")
    with pytest.raises(BaseException) as locally:
        require_redis_server()
    assert locally.type is pytest.skip.Exception


# -- the engine on top ------------------------------------------------------------------------


async def test_two_engines_on_two_brokers_agree(server: RedisServer, make: Make) -> None:
    """Engines on two workers give their subscribers one order, one join and leave, one list."""
    a = await make(server.url, listen=False)
    b = await make(server.url, listen=False)
    limits = Limits(rate=0, write_delay=0)
    one, two = Engine(a, limits, frame=line_frame), Engine(b, limits, frame=line_frame)
    ann_1, bob_2, ann_2 = Sink(), Sink(), Sink()
    sub_ann = await one.subscribe("lobby", ANN, ann_1)
    await ann_1.until(lambda: len(ann_1.events("join")) == 1)
    sub_bob = await two.subscribe("lobby", BOB, bob_2)
    assert [m["id"] for m in bob_2.frames()[0]["members"]] == [ANN.id]
    assert bob_2.frames()[0]["archive"][-1]["type"] == "join"
    await bob_2.count("join", 1)  # Bob's own join, live
    sub_ann2 = await two.subscribe("lobby", ANN, ann_2)
    assert [m["id"] for m in ann_2.frames()[0]["members"]] == [ANN.id, BOB.id]

    await asyncio.gather(*(one.say(sub_ann, f"a{i}") for i in range(20)),
                         *(two.say(sub_bob, f"b{i}") for i in range(20)))
    sinks = (ann_1, bob_2, ann_2)
    for sink in sinks:
        await sink.count("message", 40)
    orders = [[f["id"] for f in s.events("message")] for s in sinks]
    assert orders[0] == orders[1] == orders[2]
    assert increasing(orders[0])
    assert [f["user"]["id"] for f in ann_1.events("join")] == [ANN.id, BOB.id]

    await one.cancel(sub_ann)  # Ann still has a tab on the other worker: no leave
    await two.cancel(sub_bob)
    await ann_2.until(lambda: len(ann_2.events("leave")) == 1)
    await two.cancel(sub_ann2)
    assert [f["user"]["id"] for f in ann_2.events("leave")] == [BOB.id]
    assert await a.members("lobby") == await b.members("lobby") == []
    watcher = Sink()
    sub = await one.subscribe("lobby", User("guest:cy", "Cy"), watcher)
    leaves = [f["user"]["id"] for f in watcher.frames()[0]["archive"] if f["type"] == "leave"]
    assert leaves == [BOB.id, ANN.id]
    assert [m["id"] for m in watcher.frames()[0]["members"]] == []
    await one.cancel(sub)
