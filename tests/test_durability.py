"""Durable history (docs/protocol.md-5) with a real server process: restarts by SIGTERM and SIGKILL,
resume across a restart, concurrent rooms, and `revchat history export|purge`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner
from websockets.exceptions import ConnectionClosed

from revchat.backends.sqlite import SQLiteHistory
from revchat.cli.main import cli
from revchat.core.events import Draft, User
from tests.support.live import connect, frame, frame_of, live_server, make_settings, say, sign_in
from tests.support.ports import free_port
from tests.support.process import Served, serve
from tests.support.redis_server import redis_server

runner = CliRunner()


def serve_args(data: Path, *extra: str) -> tuple[str, ...]:
    return ("--data-dir", str(data), "--rate", "0", *extra)


async def chat(port: int, url: str, texts: list[str], room: str = "lobby") -> list[dict[str, Any]]:
    """Say each text and return the messages as the sender received them."""
    cookie = await sign_in(url, "Ann")
    async with connect(port, room, cookie) as ws:
        await frame(ws)
        for text in texts:
            await say(ws, text)
        return [await frame_of(ws, "message") for _ in texts]


async def welcome(port: int, url: str, since: str | None = None,
                  room: str = "lobby") -> dict[str, Any]:
    cookie = await sign_in(url, "Bob")
    async with connect(port, room, cookie, since=since) as ws:
        return await frame(ws)


def test_sigterm_restart_keeps_history(tmp_path: Path) -> None:
    """After SIGTERM and a new start on the same data dir, the room's history is all there."""
    data, port = tmp_path / "data", free_port()
    texts = [f"message {i}" for i in range(20)]
    with serve(*serve_args(data), port=port, log=tmp_path / "log") as served:
        sent = asyncio.run(chat(served.port, served.url, texts))
        assert served.stop(signal.SIGTERM) == 0
    with serve(*serve_args(data), port=port, log=tmp_path / "log") as served:
        got = asyncio.run(welcome(served.port, served.url))
        archived = [e for e in got["archive"] if e["type"] == "message"]
        assert [(e["id"], e["text"]) for e in archived] == [(m["id"], m["text"]) for m in sent]


def test_sigkill_loses_nothing_anyone_received(tmp_path: Path) -> None:
    """kill -9 mid-stream: every event a client received is in the history after restart."""
    data, port = tmp_path / "data", free_port()
    received: list[dict[str, Any]] = []
    with serve(*serve_args(data), port=port, log=tmp_path / "log") as served:

        async def stream() -> None:
            ann, bob = await sign_in(served.url, "Ann"), await sign_in(served.url, "Bob")
            async with connect(served.port, "lobby", ann) as sender, \
                    connect(served.port, "lobby", bob) as reader:
                await frame(sender)
                await frame(reader)
                for i in range(10_000):
                    await say(sender, f"m{i}")
                    while True:
                        got = await frame(reader)
                        if got["type"] == "message":
                            received.append(got)
                            break
                    if i == 150:
                        served.proc.send_signal(signal.SIGKILL)
                        return

        asyncio.run(stream())
        served.proc.wait(10)
    assert len(received) == 151
    with serve(*serve_args(data), port=port, log=tmp_path / "log") as served:
        result = runner.invoke(cli, ["history", "export", "lobby", "--data-dir", str(data)])
        stored = [json.loads(line) for line in result.stdout.splitlines()]
        stored_ids = {e["id"] for e in stored}
        assert all(m["id"] in stored_ids for m in received)
        assert [e for e in stored if e["type"] == "message"][:151] == received


