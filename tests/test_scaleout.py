"""Scale-out through Redis (the README) with real processes: two servers sharing rooms, several
workers, Redis lost and back, and the one-line failures at start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from revchat.core.events import id_key
from tests.support.live import connect, frame, frame_of, say, sign_in
from tests.support.ports import free_port
from tests.support.process import SCRIPT, Served, children, open_on_both_workers, serve
from tests.support.redis_server import RedisServer

SECRET = "shared-secret-" + "k" * 40


def server_args(redis: RedisServer, data: Path, *extra: str) -> tuple[str, ...]:
    return ("--broker", redis.url, "--secret-key", SECRET, "--data-dir", str(data),
            "--rate", "0", *extra)


def healthz(served: Served) -> httpx.Response:
    return httpx.get(f"{served.url}/healthz", timeout=5)


@pytest.mark.redis
def test_two_servers_share_a_room(redis: RedisServer, tmp_path: Path) -> None:
    """Users on two servers see each other, in one order, with members and joins agreeing."""
    with serve(*server_args(redis, tmp_path / "a"), log=tmp_path / "a.log") as one, \
            serve(*server_args(redis, tmp_path / "b"), log=tmp_path / "b.log") as two:

        async def scenario() -> None:
            ann = await sign_in(one.url, "Ann")
            bob = await sign_in(two.url, "Bob")
            async with connect(one.port, "lobby", ann) as a:
                await frame(a)
                await frame_of(a, "join")
                async with connect(two.port, "lobby", bob) as b:
                    welcome = await frame(b)
                    assert [m["name"] for m in welcome["members"]] == ["Ann"]
                    assert (await frame_of(a, "join"))["user"]["name"] == "Bob"
                    for i in range(5):
                        await say(a, f"a{i}")
                        await say(b, f"b{i}")
                    seen_a = [await frame_of(a, "message") for _ in range(10)]
                    seen_b = [await frame_of(b, "message") for _ in range(10)]
                    assert [m["id"] for m in seen_a] == [m["id"] for m in seen_b]
                    assert sorted(m["text"] for m in seen_a) == sorted(
                        [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)])
                    # a session from server one is valid on server two (shared secret key)
                    async with connect(two.port, "lobby", ann, since=seen_a[4]["id"]) as again:
                        resumed = await frame(again)
                        assert resumed["resumed"] is True
                        assert [e["id"] for e in resumed["archive"]][:5] == \
                            [m["id"] for m in seen_a[5:]]
                        assert sorted(m["name"] for m in resumed["members"]) == ["Ann", "Bob"]
                leave = await frame_of(a, "leave")
                assert leave["user"]["name"] == "Bob"

        asyncio.run(scenario())


@pytest.mark.redis
def test_several_workers_are_one_room(redis: RedisServer, tmp_path: Path) -> None:
    """--workers 2: with sockets on both workers (each worker's /healthz counts its own), every
    client receives every message, all in one order."""
    with serve(*server_args(redis, tmp_path / "d", "--workers", "2"),
               log=tmp_path / "w.log") as served:
        pids = {healthz(served).json()["worker"] for _ in range(40)}
        assert len(pids) == 2, "two workers answer"
        assert pids <= children(served.proc.pid), "the workers are the server's processes"

        async def scenario() -> None:
            clients = await open_on_both_workers(served)
            try:
                for ws in clients:  # every client has seen the last one join
                    while (await frame_of(ws, "join"))["user"]["name"] != f"U{len(clients) - 1}":
                        pass
                texts = [f"from U{i} #{n}" for n in range(3) for i in range(len(clients))]
                for n in range(3):  # all at once, from sockets on both workers
                    for i, ws in enumerate(clients):
                        await say(ws, f"from U{i} #{n}")
                orders = [[(m["id"], m["text"]) for m in
                           [await frame_of(ws, "message", timeout=15) for _ in texts]]
                          for ws in clients]
                assert all(order == orders[0] for order in orders), "one order for everyone"
                assert sorted(text for _, text in orders[0]) == sorted(texts)
                ids = [id_key(i) for i, _ in orders[0]]
                assert ids == sorted(ids) and len(set(ids)) == len(ids)  # type: ignore[type-var]
            finally:
                for ws in clients:
                    await ws.close()

        asyncio.run(scenario())
        assert served.stop() == 0


@pytest.mark.redis
def test_redis_lost_and_back(redis: RedisServer, tmp_path: Path) -> None:
    """Redis killed: 503 naming the broker and an error frame for say; back: all recovers."""
    with serve(*server_args(redis, tmp_path / "d"), log=tmp_path / "log") as served:

        async def scenario() -> None:
            ann, bob = await sign_in(served.url, "Ann"), await sign_in(served.url, "Bob")
            async with connect(served.port, "lobby", ann) as a, \
                    connect(served.port, "lobby", bob) as b:
                await frame(a)
                await frame(b)
                await say(a, "before")
                before = await frame_of(b, "message")
                redis.kill()
                await say(a, "while down")
                error = await frame_of(a, "error")
                assert error["code"] == "unavailable"
                health = await asyncio.to_thread(healthz, served)
                assert health.status_code == 503 and "broker" in health.json()["problem"]
                redis.start()
                async with asyncio.timeout(30):
                    # another process: polling its health is the only signal there is
                    while (await asyncio.to_thread(healthz, served)).status_code != 200:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                await say(a, "after")
                after = await frame_of(b, "message")
                assert after["text"] == "after"
                assert id_key(after["id"]) > id_key(before["id"])  # type: ignore[operator]

        asyncio.run(scenario())
    assert "Traceback" not in served.output()


def test_redis_unreachable_at_start_is_one_line(tmp_path: Path) -> None:
    """No Redis at the broker URL: one clear line and exit 1."""
    port = free_port()
    result = subprocess.run(
        [SCRIPT, "serve", "--broker", f"redis://127.0.0.1:{port}/0", "--data-dir",
         str(tmp_path), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("revchat: ") and f"127.0.0.1:{port}" in lines[-1]
    assert "Traceback" not in result.stderr


def test_missing_redis_extra_is_one_line(tmp_path: Path) -> None:
    """Without the redis package, asking for redis:// names the extra to install."""
    code = ("import sys; sys.modules['redis'] = None; sys.argv = ['revchat', 'serve', "
            "'--broker', 'redis://127.0.0.1:1/0']; from revchat.cli.main import main; main()")
    env: dict[str, Any] = dict(os.environ, REVCHAT_DATA_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == \
        "revchat: --broker redis:// needs the redis extra: pip install 'revchat[redis]'"
