"""docs/protocol.md, rule by rule, against a real server on a loopback port with concurrent clients."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode

from revchat.core.events import User
from revchat.core.sessions import Signer, new_session, session_token
from tests.support.live import Live, frame, frame_of, live_server, make_settings, say
from tests.support.waiting import eventually


async def test_welcome_then_own_join(live: Live) -> None:
    """The first frame is the welcome naming the user; their own join follows live, stamped in
    Unix milliseconds by the server."""
    cookie = await live.sign_in("Ann")
    before = int(time.time() * 1000)
    async with live.connect("Lobby", cookie) as ws:
        welcome = await frame(ws)
        assert welcome["type"] == "welcome"
        assert welcome["room"] == "lobby"
        assert welcome["you"]["name"] == "Ann" and welcome["you"]["id"].startswith("guest:")
        assert welcome["archive"] == [] and welcome["resumed"] is False
        join = await frame(ws)
        assert join["type"] == "join" and join["user"] == welcome["you"] and join["text"] == ""
        # Unix milliseconds, stamped by the server (same clock as the test's)
        assert isinstance(join["timestamp"], int)
        assert before <= join["timestamp"] <= int(time.time() * 1000)


async def test_everyone_sees_one_order(live: Live) -> None:
    """Three clients saying at once all receive the same messages in the same order."""
    names = ["Ann", "Bob", "Cy"]
    cookies = [await live.sign_in(n) for n in names]
    async with live.connect("lobby", cookies[0]) as a, live.connect("lobby", cookies[1]) as b, \
            live.connect("lobby", cookies[2]) as c:
        clients = [a, b, c]
        for ws in clients:
            await frame_of(ws, "welcome")
        # Cy joined last: once everyone has seen Cy's join, everyone is subscribed
        for ws in clients:
            while (await frame_of(ws, "join"))["user"]["name"] != "Cy":
                pass

        async def chatter(ws: websockets.ClientConnection, name: str) -> None:
            for i in range(5):
                await say(ws, f"{name} {i}")

        await asyncio.gather(*(chatter(ws, n) for ws, n in zip(clients, names, strict=True)))
        orders = []
        for ws in clients:
            got = [await frame_of(ws, "message") for _ in range(15)]
            orders.append([(m["id"], m["text"]) for m in got])
        assert orders[0] == orders[1] == orders[2]
        ids = [int(i) for i, _ in orders[0]]
        assert ids == sorted(ids) and len(set(ids)) == 15


async def test_message_carries_the_session_user(live: Live) -> None:
    """A message names the session's user and the trimmed text; no name from the query string."""
    cookie = await live.sign_in("Ann")
    async with live.connect("lobby", cookie) as ws:
        welcome = await frame(ws)
        await say(ws, "   <b>hello</b>  ")
        message = await frame_of(ws, "message")
        assert message["user"] == welcome["you"]
        assert message["text"] == "<b>hello</b>"
        assert message["room"] == "lobby"


async def test_late_joiner_gets_archive(live: Live) -> None:
    """A joiner receives the room's recent events, oldest first, before live ones."""
    cookie = await live.sign_in("Ann")
    async with live.connect("lobby", cookie) as ws:
        await frame(ws)
        for i in range(3):
            await say(ws, f"m{i}")
        for _ in range(3):
            await frame_of(ws, "message")
        late = await live.sign_in("Bob")
        async with live.connect("lobby", late) as ws2:
            welcome = await frame(ws2)
            texts = [e["text"] for e in welcome["archive"] if e["type"] == "message"]
            assert texts == ["m0", "m1", "m2"]
            assert [m["name"] for m in welcome["members"]] == ["Ann"]


async def test_archive_size_is_a_setting(tmp_path: Path) -> None:
    """--archive-size bounds the welcome's archive to the newest events."""
    async with live_server(make_settings(tmp_path, archive_size=2)) as live:
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie) as ws:
            await frame(ws)
            for i in range(4):
                await say(ws, f"m{i}")
            for _ in range(4):
                await frame_of(ws, "message")
            async with live.connect("lobby", cookie) as ws2:
                welcome = await frame(ws2)
                assert [e["text"] for e in welcome["archive"]] == ["m2", "m3"]


