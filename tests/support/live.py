"""A real revchat server on an ephemeral loopback port, run in the test's event loop, and a
WebSocket client that speaks docs/protocol.md. Shared by the socket, engine-over-HTTP and Redis tests."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import websockets
from sanic import Sanic
from websockets.asyncio.client import ClientConnection

from revchat.core.engine import Engine
from revchat.settings.config import Settings, load
from revchat.web.adapter import Protocol as SocketProtocol
from revchat.web.app import create_app
from tests.support.ports import free_socket

Sanic.test_mode = True


def make_settings(tmp_path: Path, **changes: Any) -> Settings:
    """Settings for a test: memory history, a fixed secret key, the default limits; ``changes``
    go through the same loading as flags, so derived values follow (``rate=0`` turns the user
    rate and frame pacing off too)."""
    flags = {"data_dir": tmp_path, "history": "memory://", "secret_key": TEST_KEY,
             "ping_interval": 20.0, "write_delay": 1.0, **changes}
    return load(flags, environ={}).settings


TEST_KEY = "test-secret-" + "x" * 32


@dataclass
class Live:
    app: Sanic
    settings: Settings
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def engine(self) -> Engine:
        engine: Engine = self.app.ctx.engine
        return engine

    async def sign_in(self, name: str) -> str:
        """A guest session cookie for ``name``."""
        return await sign_in(self.url, name)

    def connect(self, room: str, cookie: str | None, **kwargs: Any) -> Any:
        return connect(self.port, room, cookie, **kwargs)


async def sign_in(url: str, name: str) -> str:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/auth/guest", data={"name": name})
        assert response.status_code == 302, response.text
        return response.cookies["revchat_session"]


def connect(port: int, room: str, cookie: str | None, since: str | None = None,
            origin: str | None = None, **kwargs: Any) -> Any:
    """A websockets client connection to the room's socket with the session cookie."""
    headers = {"Cookie": f"revchat_session={cookie}"} if cookie else {}
    query = f"?since={since}" if since is not None else ""
    return websockets.connect(
        f"ws://127.0.0.1:{port}/rooms/{room}/socket{query}", additional_headers=headers,
        origin=origin, open_timeout=5, close_timeout=2, **kwargs,  # type: ignore[arg-type]
    )


async def frame(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next JSON frame from the server."""
    data = await asyncio.wait_for(ws.recv(), timeout)
    result: dict[str, Any] = json.loads(data)
    return result


async def frame_of(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame of type ``kind``, skipping others (typing notices, other users' joins)."""
    async with asyncio.timeout(timeout):
        while True:
            got = await frame(ws, timeout)
            if got["type"] == kind:
                return got


async def say(ws: ClientConnection, text: str) -> None:
    await ws.send(json.dumps({"type": "say", "text": text}))


@asynccontextmanager
async def serving(app: Sanic, sock: socket.socket,
                  drain: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[None]:
    """Serve ``app`` on a bound socket in this event loop, with its listeners, then stop it
    as SIGTERM would (``drain`` runs after the sockets close, before the last listeners)."""
    server = await app.create_server(sock=sock, return_asyncio_server=True, access_log=False,
                                     protocol=SocketProtocol)
    assert server is not None
    try:
        await server.startup()
        await server.before_start()
        await server.after_start()
        await server.start_serving()
    except BaseException:
        sock.close()  # the engine did not open: nothing else to stop
        raise
    try:
        yield
    finally:
        await shut_down(server, sock, drain)


async def shut_down(server: Any, sock: socket.socket,
                    drain: Callable[[], Awaitable[None]] | None = None) -> None:
    """Stop a server :func:`serving` (or a test's own steps) started, as SIGTERM would. Each
    step runs whatever the one before it raised: a drain that times out must not leave the
    engine open (after_stop) or the port bound."""
    try:
        try:
            await server.before_stop()
        finally:
            server.close()
            await server.wait_closed()
        if drain is not None:
            await drain()
    finally:
        try:
            await server.after_stop()
        finally:
            sock.close()


async def handlers_done(app: Sanic) -> None:
    """Wait (5 s at most) until the socket handlers have finished and let their rooms go, as
    the server's own shutdown does."""
    engine: Engine = app.ctx.engine
    await asyncio.wait_for(engine.emptied.wait(), 5)


@asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[Live]:
    """Start revchat on a free loopback port in this event loop; stop it like SIGTERM would."""
    sock = free_socket()
    port = sock.getsockname()[1]
    settings = replace(settings, port=port, public_url=f"http://127.0.0.1:{port}")
    app = create_app(settings, name=f"revchat_test_{uuid.uuid4().hex[:8]}")

    async with serving(app, sock, lambda: handlers_done(app)):
        yield Live(app, settings, port)
