"""Who is in which room, counted across every worker in Redis (for :mod:`revchat.backends.redis_broker`).

A user is a member of a room while they have at least one socket in it on any worker; joins and
leaves must happen once however many tabs and workers they use, and a worker that dies must not
leave its users online. Keys, under the deployment's prefix ``p``:

* ``{p}:presence:{room}`` — hash user id -> the user's sockets on all workers, and
  ``{p}:users:{room}`` — user id -> user JSON, for the users with at least one.
* ``{p}:sockets:{worker}`` — hash ``room|user id`` -> sockets on that worker;
  ``{p}:worker:{worker}`` — its heartbeat, which expires unless refreshed; ``{p}:workers`` —
  the set of workers. When a heartbeat expires (the worker died or lost Redis), the next worker
  to sweep takes that worker's sockets away and announces ``leave`` for the users left with none.

Every change is one Lua script, so it is atomic. The scripts build key names inside Lua, so
this needs a standalone Redis, not a Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from redis.asyncio import Redis

from revchat.core.events import User, dumps
from revchat.core.presence import Presence

CONNECT = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
return n
"""

# A socket this worker no longer has in Redis (swept, or Redis restarted empty) is not counted
# down again: that would take away another worker's socket.
DISCONNECT = """
local w = redis.call('HINCRBY', KEYS[3], ARGV[3], -1)
if w <= 0 then redis.call('HDEL', KEYS[3], ARGV[3]) end
if w < 0 then return 0 end
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) > 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# Takes a worker's sockets out of the rooms; returns {room, user id, user JSON} of the users
# left with no socket anywhere.
DROP = """
local function drop(p, w)
  local gone = {}
  local skey = p .. ':sockets:' .. w
  local old = redis.call('HGETALL', skey)
  for i = 1, #old, 2 do
    local sep = string.find(old[i], '|', 1, true)
    local room, uid = string.sub(old[i], 1, sep - 1), string.sub(old[i], sep + 1)
    local pkey, ukey = p .. ':presence:' .. room, p .. ':users:' .. room
    if redis.call('HINCRBY', pkey, uid, -tonumber(old[i + 1])) <= 0 then
      redis.call('HDEL', pkey, uid)
      table.insert(gone, {room, uid, redis.call('HGET', ukey, uid) or ''})
      redis.call('HDEL', ukey, uid)
    end
  end
  redis.call('DEL', skey)
  return gone
end
"""

# Replaces this worker's registration by its own count of its sockets (ARGV[4..], groups of
# room, user id, count, user JSON) after it lost track (Redis down, restarted, or it was swept),
# and refreshes its heartbeat (TTL 0: unregister, and drop its wake stream). Returns {kind, room,
# user id, user JSON} of the joins and leaves the change means; atomic, so nobody sees a user
# leave and come back.
SYNC = DROP + """
local p, w = ARGV[1], ARGV[2]
local left = {}
for _, g in ipairs(drop(p, w)) do left[g[1] .. '|' .. g[2]] = g end
local out = {}
for i = 4, #ARGV, 4 do
  local room, uid, n, user = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local field = room .. '|' .. uid
  local c = redis.call('HINCRBY', p .. ':presence:' .. room, uid, n)
  redis.call('HSET', p .. ':users:' .. room, uid, user)
  redis.call('HSET', p .. ':sockets:' .. w, field, n)
  if left[field] then left[field] = nil
  elseif c == tonumber(n) then table.insert(out, {'join', room, uid, user}) end
end
for _, g in pairs(left) do table.insert(out, {'leave', g[1], g[2], g[3]}) end
if ARGV[3] == '0' then
  redis.call('DEL', p .. ':worker:' .. w, p .. ':wake:' .. w)
  redis.call('SREM', p .. ':workers', w)
else
  redis.call('SET', p .. ':worker:' .. w, '1', 'PX', ARGV[3])
  redis.call('SADD', p .. ':workers', w)
end
return out
"""

# Removes the workers whose heartbeat expired. Atomic, so when several workers sweep at once
# only one gets the leaves in its reply (and publishes them).
SWEEP = DROP + """
local p, out = ARGV[1], {}
for _, w in ipairs(redis.call('SMEMBERS', p .. ':workers')) do
  if w ~= ARGV[2] and redis.call('EXISTS', p .. ':worker:' .. w) == 0 then
    for _, g in ipairs(drop(p, w)) do table.insert(out, {'leave', g[1], g[2], g[3]}) end
    redis.call('SREM', p .. ':workers', w)
  end