async def test_tabs_are_one_member(live: Live) -> None:
    """A second socket of the same user publishes no join; only the last one to close a leave."""
    ann = await live.sign_in("Ann")
    bob = await live.sign_in("Bob")
    async with live.connect("lobby", bob) as watcher:
        await frame(watcher)
        await frame_of(watcher, "join")
        async with live.connect("lobby", ann) as tab1:
            await frame(tab1)
            assert (await frame_of(watcher, "join"))["user"]["name"] == "Ann"
            async with live.connect("lobby", ann) as tab2:
                welcome = await frame(tab2)
                assert sorted(m["name"] for m in welcome["members"]) == ["Ann", "Bob"]
                await say(tab2, "from tab 2")
                got = await frame(watcher)
                assert got["type"] == "message", "no second join for the second tab"
            await say(tab1, "tab 2 closed")
            got = await frame(watcher)
            assert got["type"] == "message" and got["text"] == "tab 2 closed", "no leave yet"
        leave = await frame(watcher)
        assert leave["type"] == "leave" and leave["user"]["name"] == "Ann"


async def test_typing_goes_to_the_others_only(live: Live) -> None:
    """A typing notice reaches the others live and is neither echoed nor archived."""
    ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
    async with live.connect("lobby", ann) as a, live.connect("lobby", bob) as b:
        await frame(a)
        await frame(b)
        await frame_of(a, "join")
        await frame_of(a, "join")
        await frame_of(b, "join")
        await a.send(json.dumps({"type": "typing"}))
        notice = await frame_of(b, "typing")
        assert notice["user"]["name"] == "Ann"
        await say(a, "done")
        assert (await frame(a))["type"] == "message", "the typist gets no typing frame"
        async with live.connect("lobby", bob) as c:
            welcome = await frame(c)
            assert all(e["type"] != "typing" for e in welcome["archive"])


