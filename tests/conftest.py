"""Fixtures shared by the suite: settings in a temp dir and a live server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from revchat.config import Settings
from tests.live import Live, live_server, make_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with live_server(settings) as server:
        yield server
