"""Hostile and unlucky input for the Redis broker's pub/sub notices and its stream reader.

:class:`RedisNotices` listens on ``{p}:typing``, ``{p}:ended`` and ``{p}:forgotten``, where anyone
with access to Redis may publish anything; :class:`RedisReader` reads the held rooms while the
engine holds and drops them under it. Everything runs against a real redis-server (the module's
shared one, kept apart by key prefix; the restart tests get one of their own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from revchat.backends.redis_broker import RedisBroker
from revchat.backends.redis_history import RedisHistory
from revchat.backends.redis_notices import RedisNotices
from revchat.backends.redis_reader import RedisReader
from revchat.core.events import Draft, Event, User
from revchat.core.sessions import Ended, now_ms
from tests.support.brokers import Make, recorder
from tests.support.redis_server import RedisServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.redis

ANN = User("guest:ann", "Ann")
BOB = User("guest:bob", "Bob", "https://example.com/bob.png")
CY = User("guest:cy", "Cy")
TIMEOUT = 15.0
FAR = now_ms() + 3600_000  # an end time that has not expired
# What the broker's clients use: str replies, RESP2.
OPTIONS: dict[str, Any] = {"decode_responses": True, "protocol": 2}
KINDS = ("typing", "ended", "forgotten")


def new_prefix() -> str:
    return f"n{secrets.token_hex(4)}"


def channel(prefix: str, kind: str) -> str:
    return f"{prefix}:{kind}"


@pytest.fixture(scope="module")
def server(shared_redis: RedisServer) -> RedisServer:
    return shared_redis


async def subscribers(url: str, name: str) -> int:
    raw = aioredis.Redis.from_url(url, **OPTIONS)
    try:
        counts = await raw.pubsub_numsub(name)
    finally:
        await raw.aclose()
    return int(counts[0][1]) if counts else 0


# -- RedisNotices.listen on its own -----------------------------------------------------------


class Heard:
    """The callbacks handed to :meth:`RedisNotices.listen`, and what they were given."""

    def __init__(self) -> None:
        self.typing: list[tuple[str, User]] = []
        self.ended: list[Ended] = []
        self.forgotten: list[str] = []
        self.kept_calls = 0

    def relay(self, room: str, user: User) -> None:
        self.typing.append((room, user))

    def on_ended(self, ended: Ended) -> None:
        self.ended.append(ended)

    def on_forgotten(self, user_id: str) -> None:
        self.forgotten.append(user_id)

    async def kept(self) -> Ended:
        self.kept_calls += 1
        return Ended()


class Listening:
    """A :meth:`RedisNotices.listen` task of worker ``me`` and a sender, worker ``other``."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.heard = Heard()
        self._clients = [aioredis.Redis.from_url(url, **OPTIONS) for _ in range(3)]
        self.notices = RedisNotices(self._clients[0], self._clients[1], prefix=prefix, worker="me")
        self.other = RedisNotices(self._clients[2], self._clients[2], prefix=prefix, worker="other")
        self.raw = aioredis.Redis.from_url(url)  # bytes in, bytes out: any payload at all
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        heard = self.heard
        self.task = asyncio.create_task(self.notices.listen(
            relay=heard.relay, ended=heard.on_ended, forgotten=heard.on_forgotten,
            kept=heard.kept))

        async def subscribed() -> bool:
            self.check_alive()
            names = [channel(self.prefix, kind) for kind in KINDS]
            counts = dict(await self.raw.pubsub_numsub(*names))
            return heard.kept_calls == 1 and all(counts.get(n.encode(), 0) >= 1 for n in names)

        await eventually(subscribed)

    def check_alive(self) -> None:
        """Fail, with the listener's own exception, if it has stopped."""
        assert self.task is not None
        if self.task.done():
            exc = None if self.task.cancelled() else self.task.exception()
            raise AssertionError(f"the listener stopped: {exc!r}") from exc

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait for ``predicate``; fail at once if the listener stops meanwhile."""
        def check() -> bool:
            self.check_alive()
            return predicate()

        await eventually(check, TIMEOUT)

    async def publish(self, kind: str, payload: bytes | str) -> None:
        await self.raw.publish(channel(self.prefix, kind), payload)

    async def send_good(self) -> tuple[tuple[str, User], Ended, str]:
        """One good notice on each channel, from another worker; returns what should arrive."""
        typing, ended, forgotten = ("lobby", BOB), Ended({"sid-good": FAR}, {}), "guest:gone"
        await self.other.send_typing(*typing)
        await self.other.send_ended(ended)
        await self.other.send_forgotten(forgotten)
        return typing, ended, forgotten

    async def good_ones_arrive(self) -> None:
        """Send the good notices; each arrives, and last (the channels keep their order)."""
        typing, ended, forgotten = await self.send_good()
        heard = self.heard
        await self.until(lambda: bool(heard.typing and heard.ended and heard.forgotten)
                         and heard.typing[-1] == typing and heard.ended[-1] == ended
                         and heard.forgotten[-1] == forgotten)

    async def close(self) -> None:
        if self.task is not None:
            while not self.task.done():
                self.task.cancel()
                await asyncio.wait((self.task,), timeout=1.0)
            if not self.task.cancelled():
                self.task.exception()  # retrieved: the test has said what it thinks of it
        for client in (*self._clients, self.raw):
            with contextlib.suppress(Exception):
                await client.aclose()


@contextlib.asynccontextmanager
async def listening(url: str, prefix: str | None = None) -> AsyncIterator[Listening]:
    ear = Listening(url, prefix or new_prefix())
    try:
        await ear.start()
        yield ear
    finally:
        await ear.close()


def well_formed(heard: Heard) -> None:
    """Whatever reached the callbacks has the types they promise (coerced, never raw JSON)."""
    for room, user in heard.typing:
        assert isinstance(room, str) and isinstance(user, User)
        assert isinstance(user.id, str) and isinstance(user.name, str)
        assert user.avatar is None or isinstance(user.avatar, str)
    for ended in heard.ended:
        assert isinstance(ended, Ended)
        for times in (ended.sessions, ended.users):
            assert all(isinstance(k, str) and type(v) is int for k, v in times.items())
    assert all(isinstance(user_id, str) for user_id in heard.forgotten)


TEXT = st.text(st.characters(codec="utf-8"), max_size=60)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12)
# Objects with some of the keys the channels expect, holding the wrong things.
SHAPES = st.fixed_dictionaries({}, optional={
    "worker": JSON | st.just("me") | st.just("other"),
    "room": JSON,
    "user": JSON | st.fixed_dictionaries({}, optional={"id": JSON, "name": JSON, "avatar": JSON}),
    "sessions": JSON | st.dictionaries(TEXT, JSON, max_size=3),
    "users": JSON | st.dictionaries(TEXT, JSON, max_size=3),
})
GARBAGE: st.SearchStrategy[bytes] = st.one_of(
    TEXT.map(str.encode),
    JSON.map(lambda v: json.dumps(v).encode()),
    SHAPES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40).filter(lambda b: b.decode("utf-8", "ignore").encode() == b),
)


@settings(max_examples=40)
@given(messages=st.lists(st.tuples(st.sampled_from(KINDS), GARBAGE), min_size=1, max_size=6))
async def test_garbage_on_the_channels_is_skipped(server: RedisServer,
                                                  messages: list[tuple[str, bytes]]) -> None:
    """Whatever UTF-8 someone else publishes on the three channels, the listener goes on, hands
    its callbacks only well-formed values, and the good notices sent afterwards arrive."""
    async with listening(server.url) as ear:
        for kind, payload in messages:
            await ear.publish(kind, payload)
        await ear.good_ones_arrive()
        well_formed(ear.heard)
        assert ear.heard.kept_calls == 1  # never started over


def _big_list(size: int) -> str:
    return "[" + "0," * (size // 2) + "0]"


NASTY: list[tuple[str, bytes | str]] = [
    ("typing", b""),
    ("typing", "null"),
    ("typing", "[]"),
    ("typing", "{}"),
    ("typing", '"a string"'),
    ("typing", "0"),
    ("typing", "1e999"),
    ("typing", "NaN"),
    ("typing", "{not json"),
    ("typing", '{"worker": null}'),
    ("typing", '{"worker": "x", "room": "lobby"}'),
    ("typing", '{"worker": "x", "room": "lobby", "user": "guest:ann"}'),
    ("typing", '{"worker": "x", "room": "lobby", "user": ["guest:ann", "Ann"]}'),
    ("typing", '{"worker": "x", "room": "lobby", "user": {"name": "no id"}}'),
    ("typing", '{"worker": "x", "room": "lobby", "user": {"id": "guest:ann"}}'),
    ("typing", '{"room": "lobby", "user": {"id": "guest:ann", "name": "Ann"}}'),
    ("typing", '{"worker": "x", "user": {"id": "guest:ann", "name": "Ann"}}'),
    ("typing", '{"worker": "me", "room": "lobby", "user": {"id": "guest:ann", "name": "Ann"}}'),
    ("typing", '{"worker": "x", "room": "lobby", "user": {"id": "guest:ann", "name": "Ann"}'),
    ("typing", "\x00" * 1000),
    ("typing", "\ufeff{}"),
    ("typing", "x" * 2_000_000),
    ("typing", _big_list(2_000_000)),
    ("typing", '{"worker": "x", "room": "lobby", "user": ' + _big_list(1_000_000) + "}"),
    ("ended", b""),
    ("ended", "null"),
    ("ended", "{}"),
    ("ended", "[]"),
    ("ended", '{"sessions": {}}'),
    ("ended", '{"users": {}}'),
    ("ended", '{"sessions": [], "users": {}}'),
    ("ended", '{"sessions": {}, "users": null}'),
    ("ended", '{"sessions": {"s": "1"}, "users": {}}'),
    ("ended", '{"sessions": {"s": true}, "users": {}}'),
    ("ended", '{"sessions": {"s": 1.5}, "users": {}}'),
    ("ended", '{"sessions": {"s": null}, "users": {}}'),
    ("ended", '{"sessions": {}, "users": {"u": 1e999}}'),
    ("ended", '{"sessions": {}, "users": {"u": NaN}}'),
    ("ended", '{"sessions": {"s": ' + "9" * 5000 + '}, "users": {}}'),  # past int's digit limit
    ("ended", '{"sessions": {"s": 1}, "users": {}'),
    ("ended", "[" * 100_000),
    ("ended", "x" * 2_000_000),
    ("ended", '{"sessions": ' + _big_list(2_000_000) + ', "users": {}}'),
    ("forgotten", "[" * 100_000),
]


@pytest.mark.parametrize(("kind", "payload"), NASTY,
                         ids=[f"{kind}-{i}" for i, (kind, _) in enumerate(NASTY)])
async def test_nasty_notices_are_skipped(server: RedisServer, kind: str,
                                         payload: bytes | str) -> None:
    """Malformed, wrong-shaped, deep, huge: nothing reaches the callbacks but the good notices
    sent afterwards (``forgotten`` takes any text as a user id: that one is passed on)."""
    async with listening(server.url) as ear:
        await ear.publish(kind, payload)
        typing, ended, forgotten = await ear.send_good()
        heard = ear.heard
        await ear.until(lambda: heard.typing[-1:] == [typing] and heard.ended[-1:] == [ended]
                        and heard.forgotten[-1:] == [forgotten])
        assert heard.typing == [typing]
        assert heard.ended == [Ended(), ended]  # what was kept at the start, then the good one
        expected = [payload if isinstance(payload, str) else payload.decode()] * (kind == "forgotten")
        assert heard.forgotten == [*expected, forgotten]
        assert heard.kept_calls == 1


NOT_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b'{"worker": "x", "room": "\xff"}',
            b"\x80" * 10_000]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("payload", NOT_UTF8, ids=[f"bytes{i}" for i in range(len(NOT_UTF8))])
async def test_non_utf8_notices_are_skipped(server: RedisServer, kind: str, payload: bytes) -> None:
    """A payload that is not UTF-8, on any channel, is one message skipped: the subscription
    goes on (it is not started over) and the good notices after it arrive."""
    async with listening(server.url) as ear:
        await ear.publish(kind, payload)
        await ear.good_ones_arrive()
        assert ear.heard.kept_calls == 1


@pytest.mark.parametrize("payload", ["[" * 100_000, '{"worker": ' * 50_000],
                         ids=["arrays", "objects"])
async def test_deeply_nested_typing_notices_are_skipped(server: RedisServer, payload: str) -> None:
    """A typing notice nested too deep for the JSON parser is skipped like any malformed one."""
    async with listening(server.url) as ear:
        await ear.publish("typing", payload)
        await ear.good_ones_arrive()
        assert ear.heard.kept_calls == 1


# -- the broker's listener ----------------------------------------------------------------------


async def all_sent(*brokers: RedisBroker) -> None:
    """Wait until the typing notices the brokers spawned have been published."""
    await eventually(lambda: not any(b._sends for b in brokers))


def subscribed_all(url: str, prefix: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all([await subscribers(url, f"{prefix}:{kind}") >= n for kind in KINDS])

    return check


def typing_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "revchat.redis" and r.levelno >= logging.ERROR]


async def test_a_workers_listener_shrugs_off_garbage(
        server: RedisServer, make: Make, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """A broker's listener fed the nasty notices neither logs an error nor starts over (which
    would read the kept sessions again), and relays what the other worker sends after them."""
    caplog.set_level(logging.INFO, logger="revchat.redis")
    a, b = await make(server.url), await make(server.url)
    await eventually(lambda: len(recorder(a).ended) == len(recorder(b).ended) == 1)
    await eventually(subscribed_all(server.url, prefix, 2))
    raw = aioredis.Redis.from_url(server.url)
    try:
        for kind, payload in NASTY:
            if '"worker": "me"' not in str(payload):  # "me" is not a broker's id: that one is good
                await raw.publish(f"{prefix}:{kind}", payload)
    finally:
        await raw.aclose()
    a.typing("lobby", ANN)
    await a.forget_user(CY.id)
    await eventually(lambda: recorder(b).typing == [("lobby", ANN)] and bool(recorder(b).forgotten)
                     and recorder(b).forgotten[-1] == CY.id)
    assert typing_failures(caplog) == []
    assert len(recorder(b).ended) == 1  # the kept sessions, read once: no restart


async def test_a_workers_listener_shrugs_off_non_utf8(
        server: RedisServer, make: Make, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """Through the broker: a non-UTF-8 message on the typing channel is neither logged as a
    failure nor a reason to start the subscription over."""
    caplog.set_level(logging.INFO, logger="revchat.redis")
    a, b = await make(server.url), await make(server.url)
    await eventually(subscribed_all(server.url, prefix, 2))
    raw = aioredis.Redis.from_url(server.url)
    try:
        await raw.publish(f"{prefix}:typing", b"\xff\xfe")
    finally:
        await raw.aclose()
    a.typing("lobby", ANN)
    # Either the notice arrives, or b's listener has started over (and read the kept ones again).
    await eventually(lambda: bool(recorder(b).typing) or len(recorder(b).ended) > 1)
    assert typing_failures(caplog) == []
    assert len(recorder(b).ended) == 1
    assert recorder(b).typing == [("lobby", ANN)]


async def test_each_workers_typing_is_relayed_once_everywhere(
        server: RedisServer, make: Make, prefix: str) -> None:
    """Three workers type at once: every worker relays every notice exactly once (its own ones
    at once, never again when they come back from Redis); one signed by a stranger too."""
    workers = [await make(server.url) for _ in range(3)]
    await eventually(subscribed_all(server.url, prefix, 3))
    sent: Counter[tuple[str, User]] = Counter()
    for i in range(30):
        worker = workers[i % 3]
        notice = (f"room{i % 4}", User(f"guest:u{i}", f"U{i}"))
        worker.typing(*notice)
        sent[notice] += 1
    for i, worker in enumerate(workers):
        own = [(f"room{j % 4}", User(f"guest:u{j}", f"U{j}")) for j in range(i, 30, 3)]
        assert recorder(worker).typing[:len(own)] == own  # relayed locally, at once, in order
    stranger = ("lobby", CY)
    raw = aioredis.Redis.from_url(server.url, **OPTIONS)
    try:
        await all_sent(*workers)
        # Published after every worker's own: once a worker has it, its own came back already.
        await raw.publish(f"{prefix}:typing", json.dumps(
            {"worker": "stranger", "room": stranger[0], "user": stranger[1].as_dict()}))
    finally:
        await raw.aclose()
    sent[stranger] += 1
    for worker in workers:
        await eventually(lambda w=worker: stranger in recorder(w).typing)  # type: ignore[misc]
    for worker in workers:
        assert Counter(recorder(worker).typing) == sent
        assert recorder(worker).typing[-1] == stranger


async def test_a_notice_signed_with_a_workers_own_id_is_not_relayed_by_it(
        server: RedisServer, make: Make, prefix: str) -> None:
    """The worker id is what tells an echo: a notice carrying b's id is b's own to b, and a's
    to relay."""
    a, b = await make(server.url), await make(server.url)
    await eventually(subscribed_all(server.url, prefix, 2))
    raw = aioredis.Redis.from_url(server.url, **OPTIONS)
    try:
        await raw.publish(f"{prefix}:typing", json.dumps(
            {"worker": b.worker, "room": "lobby", "user": CY.as_dict()}))
    finally:
        await raw.aclose()
    a.typing("lobby", ANN)
    await all_sent(a)
    await eventually(lambda: recorder(b).typing == [("lobby", ANN)] and len(recorder(a).typing) == 2)
    assert sorted(recorder(a).typing, key=str) == [("lobby", ANN), ("lobby", CY)]


async def test_the_listener_resubscribes_after_redis_restarts_and_catches_up(
        own_server: RedisServer, make: Make, prefix: str) -> None:
    """Redis restarts with its data: the listener subscribes again and reads what was kept,
    including sessions ended while it was away and one whose announcement was lost."""
    b = await make(own_server.url)
    rec = recorder(b)
    await eventually(subscribed_all(own_server.url, prefix, 1))
    assert rec.ended == [Ended()]
    raw = aioredis.Redis.from_url(own_server.url, **OPTIONS)
    try:
        # Kept, but the worker that ended it died before announcing it.
        await raw.hset(f"{prefix}:ended", mapping={"s:quiet": FAR})
        loud = Ended({"loud": FAR}, {})
        await raw.hset(f"{prefix}:ended", mapping={"s:loud": FAR})
        assert await raw.publish(f"{prefix}:ended", loud.to_json()) == 1
        await eventually(lambda: rec.ended == [Ended(), loud])
    finally:
        await raw.aclose()

    await asyncio.to_thread(own_server.kill)
    await eventually(lambda: b.problem() is not None)
    await asyncio.to_thread(own_server.restart)
    raw = aioredis.Redis.from_url(own_server.url, **OPTIONS)
    try:
        # Ended on another worker as soon as Redis is back, most likely before b is listening
        # again: b gets it either way, from the channel or from what is kept.
        away = Ended({"away": FAR}, {"guest:gone": now_ms()})
        async with raw.pipeline(transaction=True) as pipe:
            pipe.hset(f"{prefix}:ended", mapping={"s:away": FAR, "u:guest:gone": away.users[
                "guest:gone"]})
            pipe.publish(f"{prefix}:ended", away.to_json())
            await pipe.execute()
        await eventually(subscribed_all(own_server.url, prefix, 1))

        def caught_up() -> bool:
            seen_sessions = {sid for e in rec.ended[2:] for sid in e.sessions}
            seen_users = {uid for e in rec.ended[2:] for uid in e.users}
            return {"quiet", "loud", "away"} <= seen_sessions and "guest:gone" in seen_users

        await eventually(caught_up)
        # It reads everything kept again: what it had been told is in the catch-up too.
        assert any(e.sessions.keys() >= {"quiet", "loud"} for e in rec.ended[2:])
        assert all(until == FAR for e in rec.ended for until in e.sessions.values())
        # And it hears the live channel again.
        after = Ended({"after": FAR}, {})
        await raw.hset(f"{prefix}:ended", mapping={"s:after": FAR})
        assert await raw.publish(f"{prefix}:ended", after.to_json()) == 1
        await eventually(lambda: rec.ended[-1] == after)
    finally:
        await raw.aclose()


async def test_the_listener_comes_back_after_redis_restarts_empty(
        own_server: RedisServer, make: Make, prefix: str) -> None:
    """Redis comes back without its data: both workers listen again, typing and deletions flow."""
    a, b = await make(own_server.url), await make(own_server.url)
    await eventually(subscribed_all(own_server.url, prefix, 2))
    await asyncio.to_thread(own_server.restart, empty=True)
    await eventually(subscribed_all(own_server.url, prefix, 2))
    await eventually(lambda: len(recorder(b).ended) >= 2)  # it read the (empty) kept list again
    assert recorder(b).ended[1:] == [Ended()] * (len(recorder(b).ended) - 1)
    a.typing("lobby", ANN)
    await a.forget_user(CY.id)
    await eventually(lambda: recorder(b).typing == [("lobby", ANN)]
                     and recorder(b).forgotten == [CY.id])


# -- RedisReader ----------------------------------------------------------------------------------


class Reading:
    """A :class:`RedisReader` on its own clients, and a way to see its XREAD blocked."""

    def __init__(self, url: str, prefix: str) -> None:
        self.name = f"reader-{secrets.token_hex(4)}"
        self.client = aioredis.Redis.from_url(url, **OPTIONS)
        self._reader = aioredis.Redis.from_url(url, client_name=self.name, **OPTIONS)
        self.history = RedisHistory(self.client, where=url, prefix=prefix)
        self.reader = RedisReader(self.client, self._reader, self.history, prefix=prefix,
                                  worker=secrets.token_hex(4))
        self.reader.block = 30.0  # in flight until something comes: the tests say what

    async def blocked(self) -> bool:
        return any(c.get("name") == self.name and c.get("cmd") == "xread" and "b" in c["flags"]
                   for c in await self.client.client_list())

    async def in_flight(self) -> asyncio.Task[list[Event]]:
        """Start a read and return once Redis has it blocked."""
        task = asyncio.create_task(self.reader.read())

        async def check() -> bool:
            if task.done():
                raise AssertionError(f"the read returned early: {task.result()!r}")
            return await self.blocked()

        await eventually(check)
        return task

    async def publish(self, room: str, *texts: str) -> list[Event]:
        return await self.history.append([Draft("message", room, ANN, 1, t) for t in texts])

    async def close(self) -> None:
        for client in (self._reader, self.client):
            await client.aclose()


@pytest.fixture
async def reading(server: RedisServer, prefix: str) -> AsyncIterator[Reading]:
    made = Reading(server.url, prefix)
    yield made
    await made.close()


def ids(events: Sequence[Event]) -> list[str]:
    return [e.id for e in events]


async def test_a_room_held_again_while_a_read_is_in_flight(reading: Reading) -> None:
    """Dropped and held again from where it was: the read in flight delivers what comes, once.
    Dropped and not held: what the read brings of the room is not delivered, nor read again.
    Held again from further back: the read in flight is ignored and the next reads from there."""
    r = reading.reader
    r.hold("r", None)
    first = await reading.publish("r", "e1", "e2")
    assert ids(await r.read()) == ids(first)

    task = await reading.in_flight()
    r.drop("r")
    r.hold("r", first[-1].id)  # what the engine does: from the last event it has
    r.drop("r")
    r.hold("r", first[-1].id)
    e3 = await reading.publish("r", "e3")
    assert ids(await task) == ids(e3)

    task = await reading.in_flight()
    r.drop("r")
    await reading.publish("r", "e4")  # while dropped
    assert await task == []
    task = await reading.in_flight()  # the room is left out now: only the wake ends this one
    e5 = await reading.publish("r", "e5")  # the XREAD does not wait on the room: it stays
    await r.wake()
    assert await task == []

    task = await reading.in_flight()
    r.hold("r", e5[-1].id)  # held again from its last stored event, then woken like the broker
    await r.wake()
    assert await task == []
    task = await reading.in_flight()
    e6 = await reading.publish("r", "e6", "e7")
    assert ids(await task) == ids(e6)

    task = await reading.in_flight()
    r.drop("r")
    r.hold("r", e3[-1].id)  # from further back: the read in flight must not deliver past it
    e8 = await reading.publish("r", "e8")
    assert await task == []
    everything = await r.read()
    assert [e.text for e in everything] == ["e4", "e5", "e6", "e7", "e8"]
    assert ids(everything)[-1] == e8[-1].id


async def test_a_read_in_flight_keeps_other_rooms_apart(reading: Reading) -> None:
    """Two rooms in one XREAD: dropping one while it is in flight leaves the other's events
    delivered, once and in order."""
    r = reading.reader
    r.hold("a", None)
    r.hold("b", None)
    task = await reading.in_flight()
    r.drop("a")
    a_events = await reading.publish("a", "a1", "a2")
    b_events = await reading.publish("b", "b1", "b2")
    got = list(await task)
    while len(got) < 2:  # the XREAD may have returned on a's events alone
        got += await r.read()
    assert ids(got) == ids(b_events)
    r.hold("a", a_events[-1].id)
    more = await reading.publish("a", "a3")
    assert ids(await r.read()) == ids(more)


ROOMS = ("a", "b", "c")
STEPS = st.lists(st.tuples(
    st.lists(st.tuples(st.sampled_from(["flip", "drop", "hold"]), st.sampled_from(ROOMS)),
             max_size=5),
    st.lists(st.tuples(st.sampled_from(ROOMS), st.integers(1, 3)), max_size=4)),
    min_size=1, max_size=5)


@settings(max_examples=15)
@given(steps=STEPS)
async def test_holding_and_dropping_under_a_read_in_flight_delivers_each_event_once(
        server: RedisServer,
        steps: list[tuple[list[tuple[str, str]], list[tuple[str, int]]]]) -> None:
    """Rounds of: rooms dropped, held again or flipped (dropped and held at once) while an XREAD
    is in flight, the engine's way (from the room's last stored event); then events published.
    Each room delivers exactly the events published while it was held, once, in stream order."""
    reading = Reading(server.url, new_prefix())
    r = reading.reader
    held: set[str] = set()
    last: dict[str, str | None] = dict.fromkeys(ROOMS)
    expected: dict[str, list[str]] = {room: [] for room in ROOMS}
    delivered: dict[str, list[str]] = {room: [] for room in ROOMS}

    def take(events: Sequence[Event]) -> None:
        for event in events:
            delivered[event.room].append(event.id)

    try:
        for changes, publishes in steps:
            task = await reading.in_flight()
            snapshot = set(held)  # the rooms this XREAD waits on
            woken = False
            for op, room in changes:
                if op in ("flip", "drop") and room in held:
                    r.drop(room)
                    held.discard(room)
                if op in ("flip", "hold") and room not in held:
                    r.hold(room, last[room])
                    held.add(room)
                    woken = True
            if woken:
                await r.wake()
            for room, n in publishes:
                events = await reading.publish(room, *(f"{room}{i}" for i in range(n)))
                last[room] = events[-1].id
                if room in held:
                    expected[room] += ids(events)
            if not woken and not any(room in snapshot for room, _ in publishes):
                await r.wake()  # nothing else ends this read
            take(await task)
            async with asyncio.timeout(TIMEOUT):
                while any(len(delivered[room]) < len(expected[room]) for room in ROOMS):
                    take(await r.read())
        task = await reading.in_flight()
        await r.wake()
        take(await task)  # anything left over would show here
        assert delivered == expected
    finally:
        await reading.close()
