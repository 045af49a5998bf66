"""Hostile and unlucky clients against a real server on loopback: what one client sends or does
never stops, slows or corrupts the server for anyone else (``docs/protocol.md``, README
"Limits")."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from revchat.core.events import MAX_ID_PART
from tests.support.live import Live, frame, frame_of, live_server, make_settings, say
from tests.support.redis_server import RedisServer, redis_server
from tests.support.waiting import eventually

SURROGATE = '{"type": "say", "text": "\\ud800"}'


STORES = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]


def store_settings(store: str, tmp_path: Path, redis: RedisServer | None, **changes: Any) -> Any:
    if store == "sqlite":
        changes["history"] = f"sqlite:///{tmp_path}/h.db"
    if store == "redis":
        assert redis is not None
        changes["broker"] = redis.url
    return make_settings(tmp_path, **changes)


@pytest.fixture(params=STORES)
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Live]:
    if request.param == "redis":
        with redis_server() as server:
            async with live_server(store_settings("redis", tmp_path, server)) as live:
                yield live
    else:
        async with live_server(store_settings(request.param, tmp_path, None)) as live:
            yield live


# -- frames that cannot be stored ---------------------------------------------------------------


async def test_a_lone_surrogate_is_refused_and_the_room_goes_on(any_store: Live) -> None:
    """The frame that once stopped every room is answered with bad_request; after it, messages
    are stored and delivered to everyone and /healthz is ok (memory, SQLite and Redis)."""
    live = any_store
    ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
    async with live.connect("lobby", ann) as a, live.connect("lobby", bob) as b:
        await frame(a)
        await frame(b)
        await a.send(SURROGATE)
        error = await frame_of(a, "error")
        assert error["code"] == "bad_request"
        await say(a, "still here")
        assert (await frame_of(a, "message"))["text"] == "still here"
        assert (await frame_of(b, "message"))["text"] == "still here"
        await say(b, "me too")
        assert (await frame_of(a, "message"))["text"] == "me too"
    async with httpx.AsyncClient(base_url=live.url) as client:
        health = await client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"


async def test_nesting_too_deep_is_an_error_frame(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    """10,000 nested brackets get bad_request, the socket stays open, the log holds no traceback."""
    cookie = await live.sign_in("Ann")
    async with live.connect("lobby", cookie) as ws:
        await frame(ws)
        await ws.send("[" * 10_000 + "]" * 10_000)
        assert (await frame_of(ws, "error"))["code"] == "bad_request"
        await ws.send('{"type": "\\ud800"}')  # a type that, echoed as is, could not be sent
        assert (await frame_of(ws, "error"))["code"] == "bad_request"
        await say(ws, "fine")
        assert (await frame_of(ws, "message"))["text"] == "fine"
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


async def test_healthz_is_503_when_the_publisher_stops(live: Live) -> None:
    """If the publishing task ends, /healthz says so and a message is refused at once with an
    error frame instead of hanging."""
    commits = live.engine.broker._commits  # type: ignore[attr-defined]
    commits._task.cancel()
    await asyncio.sleep(0)
    async with httpx.AsyncClient(base_url=live.url) as client:
        health = await client.get("/healthz")
    assert health.status_code == 503 and health.json()["problem"].startswith("publisher")
    cookie = await live.sign_in("Ann")
    async with live.connect("lobby", cookie) as ws:
        await frame(ws)
        await say(ws, "anyone?")
        assert (await frame_of(ws, "error"))["code"] == "unavailable"


@pytest.mark.redis
async def test_healthz_is_503_when_the_redis_reader_stops(redis: RedisServer, tmp_path: Path) -> None:
    """With Redis, a reader task that ended is a 503 naming the broker, without its address."""
    async with live_server(store_settings("redis", tmp_path, redis)) as live:
        reader = live.engine.broker._tasks["reader"]  # type: ignore[attr-defined]
        while not reader.done():  # redis-py on 3.11 can swallow a cancellation: insist
            reader.cancel()
            await asyncio.wait((reader,), timeout=0.5)
        async with httpx.AsyncClient(base_url=live.url) as client:
            health = await client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["problem"] == "broker: the reader has stopped"
        assert str(redis.port) not in health.text


# -- sockets that go away -----------------------------------------------------------------------


async def test_a_client_gone_while_its_join_is_stored_is_no_ghost(tmp_path: Path) -> None:
    """SQLite is held by another writer while a client's join waits to be stored; the client
    drops its TCP connection. Once the write goes through, it is not a member, and the others
    saw its join followed by its leave."""
    db = tmp_path / "h.db"
    async with live_server(make_settings(tmp_path, history=f"sqlite:///{db}")) as live:
        watcher = await live.sign_in("Watcher")
        ghost = await live.sign_in("Ghost")
        async with live.connect("lobby", watcher) as w:
            me = (await frame(w))["you"]["id"]
            await frame_of(w, "join")
            blocker = sqlite3.connect(db, timeout=5, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")  # the server's next write waits for this one
            try:
                g = await live.connect("lobby", ghost).__aenter__()
                welcome = await frame(g)
                assert welcome["type"] == "welcome"
                g.transport.abort()  # gone, no close frame, while its join waits for the lock
                await eventually(lambda: live.engine.connections == 1)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            seen = [await frame(w), await frame(w)]
            assert [(f["type"], f["user"]["name"]) for f in seen] == [("join", "Ghost"),
                                                                      ("leave", "Ghost")]
            assert set(live.engine.rooms["lobby"].members) == {me}
            assert [m.id for m in await live.engine.broker.members("lobby")] == [me]
        await eventually(lambda: not live.engine.rooms)
        assert await live.engine.broker.members("lobby") == []


@pytest.mark.redis
async def test_a_client_gone_while_redis_counts_it_is_no_ghost(redis: RedisServer,
                                                               tmp_path: Path) -> None:
    """Redis stops taking writes (CLIENT PAUSE) while a client's presence is counted; the client
    drops. When Redis goes on, the room's members are only those still connected, and the others
    saw the ghost come and go, or nothing of it."""
    async with live_server(store_settings("redis", tmp_path, redis)) as live:
        watcher, ghost = await live.sign_in("Watcher"), await live.sign_in("Ghost")
        async with live.connect("lobby", watcher) as w:
            await frame(w)
            await frame_of(w, "join")
            pause = await asyncio.to_thread(redis_command, redis.port, "CLIENT", "PAUSE", "1500",
                                            "WRITE")
            assert pause.startswith(b"+OK")
            g = await live.connect("lobby", ghost).__aenter__()
            ghost_id = (await frame(g))["you"]["id"]
            g.transport.abort()
            await eventually(lambda: live.engine.connections == 1)
            await eventually(lambda: live.engine.quota.held(ghost_id) == 0
                             and not live.engine._tasks, timeout=10)
            # After the pause: what the watcher saw of the ghost, up to a marker of its own.
            await say(w, "marker")
            seen = []
            while (event := await frame(w, timeout=10))["type"] != "message":
                seen.append((event["type"], event["user"]["name"]))
            assert seen in ([], [("join", "Ghost"), ("leave", "Ghost")])
            members = await live.engine.broker.members("lobby")
            assert [m.name for m in members] == ["Watcher"]
            assert [u.name for u in live.engine.rooms["lobby"].members.values()] == ["Watcher"]


def redis_command(port: int, *words: str) -> bytes:
    """Send one command to a Redis as RESP and return its first reply line."""
    parts = [f"*{len(words)}\r\n".encode()] + [f"${len(w)}\r\n{w}\r\n".encode() for w in words]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"".join(parts))
        return sock.recv(4096)


@pytest.mark.parametrize("step", ["during the headers", "after the upgrade request",
                                  "before reading the welcome", "while resuming"])
async def test_a_client_that_vanishes_at_any_step_leaves_no_trace(live: Live, step: str) -> None:
    """A client that closes its TCP connection at any step of the handshake and join leaves no
    socket, no member and no room behind, and another client then joins as usual."""
    cookie = await live.sign_in("Ann")
    request = (f"GET /rooms/lobby/socket{'?since=1' if step == 'while resuming' else ''} HTTP/1.1\r\n"
               f"Host: 127.0.0.1:{live.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               f"Cookie: revchat_session={cookie}\r\n\r\n").encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    if step == "during the headers":
        writer.write(request[:40])
    else:
        writer.write(request)
        if step != "after the upgrade request":
            await reader.readuntil(b"\r\n\r\n")  # the 101; the welcome follows
    await writer.drain()
    writer.transport.abort()
    await eventually(lambda: live.engine.connections == 0 and not live.engine.rooms)
    assert await live.engine.broker.members("lobby") == []
    other = await live.sign_in("Bob")
    async with live.connect("lobby", other) as ws:
        welcome = await frame(ws)
        assert [m["name"] for m in welcome["members"]] in ([], ["Bob"])
        assert (await frame_of(ws, "join"))["user"]["name"] == "Bob"


# -- what it costs to become someone --------------------------------------------------------


async def test_sign_ins_per_address_are_limited(tmp_path: Path) -> None:
    """--signin-rate N: the N+1th guest sign-in in a minute from one address is a 429 without a
    session; X-Forwarded-For changes nothing unless proxies are trusted."""
    async with live_server(make_settings(tmp_path, signin_rate=3)) as live, \
            httpx.AsyncClient(base_url=live.url) as client:
        for i in range(3):
            ok = await client.post("/auth/guest", data={"name": f"n{i}"},
                                   headers={"x-forwarded-for": f"10.0.0.{i}"})
            assert ok.status_code == 302
        refused = await client.post("/auth/guest", data={"name": "one more"},
                                    headers={"x-forwarded-for": "10.9.9.9"})
        assert refused.status_code == 429 and "revchat_session" not in refused.cookies
        assert "Too many sign-ins" in refused.text


async def test_trusted_proxies_give_each_client_its_own_budget(tmp_path: Path) -> None:
    """Behind one trusted proxy, the budget is per X-Forwarded-For address."""
    async with live_server(make_settings(tmp_path, signin_rate=1, trusted_proxies=1)) as live, \
            httpx.AsyncClient(base_url=live.url) as client:
        for address in ("10.0.0.1", "10.0.0.2"):
            first = await client.post("/auth/guest", data={"name": "a"},
                                      headers={"x-forwarded-for": address})
            assert first.status_code == 302
        again = await client.post("/auth/guest", data={"name": "a"},
                                  headers={"x-forwarded-for": "10.0.0.1"})
        assert again.status_code == 429


async def test_sockets_per_user_are_limited(tmp_path: Path) -> None:
    """--user-sockets 2: a third socket of one user closes with 1008 and says why; other users
    are not affected."""
    async with live_server(make_settings(tmp_path, user_sockets=2)) as live:
        ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
        async with live.connect("lobby", ann) as one, live.connect("other", ann) as two:
            await frame(one)
            await frame(two)
            async with live.connect("third", ann) as three:
                with pytest.raises(ConnectionClosed) as closed:
                    await frame(three)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert "sockets open" in closed.value.rcvd.reason
            async with live.connect("lobby", bob) as b:
                assert (await frame(b))["type"] == "welcome"


async def test_new_sockets_per_user_per_minute_are_limited(tmp_path: Path) -> None:
    """--user-sockets 2 also means two new sockets a minute: a client reconnecting in a loop is
    refused with 1008 even though it holds none open."""
    async with live_server(make_settings(tmp_path, user_sockets=2)) as live:
        ann = await live.sign_in("Ann")
        for _ in range(2):
            async with live.connect("lobby", ann) as ws:
                me: str = (await frame(ws))["you"]["id"]
            await eventually(lambda: live.engine.quota.held(me) == 0  # noqa: B023
                             and not live.engine.rooms)
        async with live.connect("lobby", ann) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await frame(ws)
        assert closed.value.rcvd is not None and "too often" in closed.value.rcvd.reason


# -- sessions ended on the server -----------------------------------------------------------


async def test_sign_out_ends_the_session_everywhere(live: Live) -> None:
    """After sign-out, a kept copy of the cookie opens no page, no history and no socket, and the
    session's open socket is closed with 4401 "signed out"."""
    cookie = await live.sign_in("Ann")
    headers = {"cookie": f"revchat_session={cookie}"}
    async with live.connect("lobby", cookie) as ws:
        await frame(ws)
        async with httpx.AsyncClient(base_url=live.url, headers=headers) as client:
            out = await client.post("/auth/logout")
            assert out.status_code == 302
            with pytest.raises(ConnectionClosed) as closed:
                await frame_of(ws, "never")
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
            assert (await client.get("/rooms/lobby")).status_code == 302
            assert (await client.get("/rooms/lobby/history")).status_code == 401
            assert "Welcome" not in (await client.get("/")).text
    with pytest.raises(InvalidStatus) as refused:
        async with live.connect("lobby", cookie):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.redis
