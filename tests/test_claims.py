"""What README.md and docs/protocol.md promise that no other test would notice breaking: the store
down at the handshake, --redis-prefix, the limits across rooms and per socket, scroll-back's
budget, and what the history keeps — each against a real server on loopback (and a real
redis-server where Redis is named)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import websockets
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed

from revchat.backends.sqlite import SQLiteHistory
from revchat.core import codes
from revchat.core.events import Draft, ErrorCode, User
from revchat.core.sessions import SESSION_COOKIE
from revchat.settings.config import load
from tests.support.fake_facebook import fake_facebook
from tests.support.live import Live, frame, frame_of, live_server, make_settings, say
from tests.support.redis_server import RedisServer
from tests.support.waiting import eventually


async def healthz(live: Live) -> httpx.Response:
    async with httpx.AsyncClient(base_url=live.url) as client:
        return await client.get("/healthz")


async def metric(live: Live, name: str) -> float:
    async with httpx.AsyncClient(base_url=live.url) as client:
        text = (await client.get("/metrics")).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


async def closed_with(ws: Any) -> tuple[int | None, str | None]:
    """Read until the server closes the socket; its close code and reason."""
    with pytest.raises(ConnectionClosed):
        while True:
            await frame(ws, timeout=10)
    return ws.close_code, ws.close_reason


UNAVAILABLE = codes.UNAVAILABLE.args


# -- the store down when a socket opens -----------------------------------------------------------


@pytest.mark.redis
async def test_redis_down_new_sockets_close_as_unavailable_until_it_is_back(
        redis: RedisServer, tmp_path: Path) -> None:
    """Redis killed: a new socket (to a room this worker must read) closes with 4503 "service
    unavailable, try again later", /healthz is 503 naming the broker without its address,
    revchat_broker_up is 0, a say is an unavailable error counted as a history failure, and
    signing out is a 503 that keeps the cookie. Redis back: all of it works again."""
    async with live_server(make_settings(tmp_path, broker=redis.url)) as live:
        ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
        async with live.connect("lobby", ann) as a:
            await frame_of(a, "join")
            await asyncio.to_thread(redis.kill)
            await eventually(lambda: live.engine.broker.problem() is not None)
            async with live.connect("other", bob) as refused:
                assert await closed_with(refused) == UNAVAILABLE
            health = await healthz(live)
            assert health.status_code == 503
            assert health.json()["status"] == "unavailable"
            assert health.json()["problem"].startswith("broker")
            assert str(redis.port) not in health.text
            assert await metric(live, "revchat_broker_up") == 0
            failures = await metric(live, "revchat_history_failures_total")
            await say(a, "while down")
            assert (await frame_of(a, "error", timeout=15))["code"] == "unavailable"
            assert await metric(live, "revchat_history_failures_total") == failures + 1
            async with httpx.AsyncClient(base_url=live.url) as client:
                out = await client.post("/auth/logout", headers={
                    "cookie": f"revchat_session={bob}", "accept": "text/html"})
            assert out.status_code == 503 and "try again" in out.text
            assert "revchat_session" not in out.headers.get("set-cookie", "")

            await asyncio.to_thread(redis.start)
            await eventually(lambda: live.engine.broker.problem() is None, timeout=30)
            assert (await healthz(live)).status_code == 200
            assert await metric(live, "revchat_broker_up") == 1
            async with live.connect("other", bob) as b:  # the cookie kept still works
                assert (await frame(b))["type"] == "welcome"
                await say(b, "back")
                assert (await frame_of(b, "message", timeout=15))["text"] == "back"


@pytest.mark.redis
async def test_redis_down_a_resume_that_needs_the_stream_closes_as_unavailable(
        redis: RedisServer, tmp_path: Path) -> None:
    """Redis killed: reconnecting with a ?since= older than what the worker holds needs a read of
    the stream, so the socket closes with 4503 (not a welcome without the missed events)."""
    async with live_server(make_settings(tmp_path, broker=redis.url, rate=0.0)) as live:
        ann = await live.sign_in("Ann")
        async with live.connect("lobby", ann) as a:
            first = await frame_of(a, "join")
            for i in range(210):  # past the 200 a held room caches before it trims to 100
                await say(a, f"m{i}")
            for _ in range(210):
                await frame_of(a, "message")
            await asyncio.to_thread(redis.kill)
            await eventually(lambda: live.engine.broker.problem() is not None)
            async with live.connect("lobby", ann, since=first["id"]) as again:
                assert await closed_with(again) == UNAVAILABLE


async def test_history_unreadable_new_sockets_close_as_unavailable(tmp_path: Path) -> None:
    """The SQLite history lost (its connection closed under the server): a new socket closes with
    4503, /healthz is 503 naming the history but not its path; open again, all works."""
    db = tmp_path / "h.db"
    async with live_server(make_settings(tmp_path, history=f"sqlite:///{db}")) as live:
        cookie = await live.sign_in("Ann")
        history = live.engine.broker.history
        await history.close()
        try:
            async with live.connect("lobby", cookie) as ws:
                assert await closed_with(ws) == UNAVAILABLE
            health = await healthz(live)
            assert health.status_code == 503
            assert health.json()["problem"] == "history: it cannot be read"
            assert str(db) not in health.text and "h.db" not in health.text
        finally:
            await history.open()
        assert (await healthz(live)).status_code == 200
        async with live.connect("lobby", cookie) as ws:
            assert (await frame(ws))["type"] == "welcome"


# -- --redis-prefix ------------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_prefix_keeps_deployments_apart(redis: RedisServer, tmp_path: Path) -> None:
    """Two servers on one Redis with --redis-prefix a and b: the same room name holds different
    rooms (no shared messages, members or history) and every key either writes starts with its
    prefix; with the same prefix they do share the room."""
    a_settings = make_settings(tmp_path / "a", broker=redis.url, redis_prefix="deploy-a")
    b_settings = make_settings(tmp_path / "b", broker=redis.url, redis_prefix="deploy-b")
    async with live_server(a_settings) as one, live_server(b_settings) as two:
        ann, bob = await one.sign_in("Ann"), await two.sign_in("Bob")
        async with one.connect("lobby", ann) as a:
            await frame_of(a, "join")
            await say(a, "only on a")
            await frame_of(a, "message")
            async with two.connect("lobby", bob) as b:
                welcome = await frame(b)
                assert welcome["members"] == [] and welcome["archive"] == []
                await frame_of(b, "join")
                await say(b, "only on b")
                assert (await frame_of(b, "message"))["text"] == "only on b"
                await say(a, "a again")
                assert (await frame_of(a, "message"))["text"] == "a again"
                async with httpx.AsyncClient(base_url=two.url) as client:
                    page = (await client.get("/rooms/lobby/history", headers={
                        "cookie": f"revchat_session={bob}"})).json()
                assert [e["text"] for e in page["events"] if e["type"] == "message"] == ["only on b"]
        store = Redis.from_url(redis.url, decode_responses=True)
        try:
            keys = [str(k) for k in await store.keys("*")]
        finally:
            await store.aclose()
        assert any(k.startswith("deploy-a:") for k in keys)
        assert any(k.startswith("deploy-b:") for k in keys)
        assert all(k.startswith(("deploy-a:", "deploy-b:")) for k in keys), keys
    # the control: the same prefix is the same deployment
    async with live_server(make_settings(tmp_path / "c", broker=redis.url,
                                         redis_prefix="deploy-a")) as three:
        cy = await three.sign_in("Cy")
        async with three.connect("lobby", cy) as c:
            welcome = await frame(c)
            assert "only on a" in [e["text"] for e in welcome["archive"]]


# -- limits across rooms and per socket ---------------------------------------------------------


async def test_user_rate_limits_a_user_across_rooms(tmp_path: Path) -> None:
    """--user-rate (bursts of twice --burst): one message in each of five rooms, each room's own
    budget untouched, and the fifth is refused; another user is not limited by it."""
    async with live_server(make_settings(tmp_path, rate=100.0, burst=2, user_rate=0.01)) as live:
        ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
        outcomes = []
        for i in range(5):
            async with live.connect(f"room{i}", ann) as ws:
                await frame_of(ws, "join")
                await say(ws, f"in room{i}")
                got = await frame(ws)
                outcomes.append(got["type"] if got["type"] == "message" else got["code"])
        assert outcomes == ["message"] * 4 + ["rate_limited"]
        async with live.connect("room4", bob) as ws:
            await frame_of(ws, "join")
            await say(ws, "bob is fine")
            assert (await frame_of(ws, "message"))["text"] == "bob is fine"


async def test_frame_rate_reads_a_fast_socket_slowly_and_drops_nothing(tmp_path: Path) -> None:
    """--frame-rate 10: thirty frames sent at once are all handled, in order, but the thirtieth no
    sooner than a second after the first (a burst of twenty, then ten a second)."""
    async with live_server(make_settings(tmp_path, rate=0.0, frame_rate=10.0)) as live:
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie) as ws:
            await frame_of(ws, "join")
            started = time.monotonic()
            texts = [f"f{i}" for i in range(30)]
            for text in texts:
                await say(ws, text)
            got = [(await frame_of(ws, "message", timeout=15))["text"] for _ in texts]
            elapsed = time.monotonic() - started
    assert got == texts
    assert elapsed >= (30 - 20) / 10 - 0.05, f"30 frames were read in {elapsed:.2f} s"


async def test_scroll_back_has_a_budget_and_a_default_page(tmp_path: Path) -> None:
    """GET /rooms/R/history: without limit a page is the newest 50 (more: true); one user's
    requests beyond 30 at once and 5 a second are 429, while another user's still pass."""
    async with live_server(make_settings(tmp_path, rate=0.0)) as live:
        ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
        async with live.connect("lobby", ann) as ws:
            await frame_of(ws, "join")
            for i in range(60):
                await say(ws, f"m{i}")
            for _ in range(60):
                await frame_of(ws, "message")
        async with httpx.AsyncClient(base_url=live.url) as client:
            started = time.monotonic()
            page = (await client.get("/rooms/lobby/history",
                                     headers={"cookie": f"revchat_session={ann}"})).json()
            assert len(page["events"]) == 50 and page["more"] is True
            assert page["events"][-1]["type"] == "leave"
            statuses = [(await client.get("/rooms/lobby/history?limit=1", headers={
                "cookie": f"revchat_session={ann}"})).status_code for _ in range(60)]
            elapsed = time.monotonic() - started
            other = await client.get("/rooms/lobby/history?limit=1",
                                     headers={"cookie": f"revchat_session={bob}"})
    assert set(statuses) <= {200, 429}
    assert statuses[:29] == [200] * 29  # the first page took one of the 30
    # at most the 30 and what came back meanwhile (5 a second) passed, the first page included
    assert 1 + statuses.count(200) <= 30 + int(elapsed * 5) + 1, (elapsed, statuses)
    assert 429 in statuses or elapsed * 5 >= 60 - 29
    assert other.status_code == 200


