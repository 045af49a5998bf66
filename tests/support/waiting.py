"""Waiting on what no event announces: a server's own state after a client is gone, a background
task's, Redis's. Everything a test can be told of is awaited directly instead."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

TIMEOUT = 15.0


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = TIMEOUT) -> None:
    """Wait until ``check()`` (a plain or async function) holds; fail after ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while True:
            done = check()
            if await done if inspect.isawaitable(done) else done:
                return
            await asyncio.sleep(0.01)  # polling: nothing else tells
