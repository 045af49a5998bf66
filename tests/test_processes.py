"""Real processes dying: `revchat serve --workers 2` on a real redis-server, one worker process
killed with SIGKILL as a crash or the OOM killer would. Slow by nature: the dead worker's members
are swept only when its heartbeat (15 s) has expired, so this file takes about 20-25 s."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from websockets.protocol import State

from tests.support.live import connect, frame, frame_of, say, sign_in
from tests.support.process import (
    children,
    healthz,
    open_on_both_workers,
    serve,
    worker_connections,
)
from tests.support.redis_server import RedisServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.redis

SWEPT_WITHIN = 45.0
"""Seconds to wait for the sweep: README says about 1⅓ times 15 s; this is generous for a loaded box."""


def test_a_killed_worker_is_swept_and_the_other_serves_on(redis: RedisServer,
                                                          tmp_path: Path) -> None:
    """SLOW (~20 s): --workers 2, one worker SIGKILLed. Its sockets drop; the other worker goes on
    serving (its sockets chat, /healthz is 200 from it alone, new sockets open); and once the
    dead worker's heartbeat has expired, a leave is published for each of its users, and for
    nobody else."""
    with serve("--workers", "2", "--broker", redis.url, "--secret-key", "process-secret-" + "k" * 40,
               "--data-dir", str(tmp_path / "d"), "--rate", "0", log=tmp_path / "log") as served:

        async def scenario() -> None:
            clients = await open_on_both_workers(served)
            names = {ws: f"U{i}" for i, ws in enumerate(clients)}
            try:
                held = await asyncio.to_thread(worker_connections, served, 2, len(clients))
                workers = children(served.proc.pid)
                assert set(held) <= workers
                victim = min(held, key=lambda pid: (held[pid] == 0, pid))
                os.kill(victim, signal.SIGKILL)
                # the dead worker's sockets are closed by the kernel: the clients notice by
                # themselves, and no other signal tells which sockets were on it
                await eventually(lambda: sum(ws.state is State.CLOSED for ws in clients)
                                 == held[victim])
                dead = {names[ws] for ws in clients if ws.state is State.CLOSED}
                alive = [ws for ws in clients if ws.state is not State.CLOSED]
                assert dead and alive

                survivor = (await asyncio.to_thread(healthz, served))["worker"]
                assert survivor != victim
                await say(alive[0], "still here")
                for ws in alive:
                    assert (await frame_of(ws, "message", timeout=15))["text"] == "still here"
                newcomer = await sign_in(served.url, "Late")
                async with connect(served.port, "lobby", newcomer) as late:
                    welcome = await frame(late)
                    assert welcome["you"]["name"] == "Late"

                left: set[str] = set()
                async with asyncio.timeout(SWEPT_WITHIN):
                    while left != dead:
                        leave = await frame_of(alive[0], "leave", timeout=SWEPT_WITHIN)
                        assert leave["user"]["name"] in dead | {"Late"}, leave
                        if leave["user"]["name"] != "Late":
                            left.add(leave["user"]["name"])
                answers = {(await asyncio.to_thread(healthz, served))["worker"] for _ in range(10)}
                assert answers == {survivor}
            finally:
                for ws in clients:
                    await ws.close()

        asyncio.run(scenario())
        assert served.proc.poll() is None, "the server went on after losing a worker"