# -- what the history keeps ---------------------------------------------------------------------


async def test_resuming_from_an_id_no_longer_kept_gives_the_plain_archive(tmp_path: Path) -> None:
    """?since= an id the history no longer keeps (the room was purged) gives the plain archive,
    resumed false, not an empty "resumed" one."""
    async with live_server(make_settings(tmp_path, history=f"sqlite:///{tmp_path}/h.db")) as live:
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie) as ws:
            await frame_of(ws, "join")
            await say(ws, "soon gone")
            gone = await frame_of(ws, "message")
        await eventually(lambda: not live.engine.rooms)
        assert await live.engine.broker.history.purge("lobby") >= 2
        async with live.connect("lobby", cookie) as ws:
            await frame_of(ws, "join")
            await say(ws, "after the purge")
            await frame_of(ws, "message")
            async with live.connect("lobby", cookie, since=gone["id"]) as again:
                welcome = await frame(again)
        assert welcome["resumed"] is False
        assert [e["text"] for e in welcome["archive"]] == ["", "after the purge"]


async def test_memory_history_forgets_everything_on_restart(tmp_path: Path) -> None:
    """--history memory://: after a restart the room is empty, and a session signed out before
    it works again (nothing was kept, the list of ended sessions included)."""
    settings = make_settings(tmp_path, history="memory://")
    async with live_server(settings) as live:
        ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
        async with live.connect("lobby", ann) as ws:
            await frame_of(ws, "join")
            await say(ws, "forgotten")
            await frame_of(ws, "message")
        async with httpx.AsyncClient(base_url=live.url) as client:
            await client.post("/auth/logout", headers={"cookie": f"revchat_session={bob}"})
            refused = await client.get("/rooms/lobby", headers={"cookie": f"revchat_session={bob}"})
        assert refused.status_code == 302
    async with live_server(settings) as live:
        async with live.connect("lobby", ann) as ws:
            assert (await frame(ws))["archive"] == []
        async with httpx.AsyncClient(base_url=live.url) as client:
            page = await client.get("/rooms/lobby", headers={"cookie": f"revchat_session={bob}"})
        assert page.status_code == 200