async def test_sign_out_on_one_server_ends_it_on_another(redis: RedisServer, tmp_path: Path) -> None:
    """Two servers share Redis: signing out on one closes the session's socket on the other and
    the other refuses the cookie from then on."""
    async with live_server(store_settings("redis", tmp_path / "a", redis)) as one, \
            live_server(store_settings("redis", tmp_path / "b", redis)) as two:
        cookie = await one.sign_in("Ann")
        async with two.connect("lobby", cookie) as ws:
            await frame(ws)
            async with httpx.AsyncClient(base_url=one.url) as client:
                out = await client.post("/auth/logout", headers={"cookie": f"revchat_session={cookie}"})
                assert out.status_code == 302
            with pytest.raises(ConnectionClosed) as closed:
                await frame_of(ws, "never", timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        async with httpx.AsyncClient(base_url=two.url) as client:
            page = await client.get("/rooms/lobby", headers={"cookie": f"revchat_session={cookie}"})
        assert page.status_code == 302


@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_session_ended_stays_ended_after_a_restart(request: pytest.FixtureRequest,
                                                            store: str, tmp_path: Path) -> None:
    """With SQLite or Redis as the history, a signed-out session is still refused by a new
    server process (the list is kept with the history), while another session works."""
    redis = request.getfixturevalue("redis") if store == "redis" else None
    settings = store_settings(store, tmp_path, redis)
    async with live_server(settings) as live:
        ended, kept = await live.sign_in("Ann"), await live.sign_in("Bob")
        async with httpx.AsyncClient(base_url=live.url) as client:
            await client.post("/auth/logout", headers={"cookie": f"revchat_session={ended}"})
    async with live_server(settings) as live, httpx.AsyncClient(base_url=live.url) as client:
        refused = await client.get("/rooms/lobby", headers={"cookie": f"revchat_session={ended}"})
        opened = await client.get("/rooms/lobby", headers={"cookie": f"revchat_session={kept}"})
    assert refused.status_code == 302 and opened.status_code == 200


# -- HTTP input that is not what it should be ---------------------------------------------------


def raw_get(port: int, path: str, cookie: bytes) -> bytes:
    """A GET with a cookie header of raw bytes (httpx would refuse to send them)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Cookie: revchat_session=" + cookie + b"\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("cookie", [b"\xff\xfe", "caf\u00e9.x".encode(), b"a.b.c", b"\x00",
                                    b"." * 9000, "é".encode() * 100])
async def test_odd_bytes_in_the_cookie_read_as_signed_out(live: Live, cookie: bytes) -> None:
    """A cookie of odd bytes is no session: the sign-in page, not a 500."""
    answer = await asyncio.to_thread(raw_get, live.port, "/", cookie)
    status = int(answer.split(b" ", 2)[1])
    assert status == 200 or 400 <= status < 500, answer[:200]
    if status == 200:
        assert b"Welcome" not in answer


@pytest.mark.parametrize("query", ["limit=²", "limit=-1", "limit=0", "limit=201", "limit=1e3",
                                   f"before={MAX_ID_PART + 1}", "before=1-2-3", "before=x",
                                   f"before={MAX_ID_PART}-{MAX_ID_PART + 1}"])
async def test_bad_history_queries_are_400(any_store: Live, query: str) -> None:
    """Non-ASCII digits, negative or huge numbers are a 400 naming no storage detail, on every
    store (Redis once answered an id beyond 64 bits with a 503 naming its address)."""
    cookie = await any_store.sign_in("Ann")
    async with httpx.AsyncClient(base_url=any_store.url,
                                 headers={"cookie": f"revchat_session={cookie}"}) as client:
        response = await client.get(f"/rooms/lobby/history?{query}")
    assert response.status_code == 400
    for detail in ("redis", "sqlite", ".db", "127.0.0.1:"):
        assert detail not in response.text.lower()


async def test_the_largest_ids_are_accepted(any_store: Live) -> None:
    """Ids at the 64-bit limit are still ids: an empty page, not an error."""
    cookie = await any_store.sign_in("Ann")
    async with httpx.AsyncClient(base_url=any_store.url,
                                 headers={"cookie": f"revchat_session={cookie}"}) as client:
        response = await client.get(f"/rooms/lobby/history?before={2**63 - 1}")
    assert response.status_code == 200 and json.loads(response.text)["events"] == []


async def test_metrics_count_history_writes_and_unexpected_errors(live: Live) -> None:
    """/metrics counts each committed batch and each event stored; no error was unexpected."""
    def value(text: str, name: str) -> float:
        return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))

    async with httpx.AsyncClient(base_url=live.url) as client:
        before = (await client.get("/metrics")).text
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie) as ws:
            await frame(ws)
            await say(ws, "counted")
            await frame_of(ws, "message")
        after = (await client.get("/metrics")).text
    assert value(after, "revchat_history_writes_total") >= value(before, "revchat_history_writes_total") + 1
    assert value(after, "revchat_history_events_total") >= value(before, "revchat_history_events_total") + 2
    assert value(after, "revchat_unexpected_errors_total") == 0


def ping_flood(port: int, cookie: str, limit: int) -> tuple[int, str]:
    """Open a socket, then send pings without ever reading: how many bytes the server took,
    and how it ended ("closed" by the server, "blocked": it stopped reading, or "limit")."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall((f"GET /rooms/lobby/socket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                      f"Cookie: revchat_session={cookie}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101")
        mask = b"\x01\x02\x03\x04"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"p" * 125))
        block = (bytes((0x89, 0x80 | 125)) + mask + payload) * 512
        sock.settimeout(2.0)
        sent = 0
        try:
            while sent < limit:
                sent += sock.send(block)
        except TimeoutError:
            return sent, "blocked"
        except OSError:  # reset or broken pipe: the server closed it
            return sent, "closed"
        return sent, "limit"


