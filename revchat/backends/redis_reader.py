"""The Redis broker's reading side: one XREAD at a time over the streams of the rooms a worker
holds, from the last id it delivered in each.

The XREAD also waits on ``{p}:wake:{worker}``, a one-entry stream written to when the worker
starts holding a room, so the next XREAD includes the room at once. (Cancelling the XREAD
instead would be unreliable: on Python 3.11 redis-py's use of wait_for can swallow a
cancellation.)
"""

from __future__ import annotations

import contextlib
from typing import Any

from redis.asyncio import Redis

from revchat.backends.redis_history import RedisHistory, entries, room_key
from revchat.backends.redis_notices import ERRORS
from revchat.core.events import Event


class RedisReader:
    """Where each held room is read from; :meth:`read` returns what came, in stream order."""

    block = 2.0
    """Seconds an XREAD waits for new events before it is sent again."""
    count = 1000

    def __init__(self, client: Redis, reader: Redis, history: RedisHistory, *, prefix: str,
                 worker: str) -> None:
        self._redis = client
        self._reader = reader
        self._history = history
        self._prefix = prefix
        self._positions: dict[str, str] = {}
        self._wake = f"{prefix}:wake:{worker}"
        self._wake_position = "0-0"

    def hold(self, room: str, after: str | None) -> None:
        """Read ``room`` from ``after`` on (None: from its start)."""
        self._positions[room] = after or "0-0"
        if after is not None:
            self._history.note(room, after)

    def drop(self, room: str) -> None:
        """Stop reading ``room``. The XREAD in flight is not woken: what it brings of the room
        is dropped, and the next one leaves the room out."""
        self._positions.pop(room, None)

    async def wake(self) -> None:
        """Make the XREAD in flight return, so the next one includes a newly held room."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(self._wake, {"w": "1"}, maxlen=1, approximate=False)
        pipe.expire(self._wake, 3600)  # a worker that dies leaves nothing for long
        with contextlib.suppress(*ERRORS):  # Redis is down: the reader starts over anyway
            await pipe.execute()

    async def read(self) -> list[Event]:
        """One XREAD over the held rooms; the events of rooms still held, in stream order.
        Raises what redis-py raises."""
        positions = dict(self._positions)
        streams = {room_key(self._prefix, room): pos for room, pos in positions.items()}
        streams[self._wake] = self._wake_position
        reply: Any = await self._reader.xread(
            streams, count=self.count, block=int(self.block * 1000))  # type: ignore[arg-type]
        events: list[Event] = []
        for key, batch in (reply.items() if isinstance(reply, dict) else reply or ()):
            if key == self._wake and batch:
                self._wake_position = str(batch[-1][0])
                continue
            room = str(key).removeprefix(room_key(self._prefix, ""))
            if not batch or room not in positions or self._positions.get(room) != positions[room]:
                continue  # dropped (or held again from elsewhere) meanwhile
            self._positions[room] = str(batch[-1][0])
            self._history.note(room, self._positions[room])
            events.extend(entries(room, batch))
        return events