async def test_group_commit_stores_concurrent_messages_in_fewer_batches(tmp_path: Path) -> None:
    """SQLite, four sockets saying 25 messages each at once: every event is stored and counted
    once in revchat_history_events_total, in fewer commits (revchat_history_writes_total) than
    events, because messages that arrive while a write is in flight share the next one."""
    async with live_server(make_settings(tmp_path, rate=0.0,
                                         history=f"sqlite:///{tmp_path}/h.db")) as live:
        cookies = [await live.sign_in(f"W{i}") for i in range(4)]
        sockets = [await live.connect(f"room{i}", c).__aenter__() for i, c in enumerate(cookies)]
        try:
            for ws in sockets:
                await frame_of(ws, "join")
            before = (await metric(live, "revchat_history_events_total"),
                      await metric(live, "revchat_history_writes_total"))
            for n in range(25):
                for i, ws in enumerate(sockets):
                    await say(ws, f"w{i} {n}")
            for ws in sockets:
                for _ in range(25):
                    await frame_of(ws, "message", timeout=15)
            events = await metric(live, "revchat_history_events_total") - before[0]
            writes = await metric(live, "revchat_history_writes_total") - before[1]
        finally:
            for ws in sockets:
                await ws.close()
        stored = [e for i in range(4) for e in await live.engine.broker.history.recent(f"room{i}", 100)
                  if e.type == "message"]
    assert events == 100 == len(stored)
    assert 1 <= writes < events


