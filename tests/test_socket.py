"""SPEC §4, rule by rule, against a real server on a loopback port with concurrent clients."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode

from revchat.sessions import Signer
from tests.support.live import Live, frame, frame_of, live_server, make_settings, say


async def test_welcome_then_own_join(live: Live) -> None:
    """The first frame is the welcome naming the user; their own join follows live."""
    cookie = await live.sign_in("Ann")
    async with live.connect("Lobby", cookie) as ws:
        welcome = await frame(ws)
        assert welcome["type"] == "welcome"
        assert welcome["room"] == "lobby"
        assert welcome["you"]["name"] == "Ann" and welcome["you"]["id"].startswith("guest:")
        assert welcome["archive"] == [] and welcome["resumed"] is False
        join = await frame(ws)
        assert join["type"] == "join" and join["user"] == welcome["you"] and join["text"] == ""
        assert isinstance(join["timestamp"], int)


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
        for i in range(12):
            await say(ws, f"m{i}")
        got = [await frame(ws) for _ in range(12)]
        kinds = [g["type"] if g["type"] != "error" else g["code"] for g in got]
        assert kinds.count("message") in (10, 11)  # a token may refill during the burst
        assert "rate_limited" in kinds
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
    """A client that stops reading is closed with 1013; a reading client misses nothing."""
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
            while live.engine.stats.slow_consumers == 0:
                for _ in range(20):
                    await say(sender, text)
                    count += 1
                got = 0
                while got < 20:
                    if (await frame(reader))["type"] == "message":
                        got += 1
                assert count < 20000, "the stalled client was never dropped"
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


async def test_handshake_refused_from_foreign_origin(live: Live) -> None:
    """A page of another origin cannot open the socket (403); the public origin can."""
    cookie = await live.sign_in("Ann")
    with pytest.raises(InvalidStatus) as err:
        async with live.connect("lobby", cookie, origin="http://evil.example"):
            pass
    assert err.value.response.status_code == 403
    async with live.connect("lobby", cookie, origin=live.url) as ws:
        assert (await frame(ws))["type"] == "welcome"


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
    """A peer that does not answer a ping within --ping-timeout is closed."""
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