@pytest.mark.parametrize(
    ("sent", "code"),
    [
        ("not json", "bad_request"),
        (json.dumps([1, 2]), "bad_request"),
        (json.dumps({"type": "shout", "text": "x"}), "bad_request"),
        (json.dumps({"type": "say"}), "bad_request"),
        (json.dumps({"type": "say", "text": "   "}), "bad_request"),
        (json.dumps({"type": "say", "text": "é" * 2001}), "too_long"),
        (b"\x00binary", "bad_request"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays(
    live: Live, sent: str | bytes, code: str
) -> None:
    """Each bad frame is answered with its error code, and good messages still go through."""
    cookie = await live.sign_in("Ann")
    async with live.connect("lobby", cookie) as ws:
        await frame(ws)
        await frame_of(ws, "join")
        await ws.send(sent)
        error = await frame(ws)
        assert error["type"] == "error" and error["code"] == code and error["message"]
        await say(ws, "still here")
        assert (await frame_of(ws, "message"))["text"] == "still here"


async def test_longest_message_is_accepted(live: Live) -> None:
    """2000 code points (multi-byte ones too) is within the limit."""
    cookie = await live.sign_in("Ann")
    async with live.connect("lobby", cookie) as ws:
        await frame(ws)
        await say(ws, "é" * 2000)
        assert len((await frame_of(ws, "message"))["text"]) == 2000


async def test_frame_over_64k_closes_with_1009(live: Live) -> None:
    """A frame over the frame-size limit closes the socket with 1009."""
    cookie = await live.sign_in("Ann")
    async with live.connect("lobby", cookie, max_size=None) as ws:
        await frame(ws)
        await ws.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed):
            while True:
                await frame(ws)
        assert ws.close_code == 1009


async def test_rate_limit_burst_then_refuse(live: Live) -> None:
    """Over a burst of 10, messages are refused with rate_limited and not published."""
    cookie = await live.sign_in("Ann")
    async with live.connect("lobby", cookie) as ws:
        await frame(ws)
        await frame_of(ws, "join")
        started = time.monotonic()
        for i in range(12):
            await say(ws, f"m{i}")
        got = [await frame(ws) for _ in range(12)]
        elapsed = time.monotonic() - started
        kinds = [g["type"] if g["type"] != "error" else g["code"] for g in got]
        # the burst, and at most the tokens that came back meanwhile (2 a second): bounds that
        # hold however slowly a loaded machine ran the burst
        assert 10 <= kinds.count("message") <= 10 + int(elapsed * 2), (elapsed, kinds)
        assert "rate_limited" in kinds or elapsed * 2 >= 2
    async with live.connect("lobby", await live.sign_in("Bob")) as ws2:
        welcome = await frame(ws2)
        published = [e for e in welcome["archive"] if e["type"] == "message"]
        assert len(published) == kinds.count("message")


async def test_rate_zero_turns_limiting_off(tmp_path: Path) -> None:
    """With --rate 0 a client may send as fast as it likes."""
    async with live_server(make_settings(tmp_path, rate=0.0)) as live:
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie) as ws:
            await frame(ws)
            for i in range(50):
                await say(ws, f"m{i}")
            got = [await frame_of(ws, "message") for _ in range(50)]
            assert [g["text"] for g in got] == [f"m{i}" for i in range(50)]


async def test_slow_consumer_is_closed_and_others_keep_receiving(tmp_path: Path) -> None:
    """A client that stops reading is closed with 1013; a reading client misses nothing; /metrics
    showed the bytes waiting for it and counts the slow consumer."""
    settings = make_settings(tmp_path, rate=0.0, queue_size=64 * 1024)
    async with live_server(settings) as live:
        ann, bob, cy = [await live.sign_in(n) for n in ("Ann", "Bob", "Cy")]
        async with live.connect("lobby", ann) as sender, live.connect("lobby", bob) as reader, \
                live.connect("lobby", cy, max_queue=1) as stalled:
            for ws in (sender, reader, stalled):
                await frame(ws)
            stalled.transport.pause_reading()  # stop reading: the kernel buffers fill up
            text = "y" * 1900
            count = 0
            queued = 0.0
            while live.engine.stats.slow_consumers == 0:
                for _ in range(20):
                    await say(sender, text)
                    count += 1
                got = 0
                while got < 20:
                    if (await frame(reader))["type"] == "message":
                        got += 1
                assert count < 20000, "the stalled client was never dropped"
                # a round adds less than the queue holds: some round ends with bytes waiting
                queued = max(queued, (await metrics(live))["revchat_queued_bytes"])
            assert queued > 0, "revchat_queued_bytes never showed what waited for the client"
            assert (await metrics(live))["revchat_slow_consumers_total"] == 1
            stalled.transport.resume_reading()
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(stalled.recv(), 10)
            assert stalled.close_code == 1013
            assert stalled.close_reason == "slow consumer"
            await say(sender, "after")
            assert (await frame_of(reader, "message"))["text"] == "after"


async def test_handshake_refused_without_session(live: Live) -> None:
    """No session: HTTP 403 before any upgrade."""
    with pytest.raises(InvalidStatus) as err:
        async with live.connect("lobby", None):
            pass
    assert err.value.response.status_code == 403


async def test_handshake_refused_with_tampered_cookie(live: Live) -> None:
    """A cookie signed with another key, or edited, is refused with 403."""
    forged = Signer("another-key", "session").dumps(
        {"user": {"id": "guest:x", "name": "Mallory", "avatar": None}})
    good = await live.sign_in("Ann")
    edited = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    for cookie in (forged, edited):
        with pytest.raises(InvalidStatus) as err:
            async with live.connect("lobby", cookie):
                pass
        assert err.value.response.status_code == 403


async def test_a_session_is_good_for_30_days(live: Live) -> None:
    """A cookie signed with the server's key 29 days ago opens the socket; one 31 days old is
    refused with 403 like a forged one."""
    signer = Signer(live.settings.secret_key, "session")
    now = int(time.time() * 1000)
    day = 86_400_000
    for age, opens in ((29, True), (31, False)):
        session = new_session(User("guest:old", "Old"), now=now - age * day)
        cookie = session_token(signer, session)
        if opens:
            async with live.connect("lobby", cookie) as ws:
                assert (await frame(ws))["you"]["name"] == "Old"
        else:
            with pytest.raises(InvalidStatus) as err:
                async with live.connect("lobby", cookie):
                    pass
            assert err.value.response.status_code == 403


async def test_handshake_refused_from_foreign_origin(live: Live) -> None:
    """A page of another origin cannot open the socket (403); the public origin can."""
    cookie = await live.sign_in("Ann")
    with pytest.raises(InvalidStatus) as err:
        async with live.connect("lobby", cookie, origin="http://evil.example"):
            pass
    assert err.value.response.status_code == 403
    async with live.connect("lobby", cookie, origin=live.url) as ws:
        assert (await frame(ws))["type"] == "welcome"


async def test_socket_accepts_the_loopback_aliases_of_its_origin(live: Live) -> None:
    """On a loopback public URL the socket also takes pages served as localhost or [::1] (same
    port), and refuses another port."""
    cookie = await live.sign_in("Ann")
    for host in ("localhost", "127.0.0.1", "[::1]"):
        async with live.connect("lobby", cookie, origin=f"http://{host}:{live.port}") as ws:
            assert (await frame(ws))["type"] == "welcome"
    with pytest.raises(InvalidStatus) as err:
        async with live.connect("lobby", cookie, origin=f"http://[::1]:{live.port + 1}"):
            pass
    assert err.value.response.status_code == 403


async def test_bad_room_name_is_404(live: Live) -> None:
    """Room names outside 1-64 letters, digits, - and _ are not found."""
    cookie = await live.sign_in("Ann")
    for room in ("a" * 65, "sp%20ace", "dot.ted"):
        with pytest.raises(InvalidStatus) as err:
            async with live.connect(room, cookie):
                pass
        assert err.value.response.status_code == 404


async def test_resume_since_replays_exactly_the_missed(live: Live) -> None:
    """?since=ID replays the events after ID (resumed true); an unknown id gives the archive."""
    ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
    async with live.connect("lobby", ann) as a:
        await frame(a)
        await say(a, "before")
        last = await frame_of(a, "message")
        async with live.connect("lobby", bob) as b:
            await frame(b)
            await say(b, "while away 1")
            await say(b, "while away 2")
            await frame_of(a, "message")
            await frame_of(a, "message")
        async with live.connect("lobby", ann, since=last["id"]) as again:
            welcome = await frame(again)
            assert welcome["resumed"] is True
            texts = [(e["type"], e["text"]) for e in welcome["archive"]]
            assert texts == [("join", ""), ("message", "while away 1"),
                             ("message", "while away 2"), ("leave", "")]
        for unknown in ("999999", "nonsense"):
            async with live.connect("lobby", ann, since=unknown) as again:
                welcome = await frame(again)
                assert welcome["resumed"] is False
                assert any(e["text"] == "before" for e in welcome["archive"])


async def test_resume_limit_falls_back_to_archive(tmp_path: Path) -> None:
    """Missing more than --resume-limit events gives the plain archive, resumed false."""
    async with live_server(make_settings(tmp_path, resume_limit=3, rate=0.0)) as live:
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie) as ws:
            first = await frame_of(ws, "join")
            for i in range(5):
                await say(ws, f"m{i}")
            for _ in range(5):
                await frame_of(ws, "message")
        async with live.connect("lobby", cookie, since=first["id"]) as ws:
            welcome = await frame(ws)
            assert welcome["resumed"] is False


