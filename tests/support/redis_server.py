"""A throwaway ``redis-server`` for tests: loopback, a free port, its own temp dir.

Tests never touch the machine's Redis on 6379. A :class:`RedisServer` can be killed and started
again on the same port and dir (the restart tests), with its data (``persist=True`` keeps an
append-only file that survives a kill) or empty (``restart(empty=True)``, or the default
``persist=False``, which runs ``--save "" --appendonly no``).

The methods block for a few milliseconds while the server starts or stops; from async code call
them through ``asyncio.to_thread`` so the brokers under test keep running.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port


def redis_server_binary() -> str | None:
    """The ``redis-server`` to run: ``$REDIS_SERVER`` if set, else the one on ``PATH``."""
    return shutil.which(os.environ.get("REDIS_SERVER") or "redis-server")


def require_redis_server() -> str:
    """The binary, or the test's end: under CI (``CI=true``) a missing one fails, never skips."""
    binary = redis_server_binary()
    if binary is None:
        message = "redis-server is not installed (set REDIS_SERVER or put it on PATH)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _ask(port: int, command: bytes, until: bytes, timeout: float = 0.5) -> bytes:
    """Send one inline command to ``port``; the reply up to ``until`` (b"" if nobody answers)."""
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(command + b"\r\n")
            while until not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return b""
    return data


def ping(port: int) -> bool:
    """True if a Redis on ``port`` answers PING (raw RESP, so no client library is needed)."""
    return _ask(port, b"PING", b"\r\n").startswith(b"+PONG")


def server_pid(port: int) -> int | None:
    """The process id of the Redis answering on ``port`` (``INFO server``), or None."""
    match = re.search(rb"process_id:(\d+)\r\n", _ask(port, b"INFO server", b"run_id:"))
    return int(match.group(1)) if match else None


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, restartable on the same port and dir."""

    def __init__(
        self, *, persist: bool = False, binary: str | None = None, directory: Path | None = None
    ) -> None:
        self.binary = binary or require_redis_server()
        self.persist = persist
        self._own_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="revchat-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _args(self) -> list[str]:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--daemonize", "no", "--save", "",
                "--logfile", str(self.dir / "redis.log")]
        if self.persist:
            # fsync on every write so that a SIGKILL loses nothing the tests wrote.
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        return args

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers PING.

        The first start picks another port if the chosen one was taken meanwhile; a restart
        insists on the same port, because the clients under test keep its URL.
        """
        if self.running:
            return
        for _ in range(5):
            self.process = subprocess.Popen(
                self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                # Another test run's server could hold the port: only ours counts.
                if ping(self.port) and server_pid(self.port) == self.process.pid:
                    self._started = True
                    return
                if self.process.poll() is not None:
                    break
                time.sleep(0.01)
            self.kill()
            if self._started:
                break
            self.port = free_port()
        logfile = self.dir / "redis.log"
        log = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")

    def stop(self) -> None:
        """Shut the server down gracefully (SIGTERM) and wait for it."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; its clients see the socket die."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self, *, empty: bool = False) -> None:
        """Kill the server and start it again on the same port and dir; ``empty`` drops its data."""
        self.kill()
        if empty:
            for path in self.dir.iterdir():
                if path.name != "redis.log":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its dir (if this object made it)."""
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def redis_server(*, persist: bool = False) -> Iterator[RedisServer]:
    """A running :class:`RedisServer` for the ``with`` block; killed and cleaned up after it."""
    with RedisServer(persist=persist) as server:
        yield server
