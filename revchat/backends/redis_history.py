"""Room events kept in Redis Streams: one stream per room, whose entry ids are the events' ids.

A stream gives every reader one order and increasing ids, which docs/protocol.md promises of event
ids, across every worker and machine that shares the Redis. Keys, under the deployment's prefix:

* ``{prefix}:room:{room}`` — the room's stream; each entry has the fields ``type``, ``user``
  (the user's JSON), ``ts`` (Unix ms) and ``text``.
* ``{prefix}:forgotten`` — hash of user ids whose name and avatar are hidden on read
  (:meth:`RedisHistory.forget_user`): stream entries cannot be edited in place.
* ``{prefix}:ended`` — hash of the sessions ended on the server (:meth:`RedisHistory.end_sessions`).

Used through :class:`revchat.backends.redis_broker.RedisBroker`, which owns the connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from revchat.core.errors import one_line
from revchat.core.events import EVENT_TYPES, Draft, Event, User, id_key
from revchat.core.history import History, HistoryUnavailable, forgotten
from revchat.core.sessions import SESSION_MAX_AGE, Ended, now_ms

log = logging.getLogger("revchat.redis")

# Adds a batch of one room's events (ARGV[5..], four values each: type, user, ts, text) and
# returns their ids. The first gets an id above ARGV[1..3], the newest id this worker has seen
# in the room (empty: none seen): Redis's own "*" id is above the stream's top entry, but if
# Redis lost its data (restarted empty) or its clock went back, it could be below ids clients
# already hold; then the floor + 1 is used instead. Later ones follow Redis's own order. Done
# in Lua so the check and the adds are atomic, and in one call per room per batch because a
# call costs far more than an XADD inside it.
APPEND = """
local check = ARGV[1] ~= ''
local ids = {}
for i = 5, #ARGV, 4 do
  local id = '*'
  if check then
    local below = true
    local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
    if #top > 0 then
      local ms, seq = string.match(top[1][1], '^(%d+)-(%d+)$')
      ms, seq = tonumber(ms), tonumber(seq)
      local fms, fseq = tonumber(ARGV[2]), tonumber(ARGV[3])
      below = ms < fms or (ms == fms and seq < fseq)
    end
    if below then id = ARGV[1] end
    check = false
  end
  if tonumber(ARGV[4]) > 0 then
    ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], id, 'type', ARGV[i],
                               'user', ARGV[i + 1], 'ts', ARGV[i + 2], 'text', ARGV[i + 3])
  else
    ids[#ids + 1] = redis.call('XADD', KEYS[1], id, 'type', ARGV[i], 'user', ARGV[i + 1],
                               'ts', ARGV[i + 2], 'text', ARGV[i + 3])
  end