async def test_a_client_that_pings_and_never_reads_is_bounded(live: Live) -> None:
    """Pings from a client that reads nothing: their pongs wait in the socket's bounded queue,
    not in a task each, and the socket is closed once the queue is full; others still chat."""
    flooder = await live.sign_in("Flood")
    sent, ended = await asyncio.to_thread(ping_flood, live.port, flooder, 256 * 1024 * 1024)
    assert ended != "limit", f"the server read all {sent} bytes of pings and is still reading"
    assert len(asyncio.all_tasks()) < 200
    ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
    async with live.connect("other", ann) as a, live.connect("other", bob) as b:
        await frame(a)
        await frame(b)
        await say(a, "unaffected")
        assert (await frame_of(b, "message"))["text"] == "unaffected"


async def test_a_clients_ping_is_answered_not_taken_for_a_message(live: Live) -> None:
    """A ping from the client gets its pong and no error frame (it once came back as "frames
    must be JSON text, not binary")."""
    cookie = await live.sign_in("Ann")
    async with live.connect("lobby", cookie) as ws:
        await frame(ws)
        await frame_of(ws, "join")
        for _ in range(3):
            await asyncio.wait_for(await ws.ping(), 5)
        await say(ws, "after the pings")
        assert (await frame(ws))["type"] == "message"


