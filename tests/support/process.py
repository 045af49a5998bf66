"""`revchat serve` as the installed console script in a subprocess, for tests that restart,
signal or kill a real server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.ports import free_port

SCRIPT = str(Path(sys.executable).parent / "revchat")


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal the server and wait for it to exit; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@contextlib.contextmanager
def serve(*args: str, port: int | None = None, log: Path, env: dict[str, str] | None = None,
          healthy: bool = True) -> Iterator[Served]:
    """Run `revchat serve ARGS --port PORT`, wait for /healthz, and always reap it."""
    port = port or free_port()
    with log.open("a") as out:
        proc = subprocess.Popen(
            [SCRIPT, "serve", "--port", str(port), *args],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env or dict(os.environ),
            start_new_session=True,
        )
    served = Served(proc, port, log)
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