end
return ids
"""

PAGE = 500


def room_key(prefix: str, room: str) -> str:
    return f"{prefix}:room:{room}"


def encode(draft: Draft) -> list[str]:
    """A draft's field values in the order :data:`APPEND` stores them as ``type``, ``user``,
    ``ts`` and ``text`` (the room is the stream's name)."""
    user = json.dumps(draft.user.as_dict(), ensure_ascii=False, separators=(",", ":"))
    return [draft.type, user, str(draft.timestamp), draft.text]


_users: dict[str, User] = {}


def _user(raw: str) -> User:
    """The user of an entry; the same few users write most entries, so parse each JSON once."""
    user = _users.get(raw)
    if user is None:
        if len(_users) > 10000:
            _users.clear()
        user = _users[raw] = User.from_dict(json.loads(raw))
    return user


def decode(room: str, entry_id: str, fields: dict[str, str]) -> Event | None:
    """A stream entry as an :class:`Event`, or None (logged) if it is not one of ours."""
    try:
        kind = fields["type"]
        if kind not in EVENT_TYPES:
            raise ValueError(f"unknown event type {kind!r}")
        return Event(kind, entry_id, room, _user(fields["user"]),  # type: ignore[arg-type]
                     int(fields["ts"]), fields.get("text", ""))
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("skipping malformed entry %s in room %s: %s", entry_id, room, one_line(exc))
        return None


def entries(room: str, reply: Any) -> list[Event]:
    """The events of an XRANGE/XREVRANGE reply (a list of ``(id, fields)``), in reply order."""
    events = (decode(room, str(entry_id), fields or {}) for entry_id, fields in reply or ())
    return [e for e in events if e is not None]


def stream_id(event_id: str) -> str | None:
    """An event id in Redis's ``ms-seq`` form (``"42"`` is ``42-0``), or None if malformed."""
    key = id_key(event_id)
    return None if key is None else f"{key[0]}-{key[1]}"


class RedisHistory(History):
    """The rooms' streams read back for the archive, resume and scroll-back.

    :meth:`append` is what :class:`~revchat.backends.redis_broker.RedisBroker` publishes with; ids keep
    increasing in a room even when Redis restarts empty (see :data:`APPEND`), as far as this
    process has seen the room. ``maxlen`` > 0 trims each stream to about that many entries.
    """

    name = "redis"

    def __init__(self, client: Redis, *, where: str, prefix: str = "revchat",
                 maxlen: int = 0) -> None:
        self._redis = client
        self.where = where
        self.prefix = prefix
        self.maxlen = max(0, maxlen)
        self._append = client.register_script(APPEND)
        self._floors: dict[str, tuple[int, int]] = {}
        self._forgotten = f"{prefix}:forgotten"
        self._ended = f"{prefix}:ended"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise HistoryUnavailable(f"{self.where} unreachable: {one_line(exc)}") from exc

    def note(self, room: str, event_id: str) -> None:
        """Remember ``event_id`` as seen in ``room``: later events of the room get greater ids,
        whatever Redis remembers."""
        key = id_key(event_id)
        if key is not None and key > self._floors.get(room, (0, 0)):
            self._floors[room] = (key[0], key[1])

    async def append(self, drafts: Sequence[Draft]) -> list[Event]:
        """Add a batch in one round trip (a pipeline, not a transaction); return the events.

        Raises :class:`HistoryUnavailable` if any of them could not be added.
        """
        if not drafts:
            return []
        rooms: dict[str, list[int]] = {}
        for index, draft in enumerate(drafts):
            rooms.setdefault(draft.room, []).append(index)
        pending = list(rooms)
        ids: list[str] = [""] * len(drafts)
        with self._errors():
            for _ in range(2):  # a second pass only after NOSCRIPT (Redis lost its script cache)
                pipe = self._redis.pipeline(transaction=False)
                for room in pending:
                    floor = self._floors.get(room)
                    above = f"{floor[0]}-{floor[1] + 1}" if floor else ""
                    ms, seq = floor or (0, 0)
                    values = [v for index in rooms[room] for v in encode(drafts[index])]
                    pipe.evalsha(self._append.sha, 1, room_key(self.prefix, room),
                                 above, ms, seq, self.maxlen, *values)
                results = await pipe.execute(raise_on_error=False)
                missing = []
                for room, result in zip(pending, results, strict=True):
                    if isinstance(result, NoScriptError):
                        missing.append(room)
                    elif isinstance(result, Exception):
                        raise result
                    else:
                        for index, event_id in zip(rooms[room], result, strict=True):
                            ids[index] = event_id.decode() if isinstance(event_id, bytes) \
                                else str(event_id)
                if not missing:
                    break
                await self._redis.script_load(APPEND)
                pending = missing
            else:
                raise HistoryUnavailable(f"{self.where} keeps refusing the append script")
        events = [Event.stored(d, event_id) for d, event_id in zip(drafts, ids, strict=True)]
        for event in events:
            self.note(event.room, event.id)
        return events

    async def _read(self, room: str, *commands: tuple[str, ...]) -> list[Any]:
        """Run range commands on the room's stream in one round trip, plus whether anybody was
        ever forgotten (so the common case needs no second trip)."""
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(command[0], room_key(self.prefix, room), *command[1:])
        pipe.exists(self._forgotten)
        with self._errors():
            replies: list[Any] = await pipe.execute()
        return replies

    async def _anonymise(self, events: list[Event], anyone_forgotten: Any) -> list[Event]:
        """Hide the name and avatar of forgotten users (:meth:`forget_user`)."""
        if not events or not anyone_forgotten:
            return events
        uids = sorted({e.user.id for e in events})
        with self._errors():
            flags = await self._redis.hmget(self._forgotten, uids)
        gone = {uid for uid, flag in zip(uids, flags, strict=True) if flag}
        return [forgotten(e) if e.user.id in gone else e for e in events]

    async def recent(self, room: str, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        reply, forgotten = await self._read(room, ("XREVRANGE", "+", "-", "COUNT", str(limit)))
        events = entries(room, reply)[::-1]
        if events:
            self.note(room, events[-1].id)
        return await self._anonymise(events, forgotten)

    async def after(self, room: str, event_id: str, limit: int) -> list[Event] | None:
        """None if ``event_id`` is not in the stream (never was, trimmed, or Redis lost it)."""
        start = stream_id(event_id)
        if start is None:
            return None
        count = str(max(1, limit))
        found, reply, forgotten = await self._read(
            room, ("XRANGE", start, start), ("XRANGE", f"({start}", "+", "COUNT", count))
        if not found:
            return None
        return await self._anonymise(entries(room, reply)[:max(0, limit)], forgotten)

    async def before(self, room: str, event_id: str | None, limit: int) -> tuple[list[Event], bool]:
        end = "+" if event_id is None else stream_id(event_id)
        if end is None or limit <= 0:
            return [], False
        if event_id is not None:
            end = f"({end}"
        reply, forgotten = await self._read(room, ("XREVRANGE", end, "-", "COUNT", str(limit + 1)))
        events = entries(room, reply)
        page = events[:limit][::-1]
        return await self._anonymise(page, forgotten), len(events) > limit

    async def purge(self, room: str) -> int:
        pipe = self._redis.pipeline(transaction=True)
        pipe.xlen(room_key(self.prefix, room))
        pipe.delete(room_key(self.prefix, room))
        with self._errors():
            count, _ = await pipe.execute()
        return int(count)

    async def export(self, room: str) -> AsyncIterator[Event]:
        start = "-"
        while True:
            reply, forgotten = await self._read(room, ("XRANGE", start, "+", "COUNT", str(PAGE)))
            for event in await self._anonymise(entries(room, reply), forgotten):
                yield event
            if len(reply) < PAGE:
                return
            start = f"({reply[-1][0]}"

    async def forget_user(self, user_id: str) -> int:
        """Hide the user's name and avatar in every room from now on; return their event count.

        The entries themselves keep the original fields until the stream is trimmed or purged:
        streams cannot be rewritten in the middle.
        """
        with self._errors():
            await self._redis.hset(self._forgotten, user_id, "1")
            count = 0
            rooms = self._redis.scan_iter(match=room_key(self.prefix, "*"), _type="stream")
            async for key in rooms:
                start = "-"
                while True:
                    reply = await self._redis.xrange(key, start, "+", count=PAGE)
                    count += sum(e.user.id == user_id for e in entries("", reply))
                    if not reply or len(reply) < PAGE:
                        break
                    start = f"({reply[-1][0]!s}"
        return count

    async def ended_sessions(self) -> Ended:
        """The ended sessions kept in ``{prefix}:ended`` (fields ``s:<session id>`` and
        ``u:<user id>``, values Unix ms); what has expired is deleted on the way."""
        with self._errors():
            kept = await self._redis.hgetall(self._ended)
        ended, expired, now = Ended(), [], now_ms()
        for field, value in kept.items():
            kind, _, key = str(field).partition(":")
            until = int(value) if str(value).isascii() and str(value).isdigit() else -1
            if kind == "s" and until >= now:
                ended.sessions[key] = until
            elif kind == "u" and until >= now - SESSION_MAX_AGE * 1000:
                ended.users[key] = until
            else:
                expired.append(field)
        if expired:
            with self._errors():
                await self._redis.hdel(self._ended, *expired)
        return ended

    async def end_sessions(self, ended: Ended) -> None:
        mapping = {f"s:{k}": v for k, v in ended.sessions.items()} | \
            {f"u:{k}": v for k, v in ended.users.items()}
        if mapping:
            with self._errors():
                await self._redis.hset(self._ended, mapping=mapping)  # type: ignore[arg-type]

    async def check(self) -> None:
        with self._errors():
            await self._redis.ping()
