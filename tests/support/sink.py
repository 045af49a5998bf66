"""A socket as the engine sees it, in memory: what the engine, fan-out and broker tests hand
:meth:`revchat.core.engine.Engine.subscribe` instead of a WebSocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

TIMEOUT = 15.0


def line_frame(text: str) -> bytes:
    """The frame encoding of the engine tests: UTF-8 text, one JSON line per frame (what
    :class:`Sink` reads back)."""
    return text.encode() + b"\n"


class Sink:
    """Keeps every write (JSON lines: :func:`line_frame`) and can pretend not to
    be read: while ``stalled``, what is written counts as unsent (``get_write_buffer_size``)."""

    def __init__(self, stalled: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.writes = 0
        self.stalled = stalled
        self.unsent = 0
        self.closed: tuple[int, str] | None = None
        self.writes_after_close = 0
        self._frames: list[dict[str, Any]] = []
        self._parsed = 0
        self._changed = asyncio.Event()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def write(self, data: bytes) -> None:
        if self.closed is not None:
            self.writes_after_close += 1
        if self.stalled:
            self.unsent += len(data)
        self.chunks.append(bytes(data))
        self.writes += 1
        self._changed.set()

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self._changed.set()

    def frames(self) -> list[dict[str, Any]]:
        """Every frame received so far, oldest first (each parsed once)."""
        for chunk in self.chunks[self._parsed:]:
            self._frames.extend(json.loads(line) for line in chunk.splitlines())
        self._parsed = len(self.chunks)
        return self._frames

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The stored events received (archive excluded), of ``kind`` if given."""
        return [f for f in self.frames()
                if f["type"] in ("message", "join", "leave") and kind in (None, f["type"])]

    async def until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Wait until ``predicate()`` holds, checking it after each write or close."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """Wait until at least ``count`` frames came; return them all."""
        await self.until(lambda: len(self.frames()) >= count)
        return self.frames()

    async def count(self, kind: str, n: int) -> None:
        """Wait until at least ``n`` live events of ``kind`` were written."""
        await self.until(lambda: len(self.events(kind)) >= n)
