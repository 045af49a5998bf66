"""Fixtures shared by the suite: settings in a temp dir and a live server; Hypothesis's profile."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sanic.config
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from revchat.settings.config import Settings
from tests.support.brokers import Make, brokers
from tests.support.live import Live, live_server, make_settings
from tests.support.redis_server import RedisServer

# No deadline: a shared 2-core machine stalls at times, and speed is measured in benchmarks/.
# Under CI the examples are derandomized (the same every run, so main stays green or red for a
# reason); locally each run explores new ones. Nothing is kept between runs.
hypothesis_settings.register_profile(
    "revchat", deadline=None, database=None, print_blob=True,
    derandomize=os.environ.get("CI", "").lower() in {"1", "true", "yes"},
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.load_profile("revchat")

# Each Sanic app puts a "once" filter for Sanic's deprecations ahead of pytest's "error", so a
# deprecated use would only be printed: keep pytest's filters (pyproject.toml) in charge.
sanic.config.filterwarnings = lambda *args, **kwargs: None  # type: ignore[assignment]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with live_server(settings) as server:
        yield server


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free port (the machine's 6379 is not for tests);
    under CI a missing redis-server fails the test, never skips it."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for a whole test module, for tests that keep apart by key prefix."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server this test may kill; it keeps its data across a kill (append-only file)."""
    with RedisServer(persist=True) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    """A Redis key prefix of the test's own, so tests can share one server."""
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
async def make(prefix: str) -> AsyncIterator[Make]:
    """Opens Redis broker workers on a server's URL (tests.support.brokers); closes them after."""
    async with brokers(prefix) as make_broker:
        yield make_broker