@pytest.mark.parametrize("where", ["cache", "history"])
async def test_resume_limit_is_exact(tmp_path: Path, where: str) -> None:
    """With --resume-limit N, missing exactly N events resumes with exactly those N; missing N+1
    gives the plain archive (resumed false), whether the events are in the room's cache (the room
    is held) or read from the history (it is not, and they are older than the cache)."""
    limit = 3 if where == "cache" else 150  # "history": more than the 100 events a room caches
    settings = make_settings(tmp_path, resume_limit=limit, archive_size=5, rate=0.0,
                             history=f"sqlite:///{tmp_path}/h.db")
    async with live_server(settings) as live:
        cookie = await live.sign_in("Ann")
        holder = await live.connect("lobby", cookie).__aenter__()
        try:
            await frame_of(holder, "join")
            for i in range(limit + 5):
                await say(holder, f"m{i}")
            for _ in range(limit + 5):
                await frame_of(holder, "message")
            if where == "history":
                await holder.close()
            for missed, resumed in ((limit, True), (limit + 1, False)):
                if where == "history":  # each check's own join and leave are stored too
                    await eventually(lambda: "lobby" not in live.engine.rooms)
                stored = await live.engine.broker.history.recent("lobby", 1000)
                assert len(stored) > missed + 1
                # a second tab of Ann's: it publishes no join while the holder is open
                async with live.connect("lobby", cookie, since=stored[-missed - 1].id) as ws:
                    welcome = await frame(ws)
                assert welcome["resumed"] is resumed, f"{missed} missed of a limit of {limit}"
                expected = stored[-missed:] if resumed else stored[-5:]
                assert [e["id"] for e in welcome["archive"]] == [e.id for e in expected]
        finally:
            await holder.close()