def test_resume_across_restart(tmp_path: Path) -> None:
    """A client that last saw ID before a restart resumes after it, exactly (resumed true)."""
    data, port = tmp_path / "data", free_port()
    with serve(*serve_args(data), port=port, log=tmp_path / "log") as served:
        before = asyncio.run(chat(served.port, served.url, ["one", "two"]))
        assert served.stop() == 0
    with serve(*serve_args(data), port=port, log=tmp_path / "log") as served:
        asyncio.run(chat(served.port, served.url, ["three"]))
        got = asyncio.run(welcome(served.port, served.url, since=before[0]["id"]))
        assert got["resumed"] is True
        texts = [e["text"] for e in got["archive"] if e["type"] == "message"]
        assert texts == ["two", "three"]
        ids = [int(e["id"]) for e in got["archive"]]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_concurrent_rooms_each_keep_their_order(tmp_path: Path) -> None:
    """Two writers in each of four rooms at once: each room's history holds exactly its own
    messages, once each, every writer's in the order it sent them, and what every writer received
    live is a stretch of that history, in the same order."""
    data = tmp_path / "data"
    rooms = [f"room{i}" for i in range(4)]
    writers = [(room, w) for room in rooms for w in ("a", "b")]

    async def write(room: str, writer: str, texts: list[str]) -> list[dict[str, Any]]:
        """Say each text; return every message received live until the writer's own last one."""
        cookie = await sign_in(served.url, f"Writer {writer}")
        async with connect(served.port, room, cookie) as ws:
            await frame(ws)
            for text in texts:
                await say(ws, text)
            received = [await frame_of(ws, "message")]
            while received[-1]["text"] != texts[-1]:
                received.append(await frame_of(ws, "message"))
            return received

    with serve(*serve_args(data), log=tmp_path / "log") as served:

        async def run() -> list[list[dict[str, Any]]]:
            return list(await asyncio.gather(*(
                write(room, w, [f"{room}/{w}/{n}" for n in range(25)]) for room, w in writers)))

        received = dict(zip(writers, asyncio.run(run()), strict=True))
        for room in rooms:
            result = runner.invoke(cli, ["history", "export", room, "--data-dir", str(data)])
            events = [json.loads(line) for line in result.stdout.splitlines()]
            ids = [int(e["id"]) for e in events]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            messages = [(e["id"], e["text"]) for e in events if e["type"] == "message"]
            texts = [text for _, text in messages]
            assert sorted(texts) == sorted(f"{room}/{w}/{n}" for w in "ab" for n in range(25))
            for w in "ab":
                assert [t for t in texts if t.startswith(f"{room}/{w}/")] == \
                    [f"{room}/{w}/{n}" for n in range(25)], f"{room}: writer {w}'s order"
                live = [(m["id"], m["text"]) for m in received[(room, w)]]
                start = messages.index(live[0])
                assert messages[start:start + len(live)] == live, f"{room}: what {w} saw live"


def test_history_endpoint_pages_backwards(tmp_path: Path) -> None:
    """GET /rooms/R/history?before=ID&limit=N pages backwards, oldest first, with `more`."""
    with serve(*serve_args(tmp_path / "data"), log=tmp_path / "log") as served:
        sent = asyncio.run(chat(served.port, served.url, [f"m{i}" for i in range(7)]))
        cookie = asyncio.run(sign_in(served.url, "Cy"))
        headers = {"cookie": f"revchat_session={cookie}"}
        page = httpx.get(f"{served.url}/rooms/lobby/history",
                         params={"before": sent[-1]["id"], "limit": 3}, headers=headers).json()
        assert [e["text"] for e in page["events"]] == ["m3", "m4", "m5"] and page["more"] is True
        page = httpx.get(f"{served.url}/rooms/lobby/history",
                         params={"before": page["events"][0]["id"], "limit": 50},
                         headers=headers).json()
        assert page["events"][0]["type"] == "join" and page["more"] is False


