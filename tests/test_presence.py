"""Presence in Redis (revchat/backends/redis_presence.py) driven directly against a real redis-server:
what a worker's own count of its sockets puts back on a resync, and what leaving takes away."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from revchat.backends.redis_presence import Change, RedisPresence, _changes
from revchat.core.events import User
from tests.support.redis_server import RedisServer

# A presence change left waiting is a failure here, not a hang (mutation runs count on it).
pytestmark = [pytest.mark.redis, pytest.mark.timeout(20)]

ANN = User("guest:ann", "Ann")
BOB = User("guest:bob", "Bob", "https://example.com/bob.png")


@pytest.fixture(scope="module")
def server(shared_redis: RedisServer) -> RedisServer:
    return shared_redis


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(server.url, decode_responses=True, protocol=2)  # as the broker's
    yield redis
    await redis.aclose()


def worker(client: aioredis.Redis, prefix: str, name: str = "w1") -> RedisPresence:
    return RedisPresence(client, prefix=prefix, worker=name, heartbeat=30.0)


async def resync(presence: RedisPresence) -> list[Change]:
    changes: list[Change] = []
    await presence.beat(changes, force=True)
    return changes


async def test_a_socket_never_counted_is_not_taken_away(client: aioredis.Redis, prefix: str) -> None:
    """A disconnect of a socket this worker never counted changes nothing: the next socket is the
    user's first, and a resync announces nobody."""
    w = worker(client, prefix)
    assert await w.disconnected("lobby", ANN) is False
    assert await w.connected("lobby", ANN) is True
    assert await w.disconnected("lobby", ANN) is True
    assert await resync(w) == []
    assert await w.members("lobby") == []


async def test_closing_every_tab_leaves_nothing_to_resync(client: aioredis.Redis, prefix: str) -> None:
    """A user with three tabs on one worker stays a member until the last closes; a resync then
    puts nobody back."""
    w = worker(client, prefix)
    assert [await w.connected("lobby", ANN) for _ in range(3)] == [True, False, False]
    assert [await w.disconnected("lobby", ANN) for _ in range(2)] == [False, False]
    assert await resync(w) == []
    assert await w.members("lobby") == [ANN]
    assert await w.disconnected("lobby", ANN) is True
    assert await resync(w) == []
    assert await w.members("lobby") == []


async def test_a_resync_after_redis_lost_everything_puts_the_sockets_back(
    client: aioredis.Redis, prefix: str
) -> None:
    """When Redis has lost this worker's sockets, a resync counts them again and announces the
    joins, with each user as they were."""
    w = worker(client, prefix)
    await w.connected("lobby", ANN)
    await w.connected("lobby", BOB)
    await w.connected("other", BOB)
    keys = [k async for k in client.scan_iter(f"{prefix}:*")]
    await client.delete(*keys)
    assert sorted(await resync(w), key=str) == sorted(
        [("join", "lobby", ANN), ("join", "lobby", BOB), ("join", "other", BOB)], key=str)
    assert await w.members("lobby") == [ANN, BOB]


async def test_leaving_takes_everything_of_the_worker_away(client: aioredis.Redis, prefix: str) -> None:
    """A worker that leaves (shutdown) announces its users' leaves and keeps nothing in Redis:
    not its sockets, its heartbeat, nor its place among the workers."""
    w, other = worker(client, prefix), worker(client, prefix, "w2")
    await w.connected("lobby", ANN)
    await other.connected("lobby", BOB)
    await resync(w)
    assert await w.leave() == [("leave", "lobby", ANN)]
    assert await client.smembers(f"{prefix}:workers") == set()
    assert await client.exists(f"{prefix}:worker:w1", f"{prefix}:sockets:w1") == 0
    assert await other.members("lobby") == [BOB]


def test_changes_of_a_reply_keep_each_user_or_at_least_its_id() -> None:
    """A SYNC or SWEEP reply reads as joins and leaves; a user whose JSON was lost still leaves by id."""
    reply = [["join", "lobby", "guest:ann", '{"id":"guest:ann","name":"Ann","avatar":null}'],
             ["leave", "lobby", "guest:x", ""], ["leave", "r", "guest:y", '{"name":"no id"}']]
    assert _changes(reply) == [("join", "lobby", ANN), ("leave", "lobby", User("guest:x", "guest:x")),
                               ("leave", "r", User("guest:y", "guest:y"))]
    assert _changes(None) == []


async def test_the_heartbeat_lasts_the_heartbeat_interval(client: aioredis.Redis, prefix: str) -> None:
    """Each beat sets this worker's heartbeat to expire after ``heartbeat`` seconds, no later, so
    a worker that dies is swept that long after its last beat."""
    w = RedisPresence(client, prefix=prefix, worker="w1", heartbeat=30.0)
    await w.beat([])
    first = await client.pttl(f"{prefix}:worker:w1")
    assert 29_000 < first <= 30_000
    synced = await client.get(f"{prefix}:worker:w1")
    await client.pexpire(f"{prefix}:worker:w1", 5_000)
    await w.beat([])  # a plain refresh (nothing to resync) sets it back, to what a resync writes
    assert 29_000 < await client.pttl(f"{prefix}:worker:w1") <= 30_000
    assert await client.get(f"{prefix}:worker:w1") == synced


async def test_a_heartbeat_under_a_millisecond_still_registers(client: aioredis.Redis, prefix: str) -> None:
    """A heartbeat under a millisecond gives the shortest TTL, 1 ms, never 0 (a TTL of 0
    unregisters the worker): a beat still lists it among the workers."""
    w = RedisPresence(client, prefix=prefix, worker="w1", heartbeat=0.0004)
    assert w.ttl == 1
    await w.beat([])
    assert await client.sismember(f"{prefix}:workers", "w1")


async def test_a_plain_beat_trusts_redis_while_the_heartbeat_lives(
    client: aioredis.Redis, prefix: str
) -> None:
    """While the heartbeat lives and no count failed, a beat only refreshes it and does not
    re-register the sockets; a forced one does."""
    w = worker(client, prefix)
    await w.connected("lobby", ANN)
    await resync(w)
    await client.delete(f"{prefix}:presence:lobby", f"{prefix}:users:lobby", f"{prefix}:sockets:w1")
    changes: list[Change] = []
    await w.beat(changes)
    assert changes == []
    assert await resync(w) == [("join", "lobby", ANN)]


async def test_a_failed_resync_is_retried_by_the_next_beat(client: aioredis.Redis, prefix: str) -> None:
    """A socket whose count failed in Redis is put back by a later beat while the heartbeat
    lives, even when the first resync fails too."""
    w = worker(client, prefix)
    await resync(w)
    await client.set(f"{prefix}:presence:lobby", "not a hash")  # every count in lobby fails
    with pytest.raises(ResponseError):
        await w.connected("lobby", ANN)
    with pytest.raises(ResponseError):
        await w.beat([])
    await client.delete(f"{prefix}:presence:lobby")
    changes: list[Change] = []
    await w.beat(changes)
    assert changes == [("join", "lobby", ANN)]
    assert await w.members("lobby") == [ANN]