async def test_shutdown_closes_with_1001(tmp_path: Path) -> None:
    """Stopping the server closes every socket with 1001 "server shutting down"."""
    async with live_server(make_settings(tmp_path)) as live:
        cookie = await live.sign_in("Ann")
        ws = await live.connect("lobby", cookie)
        await frame(ws)
    with pytest.raises(ConnectionClosed):
        while True:
            await frame(ws)
    assert ws.close_code == 1001
    assert ws.close_reason == "server shutting down"


def watch_pongs(ws: websockets.ClientConnection, answer: bool) -> asyncio.Event:
    """Set the returned event when the server pings; answer (pong) only if ``answer``."""
    pinged = asyncio.Event()
    original = ws.protocol.send_frame

    def send_frame(sent: Frame) -> None:
        if sent.opcode is Opcode.PONG:
            pinged.set()
            if not answer:
                return
        original(sent)

    ws.protocol.send_frame = send_frame  # type: ignore[method-assign]
    return pinged


async def test_pings_are_sent(tmp_path: Path) -> None:
    """The server pings at --ping-interval; a client that answers stays connected."""
    async with live_server(replace(make_settings(tmp_path), ping_interval=0.2)) as live:
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie, ping_interval=None) as ws:
            await frame(ws)
            pinged = watch_pongs(ws, answer=True)
            await asyncio.wait_for(pinged.wait(), 5)
            pinged.clear()
            await asyncio.wait_for(pinged.wait(), 5)
            await say(ws, "still open")
            assert (await frame_of(ws, "message"))["text"] == "still open"


async def test_peer_that_never_answers_pings_is_closed(tmp_path: Path) -> None:
    """A peer that does not answer a ping within --ping-timeout is closed with 1011 "no answer to
    ping"."""
    async with live_server(replace(make_settings(tmp_path), ping_interval=0.2,
                                   ping_timeout=0.3)) as live:
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie, ping_interval=None) as ws:
            await frame(ws)
            pinged = watch_pongs(ws, answer=False)
            await asyncio.wait_for(pinged.wait(), 5)
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            assert (ws.close_code, ws.close_reason) == (1011, "no answer to ping")


async def test_messages_sent_just_before_closing_are_published(tmp_path: Path) -> None:
    """A client that sends a burst and closes at once still has every message published."""
    async with live_server(make_settings(tmp_path, rate=0.0)) as live:
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie) as ws:
            await frame(ws)
            for i in range(100):
                await say(ws, f"m{i}")
        async with live.connect("lobby", await live.sign_in("Bob")) as watcher:
            welcome = await frame(watcher)
            got = [e["text"] for e in welcome["archive"] if e["type"] == "message"]
            while "m99" not in got:  # the last one, in the archive or live
                got.append((await frame_of(watcher, "message"))["text"])
        # the archive shows only the newest; the history holds them all, in order
        stored = await live.engine.broker.history.recent("lobby", 500)
        assert [e.text for e in stored if e.type == "message"] == [f"m{i}" for i in range(100)]