def test_history_export_and_purge_commands(tmp_path: Path) -> None:
    """export writes JSON lines in the socket's shape; purge asks, then empties the room."""
    data = tmp_path / "data"
    with serve(*serve_args(data), log=tmp_path / "log") as served:
        sent = asyncio.run(chat(served.port, served.url, ["keep me"]))
        assert served.stop() == 0
    out = tmp_path / "lobby.jsonl"
    result = runner.invoke(cli, ["history", "export", "lobby", "-o", str(out),
                                 "--data-dir", str(data)])
    assert result.exit_code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sent[0] in lines
    result = runner.invoke(cli, ["history", "purge", "lobby", "--data-dir", str(data)], input="n\n")
    assert result.exit_code == 1 and "nothing deleted" in result.output
    result = runner.invoke(cli, ["history", "purge", "lobby", "--yes", "--data-dir", str(data)])
    assert result.exit_code == 0 and f"deleted {len(lines)} events" in result.output
    result = runner.invoke(cli, ["history", "export", "lobby", "--data-dir", str(data)])
    assert result.stdout == ""
    result = runner.invoke(cli, ["history", "export", "no.pe", "--data-dir", str(data)])
    assert result.exit_code == 2 and "is not a room name" in result.output


async def stream_then_sigterm(served: Served, texts: list[str]) -> tuple[list[dict[str, Any]],
                                                                          int | None]:
    """Send every text at once, SIGTERM the server when the first comes back, and read on until
    the socket closes: the messages received, and the close code."""
    cookie = await sign_in(served.url, "Ann")
    received: list[dict[str, Any]] = []
    async with connect(served.port, "lobby", cookie) as ws:
        await frame(ws)
        for text in texts:
            await say(ws, text)
        received.append(await frame_of(ws, "message"))
        served.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(ConnectionClosed):
            while True:
                got = await frame(ws, timeout=15)
                if got["type"] == "message":
                    received.append(got)
        return received, ws.close_code


