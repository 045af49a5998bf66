"""Fan-out: how stored events reach a worker's subscribers, fast and safely.

* each event is encoded once — to its JSON text and then to its wire frame — for all subscribers;
* the frames pending for a room are written to each subscriber in one ``write`` per flush,
  at most once per ``write_delay`` while they keep coming (Centrifugo's ``write_delay``);
* nothing here awaits a socket: a subscriber whose unsent bytes exceed ``queue_size`` is
  closed with 1013 "slow consumer" and nobody else waits for it.

:class:`Fanout` is the half of :class:`~revchat.core.engine.Engine` the broker calls, in each room's
one order; the engine adds subscribing and what clients do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from revchat.core.codes import SLOW_CONSUMER
from revchat.core.events import Event, User, typing_frame
from revchat.core.room import Room, Subscription

log = logging.getLogger("revchat.engine")


@dataclass
class Stats:
    """Counters read by ``/metrics``; plain integers so the hot path stays cheap."""

    events: int = 0
    deliveries: int = 0
    writes: int = 0
    slow_consumers: int = 0
    rate_limited: int = 0
    subscriptions: int = 0


class Fanout:
    """The rooms a worker holds and the delivery of their events to its subscribers."""

    def __init__(self, *, frame: Callable[[str], bytes], queue_size: int, write_delay: float,
                 cache: int) -> None:
        self.frame = frame
        self.rooms: dict[str, Room] = {}
        self.stats = Stats()
        self._queue_size = queue_size
        self._write_delay = write_delay
        self._cache = cache

    # -- delivery (called by the broker, in each room's one order) -----------------------

    def deliver(self, events: Sequence[Event]) -> None:
        """Fan stored events out to their rooms' subscribers; never blocks."""
        rooms = self.rooms
        for event in events:
            room = rooms.get(event.room)
            if room is None:
                continue
            if room.loading is not None:
                room.loading.append(event)
            else:
                self._accept(room, (event,))

    def _accept(self, room: Room, events: Sequence[Event]) -> None:
        recent = room.recent
        for event in events:
            if recent and event.key <= recent[-1].key:
                continue  # already held: a broker may re-read after reconnecting
            recent.append(event)
            room.last = event.key
            room.apply(event)
            self.stats.events += 1
            if room.subs or room.joining:
                room.pending.append(self.frame(event.json))
        if len(recent) > 2 * self._cache and not room.resuming:
            del recent[: len(recent) - self._cache]
        if room.pending and room.flush is None:
            # Leading edge: after a quiet spell a frame goes out on the next loop pass; while
            # frames keep coming they are written at most once per write_delay, coalesced.
            loop = asyncio.get_running_loop()
            delay = room.quiet_until - time.monotonic()
            room.flush = (
                loop.call_later(delay, self._flush, room) if delay > 0
                else loop.call_soon(self._flush, room)
            )

    def relay(self, room_name: str, user: User) -> None:
        """Send a typing notice to everyone in the room but the typist."""
        room = self.rooms.get(room_name)
        if room is None:
            return
        self._flush(room)
        data = self.frame(typing_frame(room_name, user))
        for sub in list(room.subs):
            if sub.user.id != user.id:
                self._write(sub, data)

    def _flush(self, room: Room) -> None:
        """Write the room's pending frames to every subscriber: one write each."""
        if room.flush is not None:
            room.flush.cancel()
            room.flush = None
        pending = room.pending
        if pending:
            self._fan_out(room, pending[0] if len(pending) == 1 else b"".join(pending))
            room.quiet_until = time.monotonic() + self._write_delay
        if room.joining:
            joining, room.joining = room.joining, {}
            for sub, skip in joining.items():
                room.subs.add(sub)
                if len(pending) > skip:
                    self._write(sub, b"".join(pending[skip:]))
        pending.clear()

    def _fan_out(self, room: Room, data: bytes) -> None:
        self.stats.deliveries += len(room.pending) * len(room.subs)
        self.stats.writes += len(room.subs)
        bound = self._queue_size
        failed = None
        for sub in room.subs:
            try:
                sub.write(data)
                if sub.sink.get_write_buffer_size() > bound:
                    failed = [*failed, sub] if failed else [sub]
            except Exception:  # a transport that closed under us (uvloop raises)
                sub.closed_transport = True
                failed = [*failed, sub] if failed else [sub]
        if failed:
            for sub in failed:
                self._drop(sub)

    def _write(self, sub: Subscription, data: bytes) -> None:
        try:
            sub.write(data)
        except Exception:  # a transport that closed under us (uvloop raises)
            sub.closed_transport = True
            self._drop(sub)
            return
        if sub.sink.get_write_buffer_size() > self._queue_size:
            self._drop(sub)

    def _drop(self, sub: Subscription) -> None:
        """Stop writing to a subscriber; close it with 1013 unless its socket is already gone.

        Its handler's cancel() then does the rest (presence, leave).
        """
        room = sub.room
        if sub in room.subs or room.joining.pop(sub, None) is not None:
            room.subs.discard(sub)
            if sub.closed_transport:
                return
            self.stats.slow_consumers += 1
            log.info("closing slow consumer %s in %s", sub.user.id, sub.room.name)
            sub.sink.close(*SLOW_CONSUMER.args)

    def send(self, sub: Subscription, text: str) -> None:
        """Send one subscriber a frame of its own (an error), after the room's pending ones."""
        self._flush(sub.room)
        if not sub.closed and sub in sub.room.subs:
            self._write(sub, self.frame(text))

    # -- introspection ----------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return sum(len(r.subs) + len(r.joining) for r in self.rooms.values())

    def queued_bytes(self) -> int:
        return sum(s.sink.get_write_buffer_size() for r in self.rooms.values() for s in r.subs)