async def test_ping_interval_zero_sends_no_pings(tmp_path: Path) -> None:
    """With --ping-interval 0 the server never pings: no pinger runs, and a peer that would not
    answer a ping (and a 0.05 s --ping-timeout) stays open."""
    settings = make_settings(tmp_path, ping_interval=0.0, ping_timeout=0.05)
    async with live_server(settings) as live:
        assert live.app.ctx.pinger is None
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie, ping_interval=None) as ws:
            await frame(ws)
            pinged = watch_pongs(ws, answer=False)
            # Nothing announces that no ping will come: watch for 20 timeouts' worth of time.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pinged.wait(), 1.0)
            await say(ws, "still open")
            assert (await frame_of(ws, "message"))["text"] == "still open"


async def test_max_connections_refuses_the_next_handshake_with_503(tmp_path: Path) -> None:
    """--max-connections 2: with two sockets open on the worker (in any rooms) a third handshake
    is refused with HTTP 503 before the upgrade; the two go on, and a freed place is taken again."""
    async with live_server(make_settings(tmp_path, max_connections=2)) as live:
        ann, bob, cy = [await live.sign_in(n) for n in ("Ann", "Bob", "Cy")]
        async with live.connect("lobby", ann) as a, live.connect("other", bob) as b:
            await frame_of(a, "join")
            await frame_of(b, "join")
            with pytest.raises(InvalidStatus) as err:
                async with live.connect("lobby", cy):
                    pass
            assert err.value.response.status_code == 503
            for ws, text in ((a, "a still here"), (b, "b still here")):
                await say(ws, text)
                assert (await frame_of(ws, "message"))["text"] == text
        await eventually(lambda: live.engine.connections == 0)
        async with live.connect("lobby", cy) as c:
            assert (await frame(c))["type"] == "welcome"


def padded_say(size: int) -> str:
    """A say frame of exactly ``size`` bytes whose text trims to "x"."""
    shortest = json.dumps({"type": "say", "text": "x"})
    text = json.dumps({"type": "say", "text": "x" + " " * (size - len(shortest))})
    assert len(text.encode()) == size
    return text


async def test_non_default_frame_and_message_limits_are_exact(tmp_path: Path) -> None:
    """--max-message-length 10 and --max-frame-size 2048: 10 code points (after trimming) pass and
    11 are too_long; a frame of exactly 2048 bytes passes and one of 2049 closes with 1009."""
    settings = make_settings(tmp_path, max_message_length=10, max_frame_size=2048)
    async with live_server(settings) as live:
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie, max_size=None) as ws:
            await frame_of(ws, "join")
            await say(ws, "  " + "é" * 10 + "  ")
            assert (await frame(ws))["text"] == "é" * 10
            await say(ws, "é" * 11)
            error = await frame(ws)
            assert error["code"] == "too_long" and "10 characters" in error["message"]
            await ws.send(padded_say(2048))
            assert (await frame(ws))["text"] == "x"
            await ws.send(padded_say(2049))
            with pytest.raises(ConnectionClosed):
                while True:
                    await frame(ws)
            assert ws.close_code == 1009