def exported(data: Path, room: str = "lobby") -> list[dict[str, Any]]:
    result = runner.invoke(cli, ["history", "export", room, "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_sigterm_with_messages_in_flight_keeps_every_acknowledged_one(tmp_path: Path) -> None:
    """SIGTERM right after the first of sixty messages sent at once comes back: the socket closes
    with 1001, the server exits 0, and after a restart every message the sender got back is in the
    history, with what was stored a gapless prefix of what was sent, in order."""
    data, port = tmp_path / "data", free_port()
    texts = [f"in flight {i}" for i in range(60)]
    with serve(*serve_args(data), port=port, log=tmp_path / "log") as served:
        received, code = asyncio.run(stream_then_sigterm(served, texts))
        assert code == 1001
        assert served.proc.wait(20) == 0
    assert "Traceback" not in served.output()
    with serve(*serve_args(data), port=port, log=tmp_path / "log2"):
        messages = [e for e in exported(data) if e["type"] == "message"]
    assert len(messages) >= len(received) >= 1
    assert [m["text"] for m in messages] == texts[:len(messages)]
    assert messages[:len(received)] == received


def test_sigterm_stores_every_message_the_server_had_read(tmp_path: Path) -> None:
    """SIGTERM with sixty messages read (they fit in the socket's inbox of 64) but mostly not yet
    stored: README's "flush the history" means all sixty are in the history afterwards, and the
    sender's leave too."""
    data = tmp_path / "data"
    texts = [f"in flight {i}" for i in range(60)]
    with serve(*serve_args(data), log=tmp_path / "log") as served:
        asyncio.run(stream_then_sigterm(served, texts))
        assert served.proc.wait(20) == 0
    events = exported(data)
    assert [e["text"] for e in events if e["type"] == "message"] == texts
    assert events[-1]["type"] == "leave", "not published: the server is shutting down"


def seed_old_events(db: Path, room: str, days: float, count: int) -> None:
    """Store ``count`` messages in ``room`` stamped ``days`` ago, as an older run would have."""

    async def seed() -> None:
        history = SQLiteHistory(str(db))
        await history.open()
        try:
            stamp = int((time.time() - days * 86_400) * 1000)
            user = User("guest:old", "Old")
            await history.append([Draft("message", room, user, stamp, f"old {i}")
                                  for i in range(count)])
        finally:
            await history.close()

    asyncio.run(seed())


def test_retention_flags_of_the_console_script(tmp_path: Path) -> None:
    """`revchat serve --retention-count 5 --retention-days 1`: in the background (after an append,
    once its interval of a few seconds has passed) a room is cut to its newest 5 events, and
    events older than a day go from every room."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    seed_old_events(data / "revchat.db", "attic", days=10, count=2)
    args = serve_args(data, "--retention-count", "5", "--retention-days", "1")
    with serve(*args, log=tmp_path / "log") as served:

        async def scenario() -> list[dict[str, Any]]:
            cookie = await sign_in(served.url, "Ann")
            headers = {"cookie": f"revchat_session={cookie}"}
            async with connect(served.port, "lobby", cookie) as ws, \
                    httpx.AsyncClient(base_url=served.url, headers=headers) as client:
                await frame(ws)
                for i in range(10):
                    await say(ws, f"m{i}")
                last = [await frame_of(ws, "message") for _ in range(10)][-1]
                async with asyncio.timeout(40):
                    while True:  # polling: nothing announces a retention pass
                        attic = (await client.get("/rooms/attic/history")).json()["events"]
                        lobby = (await client.get("/rooms/lobby/history?limit=200")).json()
                        if attic == [] and len(lobby["events"]) == 5:
                            break
                        await say(ws, "tick")  # an append lets a pass start
                        last = await frame_of(ws, "message")
                        await asyncio.sleep(0.5)  # two reads a turn: within scroll-back's 5/s
                assert lobby["more"] is False
                assert lobby["events"][-1]["id"] == last["id"], "the newest are the ones kept"
                events: list[dict[str, Any]] = lobby["events"]
                return events

        kept = asyncio.run(scenario())
        assert served.stop() == 0
    result = runner.invoke(cli, ["history", "export", "lobby", "--data-dir", str(data)])
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()][:5] == \
        [e["id"] for e in kept]


@pytest.mark.redis
def test_history_export_and_purge_on_redis(tmp_path: Path) -> None:
    """`revchat history export|purge --broker redis://...` read and empty the room's stream, under
    --redis-prefix (another prefix is another deployment)."""
    with redis_server() as redis:

        async def chatter() -> list[dict[str, Any]]:
            settings = make_settings(tmp_path, broker=redis.url, redis_prefix="chat1", rate=0.0)
            async with live_server(settings) as live:
                return await chat(live.port, live.url, ["on redis 1", "on redis 2"])

        sent = asyncio.run(chatter())
        where = ["--broker", redis.url, "--redis-prefix", "chat1", "--data-dir", str(tmp_path)]
        result = runner.invoke(cli, ["history", "export", "lobby", *where])
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [e["type"] for e in lines] == ["join", "message", "message", "leave"]
        assert [e for e in lines if e["type"] == "message"] == sent
        out = tmp_path / "lobby.jsonl"
        result = runner.invoke(cli, ["history", "export", "lobby", "-o", str(out), *where])
        assert [json.loads(line) for line in out.read_text().splitlines()] == lines
        other = runner.invoke(cli, ["history", "export", "lobby", "--broker", redis.url,
                                    "--redis-prefix", "chat2", "--data-dir", str(tmp_path)])
        assert other.exit_code == 0 and other.stdout == ""
        result = runner.invoke(cli, ["history", "purge", "lobby", *where], input="n\n")
        assert result.exit_code == 1 and "nothing deleted" in result.output
        result = runner.invoke(cli, ["history", "purge", "lobby", "--yes", *where])
        assert result.exit_code == 0 and "deleted 4 events" in result.output
        result = runner.invoke(cli, ["history", "export", "lobby", *where])
        assert result.exit_code == 0 and result.stdout == ""
    result = runner.invoke(cli, ["history", "export", "lobby", *where])
    assert result.exit_code == 1 and "cannot reach redis" in result.output
