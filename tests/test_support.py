"""The test helpers themselves: what they promise the other tests (skip or fail when a service is
missing, always stop what they started)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sanic import HTTPResponse, Request, Sanic, text

from revchat.web.requests import App
from tests.support import browser
from tests.support.browser import require_chromium
from tests.support.live import serving
from tests.support.ports import free_socket


def outcome(check: Callable[[], object]) -> BaseException | None:
    """What ``check()`` raised, whatever it was. (Under ``pytest.raises(pytest.fail.Exception)`` a
    helper that skips instead of failing would skip the test that checks it, not fail it.)"""
    try:
        check()
    except BaseException as exc:
        return exc
    return None


def test_missing_chromium_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With CI=true a missing /usr/bin/chromium fails the browser tests; without CI it skips them."""
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    for value in ("true", "TRUE", "1", "yes"):
        monkeypatch.setenv("CI", value)
        failed = outcome(require_chromium)
        assert isinstance(failed, pytest.fail.Exception), f"CI={value}: {failed!r}"
        assert "no-chromium is missing" in str(failed)
    for value in ("", "false"):
        monkeypatch.setenv("CI", value)
        skipped = outcome(require_chromium)
        assert isinstance(skipped, pytest.skip.Exception), f"CI={value!r}: {skipped!r}"
        assert "no-chromium is missing" in str(skipped)
    monkeypatch.delenv("CI")
    assert isinstance(outcome(require_chromium), pytest.skip.Exception)


def test_a_chromium_that_cannot_run_counts_as_missing(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """A file at the Chromium path that is not executable fails under CI like a missing one."""
    stub = tmp_path / "chromium"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o644)
    monkeypatch.setattr(browser, "CHROMIUM", stub)
    monkeypatch.setenv("CI", "true")
    failed = outcome(require_chromium)
    assert isinstance(failed, pytest.fail.Exception), repr(failed)
    assert "browser tests cannot run under CI" in str(failed)


def test_missing_playwright_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Playwright for Python the browser tests fail under CI too, naming the package."""
    monkeypatch.setitem(sys.modules, "playwright.async_api", None)
    monkeypatch.setenv("CI", "true")
    failed = outcome(require_chromium)
    assert isinstance(failed, pytest.fail.Exception), repr(failed)
    assert "Playwright for Python is not installed" in str(failed)


def test_present_chromium_neither_skips_nor_fails(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """An executable at the Chromium path (and Playwright installed) lets the browser tests run."""
    pytest.importorskip("playwright.async_api")
    stub = tmp_path / "chromium"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    monkeypatch.setattr(browser, "CHROMIUM", stub)
    monkeypatch.setenv("CI", "true")
    assert outcome(require_chromium) is None


async def test_serving_stops_the_app_even_when_the_drain_fails() -> None:
    """If the drain raises, `serving` still runs the app's after_stop listeners and closes the
    listening socket, and the drain's error reaches the test."""
    app = Sanic(f"support_{uuid.uuid4().hex[:8]}")
    stopped: list[str] = []

    @app.get("/")
    async def index(request: Request) -> HTTPResponse:
        return text("ok")

    @app.after_server_stop
    async def after(app: App) -> None:
        stopped.append("after_stop")

    async def drain() -> None:
        raise TimeoutError("the handlers did not finish")

    sock = free_socket()
    with pytest.raises(TimeoutError, match="did not finish"):
        async with serving(app, sock, drain):
            pass
    assert stopped == ["after_stop"]
    assert sock.fileno() == -1, "the listening socket is closed"


async def test_serving_closes_the_socket_when_the_app_cannot_start() -> None:
    """An app whose before_start listener fails leaves no listening socket behind."""
    app = Sanic(f"support_{uuid.uuid4().hex[:8]}")

    @app.before_server_start
    async def refuse(app: App) -> None:
        raise RuntimeError("the store is down")

    sock = free_socket()
    with pytest.raises(RuntimeError, match="the store is down"):
        async with serving(app, sock):
            pass
    assert sock.fileno() == -1