async def metrics(live: Live) -> dict[str, float]:
    """/metrics as numbers by name (Prometheus text)."""
    async with httpx.AsyncClient(base_url=live.url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    return {line.split()[0]: float(line.split()[1]) for line in response.text.splitlines()
            if line and not line.startswith("#")}


async def test_write_delay_sends_after_quiet_at_once_and_coalesces_a_burst(tmp_path: Path) -> None:
    """--write-delay 500: after a quiet spell the first message is written on its own, at once;
    the ones right behind it wait for the delay and go out together (fewer writes than frames)."""
    async with live_server(make_settings(tmp_path, rate=0.0, write_delay=500.0)) as live:
        ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
        async with live.connect("lobby", ann) as a, live.connect("lobby", bob) as b:
            await frame_of(b, "join")
            assert (await frame_of(a, "join"))["user"]["name"] == "Ann"
            assert (await frame_of(a, "join"))["user"]["name"] == "Bob"
            room = live.engine.rooms["lobby"]
            await eventually(lambda: time.monotonic() > room.quiet_until)  # the quiet spell
            before = await metrics(live)
            texts = [f"m{i}" for i in range(5)]
            for text in texts:  # all at once: the server handles them one after the other
                await say(a, text)
            for ws in (a, b):
                assert [(await frame_of(ws, "message", timeout=10))["text"] for _ in texts] == texts
            after = await metrics(live)
        writes = after["revchat_writes_total"] - before["revchat_writes_total"]
        frames = after["revchat_deliveries_total"] - before["revchat_deliveries_total"]
        assert frames == 2 * len(texts)
        # m0 alone (one write to each of the two), m1..m4 together: 4 writes (one more per
        # subscriber if the machine stalled for half a second in the middle of the burst)
        assert writes >= 4, "the first message after a quiet spell waited for the others"
        assert writes < frames, "a burst was not coalesced"


async def reply(ws: websockets.ClientConnection, text: str) -> str:
    """What became of this socket's ``say`` of ``text``: "message" or the error code."""
    while True:
        got = await frame(ws)
        if got["type"] == "error":
            return str(got["code"])
        if got["type"] == "message" and got["text"] == text:
            return "message"


async def test_the_rate_refills_one_message_per_interval(tmp_path: Path) -> None:
    """--rate 2 --burst 2: once the burst is spent, a message is refused; one more is allowed once
    half a second has passed since the first, never sooner, and the one right after it is refused
    again (one token came back, not the burst)."""
    rate, burst = 2.0, 2
    async with live_server(make_settings(tmp_path, rate=rate, burst=burst)) as live:
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie) as ws:
            await frame_of(ws, "join")
            first_sent = time.monotonic()
            for i in range(burst):
                await say(ws, f"b{i}")
                assert await reply(ws, f"b{i}") == "message"
            outcome, attempt = "rate_limited", 0
            async with asyncio.timeout(15):
                while outcome == "rate_limited":  # polling the bucket: nothing announces a refill
                    attempt += 1
                    last_sent = time.monotonic()
                    await say(ws, f"again {attempt}")
                    outcome = await reply(ws, f"again {attempt}")
                    if outcome == "rate_limited":
                        await asyncio.sleep(0.02)
            accepted = time.monotonic()
            assert attempt > 1, "the message after the burst was not refused"
            assert outcome == "message"
            assert accepted - first_sent >= 1 / rate, "a token came back sooner than 1/rate"
            await say(ws, "right after")
            after = await reply(ws, "right after")
            window = time.monotonic() - last_sent
            # Refused unless the machine stalled long enough for a second token (1/rate s).
            assert after == "rate_limited" or window * rate >= 1
        stored = await live.engine.broker.history.recent("lobby", 100)
        published = [e.text for e in stored if e.type == "message"]
        assert published == [f"b{i}" for i in range(burst)] + [f"again {attempt}"] + \
            (["right after"] if after == "message" else [])


async def test_the_rate_is_shared_by_a_users_tabs(tmp_path: Path) -> None:
    """--burst 3: two sockets of one user in one room spend one budget (the fourth message from
    either tab is refused); another user, and the same user in another room, have their own."""
    async with live_server(make_settings(tmp_path, rate=0.01, burst=3)) as live:
        ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
        async with live.connect("lobby", ann) as tab1, live.connect("lobby", ann) as tab2, \
                live.connect("lobby", bob) as other, live.connect("side", ann) as elsewhere:
            for ws in (tab1, tab2, other, elsewhere):
                await frame(ws)
            outcomes = []
            for ws, text in ((tab1, "one"), (tab2, "two"), (tab1, "three"), (tab2, "four"),
                             (tab1, "five")):
                await say(ws, text)
                outcomes.append(await reply(ws, text))
            assert outcomes == ["message"] * 3 + ["rate_limited"] * 2
            await say(other, "bob's own")
            assert await reply(other, "bob's own") == "message"
            await say(elsewhere, "another room")
            assert await reply(elsewhere, "another room") == "message"


