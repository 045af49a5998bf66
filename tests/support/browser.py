"""Helpers for the browser tests: the system Chromium through Playwright, guests signed in through
the real sign-in form, a watch on each page (dialogs, script errors, CSP refusals), and a revchat
server that can be stopped and started again on the same port (the reconnect test)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sanic import Sanic

from revchat.settings.config import Settings
from revchat.web.adapter import Protocol as SocketProtocol
from revchat.web.app import create_app
from tests.support.live import Live, handlers_done, shut_down
from tests.support.ports import free_socket

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 760}
PHONE = {"width": 375, "height": 740}
# Screenshots go to artifacts/ (ignored by git); REVCHAT_SCREENSHOTS=docs refreshes the README's.
DOCS = Path(__file__).resolve().parents[2] / (
    "docs" if os.environ.get("REVCHAT_SCREENSHOTS") == "docs" else "artifacts")


def require_chromium() -> None:
    """Skip without the system Chromium (or Playwright), but fail under CI=true: CI must run them."""
    problem = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        problem = "Playwright for Python is not installed (pip install -e '.[test]')"
    if problem is None and not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        problem = f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)"
    if problem is None:
        return
    if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
        pytest.fail(f"browser tests cannot run under CI: {problem}", pytrace=False)
    pytest.skip(problem)


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless system Chromium; Playwright never downloads a browser here."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Watch:
    """What a page did that it must not: open a dialog, throw, or be refused by the CSP."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    csp: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        async def on_dialog(dialog: Any) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            await dialog.dismiss()

        def on_console(message: Any) -> None:
            text = message.text
            if "Content Security Policy" in text or "Refused to" in text:
                self.csp.append(text)

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", on_console)

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"dialogs opened: {self.dialogs}"
        assert self.errors == [], f"script errors: {self.errors}"
        assert self.csp == [], f"refused by the Content-Security-Policy: {self.csp}"


async def guest_page(browser: Any, watch: Watch, base_url: str, name: str, room: str = "lobby",
                     **context_options: Any) -> Any:
    """A new browser context signed in as guest ``name`` through the form, on the room's page,
    connected (the page's ``data-state`` is ``online``)."""
    context_options.setdefault("viewport", DESKTOP)
    context = await browser.new_context(base_url=base_url, **context_options)
    page = await context.new_page()
    watch.attach(page)
    await page.goto("/")
    await page.get_by_label("Nickname").fill(name)
    await page.get_by_role("button", name="Enter as guest").click()
    await page.locator(".welcome").wait_for()
    await page.goto(f"/rooms/{room}")
    await page.wait_for_selector("body[data-state=online]")
    return page


# -- a server that can be restarted on the same port ----------------------------------------------


class Server:
    """revchat in this event loop, like :func:`tests.live.live_server`, in steps: ``start`` binds
    and opens the engine (connections wait in the listen backlog), ``serve`` accepts them,
    ``stop`` shuts down like SIGTERM. A new Server on the same port and history is a restart."""

    def __init__(self, settings: Settings, port: int = 0) -> None:
        self._settings = settings
        self._port = port
        self._server: Any = None
        self._sock: socket.socket | None = None
        self.live: Live | None = None

    async def start(self) -> Live:
        sock = free_socket(self._port)
        port = sock.getsockname()[1]
        settings = replace(self._settings, port=port, public_url=f"http://127.0.0.1:{port}")
        app = create_app(settings, name=f"revchat_browser_{uuid.uuid4().hex[:8]}")
        server = await app.create_server(sock=sock, return_asyncio_server=True, access_log=False,
                                         protocol=SocketProtocol)
        assert server is not None
        await server.startup()
        await server.before_start()
        self._sock, self._server = sock, server
        self.live = Live(app, settings, port)
        return self.live

    async def serve(self) -> None:
        assert self._server is not None
        await self._server.after_start()
        await self._server.start_serving()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        assert self.live is not None
        # As tests.support.live.serving: a step that fails (the rooms not let go in time) still
        # closes the engine, the port and the app's registration.
        app = self.live.app
        try:
            assert self._sock is not None
            await shut_down(server, self._sock, lambda: handlers_done(app))
        finally:
            Sanic.unregister_app(app)


@asynccontextmanager
async def server_on(settings: Settings, port: int = 0) -> AsyncIterator[Server]:
    """A started and serving :class:`Server`; stopped on the way out if the test has not."""
    server = Server(settings, port)
    await server.start()
    try:
        await server.serve()
        yield server
    finally:
        await server.stop()