async def test_sqlite_runs_in_wal_mode_with_synchronous_normal(tmp_path: Path) -> None:
    """The history file is in WAL mode (another process sees it) and revchat's connection commits
    with synchronous=NORMAL."""
    db = tmp_path / "h.db"
    async with live_server(make_settings(tmp_path, history=f"sqlite:///{db}")) as live:
        history = live.engine.broker.history
        assert isinstance(history, SQLiteHistory)
        synchronous = await history._run(
            lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0], "read")
        with sqlite3.connect(db) as other:
            mode = other.execute("PRAGMA journal_mode").fetchone()[0]
        other.close()
    assert mode == "wal"
    assert synchronous == 1  # NORMAL


async def test_age_retention_walks_events_in_id_order(tmp_path: Path) -> None:
    """An event stamped earlier than the ones stored before it (the clock stepped back) outlives
    its age while an older-by-id event that is still young stands in front of it, and goes once
    those have gone."""
    history = SQLiteHistory(str(tmp_path / "h.db"), retention_days=3.0, retention_chunk=2)
    await history.open()
    try:
        now = int(time.time() * 1000)
        day = 86_400_000
        ann = User("guest:ann", "Ann")
        await history.append([Draft("message", "lobby", ann, now - 2 * day, "two days"),
                              Draft("message", "lobby", ann, now - 2 * day, "two days too"),
                              Draft("message", "lobby", ann, now - 5 * day, "stepped back")])
        await history.enforce_retention()
        kept = [e.text for e in await history.recent("lobby", 10)]
        assert kept == ["two days", "two days too", "stepped back"]
        history.retention_days = 1.0
        await history.enforce_retention()
        assert await history.recent("lobby", 10) == []
    finally:
        await history.close()


def test_documented_error_codes_are_the_ones_sent() -> None:
    """docs/protocol.md's error-code table names exactly the codes the server can send."""
    docs = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    table = docs[docs.index("| code | when |"):docs.index("The `message` never echoes")]
    documented = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    assert documented == set(get_args(ErrorCode))


# -- sign-in, sessions and what the server does with the unforeseen -----------------------------