async def test_typing_is_relayed_a_few_times_not_once_per_frame(live: Live) -> None:
    """Twenty typing frames at once reach the others as at most three notices (then about one a
    second); the typist's next message follows them."""
    ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
    async with live.connect("lobby", ann) as a, live.connect("lobby", bob) as b:
        await frame_of(a, "join")
        await frame_of(a, "join")
        await frame_of(b, "join")
        started = time.monotonic()
        for _ in range(20):
            await a.send(json.dumps({"type": "typing"}))
        await say(a, "marker")
        kinds: list[str] = []
        while not kinds or kinds[-1] != "message":
            kinds.append((await frame(b))["type"])
        elapsed = time.monotonic() - started
    notices = kinds.count("typing")
    assert 1 <= notices <= 3 + int(elapsed), kinds


async def test_metrics_follow_what_happens(tmp_path: Path) -> None:
    """/metrics: the gauges count this worker's sockets, rooms and members as they come and go;
    the counters count subscriptions, events, the frames delivered, rate-limited messages and the
    events stored, each exactly as it happens (and /healthz agrees on sockets and rooms)."""
    async with live_server(make_settings(tmp_path, rate=0.01, burst=2)) as live:
        start = await metrics(live)
        assert {k: start[k] for k in ("revchat_connections", "revchat_rooms", "revchat_members",
                                      "revchat_broker_up", "revchat_events_total",
                                      "revchat_subscriptions_total")} == {
            "revchat_connections": 0, "revchat_rooms": 0, "revchat_members": 0,
            "revchat_broker_up": 1, "revchat_events_total": 0, "revchat_subscriptions_total": 0}
        ann, bob = await live.sign_in("Ann"), await live.sign_in("Bob")
        async with live.connect("lobby", ann) as a:
            await frame_of(a, "join")
            async with live.connect("lobby", bob) as b:
                await frame_of(b, "join")
                await frame_of(a, "join")
                two = await metrics(live)
                await say(a, "hello")
                await frame_of(b, "message")
                await say(a, "second")
                await frame_of(b, "message")
                await say(a, "third")
                assert (await frame_of(a, "error"))["code"] == "rate_limited"
                said = await metrics(live)
                async with httpx.AsyncClient(base_url=live.url) as client:
                    health = (await client.get("/healthz")).json()
            await frame_of(a, "leave")
            await eventually(lambda: live.engine.connections == 1)
            one = await metrics(live)
        await eventually(lambda: not live.engine.rooms)
        end = await metrics(live)
    assert (two["revchat_connections"], two["revchat_rooms"], two["revchat_members"]) == (2, 1, 2)
    assert (health["connections"], health["rooms"]) == (2, 1)
    assert two["revchat_subscriptions_total"] == 2
    assert two["revchat_events_total"] == 2  # the two joins
    assert two["revchat_history_events_total"] == 2
    assert two["revchat_deliveries_total"] == 3  # Ann's join to Ann, Bob's to both
    assert 1 <= two["revchat_writes_total"] <= two["revchat_deliveries_total"]
    assert 1 <= two["revchat_history_writes_total"] <= 2
    assert said["revchat_events_total"] == 4
    assert said["revchat_deliveries_total"] == 3 + 2 * 2
    assert said["revchat_rate_limited_total"] == 1
    assert said["revchat_history_events_total"] == 4
    assert (one["revchat_connections"], one["revchat_members"]) == (1, 1)
    assert one["revchat_events_total"] == 5  # Bob's leave
    assert (end["revchat_connections"], end["revchat_rooms"], end["revchat_members"]) == (0, 0, 0)
    assert end["revchat_history_events_total"] == 6  # Ann's leave
    for name in ("revchat_slow_consumers_total", "revchat_history_failures_total",
                 "revchat_unexpected_errors_total", "revchat_queued_bytes"):
        assert end[name] == 0, name


def documented_metrics() -> set[str]:
    """The metric names docs/protocol.md lists under Operations."""
    import re

    docs = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    operations = docs[docs.index("## Operations"):]
    return set(re.findall(r"`(revchat_[a-z_]+)`", operations))


async def test_metrics_are_the_documented_ones(live: Live) -> None:
    """/metrics serves exactly the gauges and counters docs/protocol.md lists, by those names."""
    served = {name.removesuffix("_total") for name in await metrics(live)}
    documented = {name.removesuffix("_total") for name in documented_metrics()}
    assert served == documented