async def test_a_lost_cancellation_leaves_no_ghost(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client drops while its subscription is under way and the handler's cancellation is
    lost (redis-py on Python 3.11 swallows one that lands inside a command): the handler still
    ends, and the user is no member."""
    real = live.engine.subscribe
    store, lost, subscribed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def stubborn(*args: Any, **kwargs: Any) -> Any:
        async def slow() -> Any:
            await store.wait()  # a store that is slow to answer
            return await real(*args, **kwargs)

        task = asyncio.ensure_future(slow())
        task.add_done_callback(lambda _: subscribed.set())
        while True:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                lost.set()
                continue  # lost, as inside redis-py

    monkeypatch.setattr(live.engine, "subscribe", stubborn)
    cookie = await live.sign_in("Ghost")
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write((f"GET /rooms/lobby/socket HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  f"Cookie: revchat_session={cookie}\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()
    await asyncio.wait_for(lost.wait(), 5)  # the handler was cancelled, and it did not stick
    store.set()
    await asyncio.wait_for(subscribed.wait(), 5)  # the subscription came back to the handler
    await eventually(lambda: live.engine.connections == 0 and not live.engine.rooms)
    assert await live.engine.broker.members("lobby") == []


async def test_a_body_dripped_byte_by_byte_is_cut_off(tmp_path: Path) -> None:
    """Headers sent at once, then the body a byte at a time: the whole request has the header
    timeout from its first byte, so the connection is answered 408 and closed, not held."""
    async with live_server(make_settings(tmp_path, header_timeout=1.0)) as live:
        reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
        writer.write(b"POST /auth/guest HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n\r\nname=")
        started = asyncio.get_running_loop().time()
        answer = b""
        async with asyncio.timeout(20):
            while not reader.at_eof():
                writer.write(b"a")  # one byte at a time, well within Sanic's own idle timer
                try:
                    answer += await asyncio.wait_for(reader.read(65536), 0.3)
                except TimeoutError:
                    continue
                except ConnectionError:
                    break
        waited = asyncio.get_running_loop().time() - started
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408") or answer == b"", answer[:100]
        assert waited < 10, f"the connection was held {waited:.1f} s"


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/x-www-form-urlencoded", b"\xff=\xff"),
    ("multipart/form-data", b"--x\r\nContent-Disposition: form-data; name=name\r\n\r\nAnn\r\n--x--"),
    ("text/plain", b"name=Ann"),
])
async def test_forms_that_cannot_be_read_are_400_without_a_traceback(
    live: Live, caplog: pytest.LogCaptureFixture, content_type: str, body: bytes
) -> None:
    """A body that is not a URL-encoded UTF-8 form is a 400 with the form again, and nothing of
    it reaches the log as an error."""
    async with httpx.AsyncClient(base_url=live.url) as client:
        response = await client.post("/auth/guest", content=body,
                                     headers={"content-type": content_type})
        missing = await client.get("/static/%2e%2e/nothing-here")
    assert response.status_code == 400 and "could not be read" in response.text
    assert missing.status_code == 404
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
