"""What a worker holds of a room while it has subscribers, and one subscriber's socket.

Plain state for :mod:`revchat.engine`, which is what changes it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from revchat.events import Event, User, members_json


class Sink(Protocol):
    """Where a subscriber's bytes go: in production a WebSocket's transport."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def close(self, code: int, reason: str) -> None: ...


class Subscription:
    """One socket in one room: it has received the archive and now receives live events."""

    __slots__ = ("closed", "closed_transport", "room", "sink", "user", "write")

    def __init__(self, room: Room, user: User, sink: Sink) -> None:
        self.room = room
        self.user = user
        self.sink = sink
        self.write = sink.write
        self.closed = False
        self.closed_transport = False


@dataclass(eq=False)
class Room:
    """A room as this worker holds it while it has subscribers."""

    name: str
    subs: set[Subscription] = field(default_factory=set)
    members: dict[str, User] = field(default_factory=dict)
    recent: list[Event] = field(default_factory=list)
    pending: list[bytes] = field(default_factory=list)
    flush: asyncio.Handle | None = None
    last: tuple[int, ...] = ()
    """Key of the newest event this worker has delivered (or loaded) for the room."""
    refs: int = 0
    resuming: int = 0
    loading: list[Event] | None = None
    ready: asyncio.Future[None] | None = None

    members_cache: str | None = None
    """The members' JSON for welcome frames, until the membership changes (a join storm
    welcomes many sockets between two changes)."""

    def apply(self, event: Event) -> None:
        """Keep the member list in step with the room's join and leave events."""
        if event.type == "join":
            self.members[event.user.id] = event.user
            self.members_cache = None
        elif event.type == "leave":
            self.members.pop(event.user.id, None)
            self.members_cache = None

    def members_frame(self) -> str:
        if self.members_cache is None:
            self.members_cache = members_json(self.members.values())
        return self.members_cache