end
return out
"""

Change = tuple[Literal["join", "leave"], str, User]
"""A presence change to announce: ``("join" | "leave", room, user)``."""


class RedisPresence(Presence):
    """This worker's share of the rooms' presence, kept in Redis and in step with its sockets.

    Methods raise what redis-py raises (``RedisError``, ``OSError``); the broker turns that into
    :class:`~revchat.core.broker.BrokerUnavailable`. The worker also counts its sockets itself, so
    that whatever Redis loses (a failed call, an outage, a restart, being swept) the next
    :meth:`beat` puts back.
    """

    def __init__(self, client: Redis, *, prefix: str, worker: str, heartbeat: float) -> None:
        self._redis = client
        self.prefix = prefix
        self.worker = worker
        self.ttl = max(1, int(heartbeat * 1000))
        self._connect = client.register_script(CONNECT)
        self._disconnect = client.register_script(DISCONNECT)
        self._sync = client.register_script(SYNC)
        self._sweep = client.register_script(SWEEP)
        self._local: dict[tuple[str, str], tuple[int, User]] = {}
        self._dirty = False
        self._ops = 0
        self._no_ops = asyncio.Event()
        self._no_ops.set()
        self._not_syncing = asyncio.Event()
        self._not_syncing.set()

    @contextlib.asynccontextmanager
    async def _shared(self) -> AsyncIterator[None]:
        """Socket counts change concurrently with each other, but never during a sync."""
        while not self._not_syncing.is_set():
            await self._not_syncing.wait()
        self._ops += 1
        self._no_ops.clear()
        try:
            yield
        finally:
            self._ops -= 1
            if not self._ops:
                self._no_ops.set()

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """A sync sees the local count and Redis agree: no change is half done."""
        while not self._not_syncing.is_set():
            await self._not_syncing.wait()
        self._not_syncing.clear()
        try:
            await self._no_ops.wait()
            yield
        finally:
            self._not_syncing.set()

    async def _change(self, script: Any, room: str, user: User) -> int:
        keys = [f"{self.prefix}:presence:{room}", f"{self.prefix}:users:{room}",
                f"{self.prefix}:sockets:{self.worker}"]
        try:
            return int(await script(keys=keys, args=[user.id, dumps(user.as_dict()),
                                                     f"{room}|{user.id}"]))
        except BaseException:
            self._dirty = True  # Redis may or may not have counted it: the next beat resyncs
            raise

    async def connected(self, room: str, user: User) -> bool:
        """Count a socket; True if it is the user's first in ``room`` on any worker."""
        async with self._shared():
            count, _ = self._local.get((room, user.id), (0, user))
            self._local[(room, user.id)] = (count + 1, user)
            return await self._change(self._connect, room, user) == 1

    async def disconnected(self, room: str, user: User) -> bool:
        """Count a socket less; True if it was the user's last in ``room`` on any worker."""
        async with self._shared():
            count, _ = self._local.get((room, user.id), (0, user))
            if count <= 0:
                return False
            if count == 1:
                del self._local[(room, user.id)]
            else:
                self._local[(room, user.id)] = (count - 1, user)
            return await self._change(self._disconnect, room, user) == 1

    async def members(self, room: str) -> list[User]:
        """Users with a socket in ``room`` on any worker (a dead one's until it is swept)."""
        users = await self._redis.hvals(f"{self.prefix}:users:{room}")
        return sorted((User.from_dict(json.loads(u)) for u in users), key=lambda u: u.id)

    async def beat(self, changes: list[Change], *, force: bool = False) -> None:
        """Refresh the heartbeat, re-registering this worker's sockets if Redis lost track of
        them, then sweep expired workers. Appends the joins and leaves this means to
        ``changes`` as soon as Redis has counted them, even if a later step fails."""
        key = f"{self.prefix}:worker:{self.worker}"
        if force or self._dirty or not await self._redis.set(key, "1", px=self.ttl, xx=True):
            async with self._exclusive():
                self._dirty = True
                groups = [str(v) for (room, uid), (count, user) in self._local.items()
                          for v in (room, uid, count, dumps(user.as_dict()))]
                changes += _changes(await self._sync(args=[self.prefix, self.worker, self.ttl,
                                                           *groups]))
                self._dirty = False
        changes += _changes(await self._sweep(args=[self.prefix, self.worker]))

    async def leave(self) -> list[Change]:
        """Take all of this worker's sockets out (shutdown); return the leaves that means."""
        async with self._exclusive():
            self._local.clear()
            return _changes(await self._sync(args=[self.prefix, self.worker, 0]))


def _changes(reply: Any) -> list[Change]:
    """The joins and leaves of a SYNC or SWEEP reply (``{kind, room, user id, user JSON}``)."""
    changes: list[Change] = []
    for kind, room, uid, data in reply or ():
        try:
            user = User.from_dict(json.loads(data))
        except (KeyError, TypeError, ValueError):
            user = User(uid, uid)  # its JSON was lost; the id still says who left
        changes.append(("join" if kind == "join" else "leave", room, user))
    return changes
