"""`revchat serve` as the installed console script in a subprocess, for tests that restart,
signal or kill a real server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from tests.support.live import connect, frame, sign_in
from tests.support.ports import free_port

SCRIPT = str(Path(sys.executable).parent / "revchat")


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    log: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal the server and wait for it to exit; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@contextlib.contextmanager
def serve(*args: str, port: int | None = None, log: Path, env: dict[str, str] | None = None,
          healthy: bool = True, host: str = "127.0.0.1") -> Iterator[Served]:
    """Run `revchat serve ARGS --host HOST --port PORT`, wait for /healthz, and always reap it
    (the whole process group: a server with --workers has children)."""
    port = port or free_port()
    with log.open("a") as out:
        proc = subprocess.Popen(
            [SCRIPT, "serve", "--host", host, "--port", str(port), *args],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env or dict(os.environ),
            start_new_session=True,
        )
    served = Served(proc, port, log, host)
    try:
        if healthy:
            wait_healthy(served)
        yield served
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_healthy(served: Served, attempts: int = 400) -> None:
    """Wait until /healthz answers 200 (connections are refused until the server listens)."""
    for _ in range(attempts):
        if served.proc.poll() is not None:
            raise AssertionError(f"revchat serve exited early:\n{served.output()}")
        try:
            if httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            served.proc.wait(0.05)  # also notices an early exit
    raise AssertionError(f"revchat serve did not become healthy:\n{served.output()}")


def healthz(served: Served) -> dict[str, Any]:
    """One /healthz answer, on a new connection (so any worker may take it)."""
    body: dict[str, Any] = httpx.get(f"{served.url}/healthz", timeout=5).json()
    return body


def worker_connections(served: Served, workers: int, total: int,
                       attempts: int = 400) -> dict[int, int]:
    """Each worker's open sockets by process id, read from /healthz answers (each on a new
    connection, which any worker may accept) until ``workers`` of them add up to ``total``."""
    seen: dict[int, int] = {}
    for _ in range(attempts):
        body = healthz(served)
        seen[body["worker"]] = body["connections"]
        if len(seen) == workers and sum(seen.values()) == total:
            return seen
    raise AssertionError(f"the workers' sockets never added up to {total}: {seen}")


def children(pid: int) -> set[int]:
    """The process ids whose parent is ``pid`` (a server's worker processes)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ")"
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


async def open_on_both_workers(served: Served, most: int = 30) -> list[ClientConnection]:
    """Sockets of new guests in the lobby, opened one by one until both workers hold some (at
    least four in all); the kernel decides which worker accepts each."""
    sockets: list[ClientConnection] = []
    try:
        while True:
            cookie = await sign_in(served.url, f"U{len(sockets)}")
            ws = await connect(served.port, "lobby", cookie).__aenter__()
            sockets.append(ws)
            await frame(ws)
            held = await asyncio.to_thread(worker_connections, served, 2, len(sockets))
            if len(sockets) >= 4 and all(held.values()):
                return sockets
            assert len(sockets) < most, f"every socket landed on one worker: {held}"
    except BaseException:
        for ws in sockets:
            await ws.close()
        raise