async def test_facebook_sign_ins_count_against_the_signin_rate(tmp_path: Path) -> None:
    """--signin-rate 2 covers Facebook too: the third sign-in from one address in a minute gets the
    sign-in page with 429 and no session."""
    client_id, secret = "1234567890", "fb-app-secret-0123456789abcdef"
    async with fake_facebook(client_id, secret) as fake:
        settings = make_settings(tmp_path, fb_client_id=client_id, fb_client_secret=secret,
                                 fb_dialog_url=fake.url, fb_api_url=fake.url, guests=False,
                                 signin_rate=2)
        async with live_server(settings) as live, \
                httpx.AsyncClient(base_url=live.url, timeout=10) as browser:
            answers = []
            for _ in range(3):
                browser.cookies.clear()
                start = await browser.get("/auth/facebook")
                back = await browser.get(start.headers["location"])
                answers.append(await browser.get(back.headers["location"]))
    assert [a.status_code for a in answers] == [302, 302, 429]
    assert all(SESSION_COOKIE in a.cookies for a in answers[:2])
    assert SESSION_COOKIE not in answers[2].cookies
    assert "Too many sign-ins" in answers[2].text


async def test_signing_out_closes_the_sockets_as_signed_out(live: Live) -> None:
    """Signing out closes the session's open sockets with 4401 "signed out" (the page then
    offers to sign in instead of reconnecting)."""
    cookie = await live.sign_in("Ann")
    async with live.connect("lobby", cookie) as one, live.connect("other", cookie) as two:
        await frame(one)
        await frame(two)
        async with httpx.AsyncClient(base_url=live.url) as client:
            out = await client.post("/auth/logout", headers={"cookie": f"revchat_session={cookie}"})
        assert out.status_code == 302
        assert await closed_with(one) == (4401, "signed out")
        assert await closed_with(two) == (4401, "signed out")


async def test_the_name_comes_from_the_session_not_the_query_string(live: Live) -> None:
    """Query parameters naming someone else change nothing: the welcome and the messages carry
    the session's user."""
    cookie = await live.sign_in("Ann")
    async with websockets.connect(
            f"ws://127.0.0.1:{live.port}/rooms/lobby/socket?user=Mallory&name=Mallory&id=guest:x",
            additional_headers={"Cookie": f"revchat_session={cookie}"}, open_timeout=5) as ws:
        welcome = await frame(ws)
        assert welcome["you"]["name"] == "Ann"
        await say(ws, "who am I")
        assert (await frame_of(ws, "message"))["user"] == welcome["you"]


async def test_an_unforeseen_error_is_counted_logged_and_the_socket_goes_on(
        live: Live, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A bug while handling a frame: the client gets an unavailable error frame, the error is
    counted in revchat_unexpected_errors_total and logged (its traceback once per kind), and the
    same socket and the room go on."""
    say_for_real = live.engine.say

    async def buggy_say(sub: Any, text: str) -> Any:
        if text.startswith("boom"):
            raise ZeroDivisionError("a bug nobody foresaw")
        return await say_for_real(sub, text)

    monkeypatch.setattr(live.engine, "say", buggy_say)
    cookie = await live.sign_in("Ann")
    async with live.connect("lobby", cookie) as ws:
        await frame_of(ws, "join")
        for text in ("boom 1", "boom 2"):
            await say(ws, text)
            error = await frame(ws)
            assert error["type"] == "error" and error["code"] == "unavailable"
            assert "ZeroDivisionError" not in error["message"]
        await say(ws, "still fine")
        assert (await frame_of(ws, "message"))["text"] == "still fine"
    assert await metric(live, "revchat_unexpected_errors_total") == 2
    logged = [r for r in caplog.records if "ZeroDivisionError" in r.getMessage()]
    assert len(logged) == 2
    assert [r.exc_info is not None for r in logged] == [True, False]


@pytest.mark.parametrize(("rate", "user_rate", "frame_rate"),
                         [(2.0, 5.0, 20.0), (5.0, 12.5, 50.0), (0.0, 0.0, 0.0)])
def test_derived_limits_follow_the_rate(rate: float, user_rate: float, frame_rate: float) -> None:
    """--user-rate defaults to 2.5 x --rate, --frame-rate to 20 or 10 x --rate if more, and both to
    0 (off) when --rate is 0, as the settings table says."""
    settings = load({"rate": str(rate)}, environ={}).settings
    assert (settings.user_rate, settings.frame_rate) == (user_rate, frame_rate)
