"""Durable history (SPEC §3-5) with a real server process: restarts by SIGTERM and SIGKILL,
resume across a restart, concurrent rooms, and `revchat history export|purge`."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from revchat.cli import cli
from tests.support.live import connect, frame, frame_of, say, sign_in
from tests.support.ports import free_port
from tests.support.process import serve

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
    """Writers in several rooms at once: each room's history holds its events once, in order."""
    data = tmp_path / "data"
    with serve(*serve_args(data), log=tmp_path / "log") as served:

        async def run() -> dict[str, list[dict[str, Any]]]:
            rooms = [f"room{i}" for i in range(4)]
            results = await asyncio.gather(*(
                chat(served.port, served.url, [f"{room}-{n}" for n in range(25)], room)
                for room in rooms for _ in range(2)))
            return dict(zip([r for r in rooms for _ in range(2)], results, strict=True))

        asyncio.run(run())
        for i in range(4):
            room = f"room{i}"
            got = asyncio.run(welcome(served.port, served.url, room=room))
            assert got["archive"] is not None
            result = runner.invoke(cli, ["history", "export", room, "--data-dir", str(data)])
            events = [json.loads(line) for line in result.stdout.splitlines()]
            messages = [e["text"] for e in events if e["type"] == "message"]
            assert sorted(messages) == sorted([f"{room}-{n}" for n in range(25)] * 2)
            ids = [int(e["id"]) for e in events]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_history_endpoint_pages_backwards(tmp_path: Path) -> None:
    """GET /rooms/R/history?before=ID&limit=N pages backwards, oldest first, with `more`."""
    import httpx

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
