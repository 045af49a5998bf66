"""What a worker holds of a room while it has subscribers, and one subscriber's socket.

Plain state for :mod:`revchat.core.engine`, which is what changes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from revchat.core.events import Event, User, dumps, id_key
from revchat.core.sessions import Session


class Sink(Protocol):
    """Where a subscriber's bytes go: in production a WebSocket's transport."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def close(self, code: int, reason: str) -> None: ...


class Subscription:
    """One socket in one room: it has received the archive and now receives live events."""

    __slots__ = ("closed", "closed_transport", "room", "session", "sink", "user", "write")

    def __init__(self, room: Room, user: User, sink: Sink, session: Session | None = None) -> None:
        self.room = room
        self.user = user
        self.session = session
        self.sink = sink
        self.write = sink.write
        self.closed = False
        self.closed_transport = False


@dataclass(eq=False)
class Room:
    """A room as this worker holds it while it has subscribers."""

    name: str
    subs: set[Subscription] = field(default_factory=set)
    joining: dict[Subscription, int] = field(default_factory=dict)
    """Subscribers welcomed since the last flush, each with how many pending frames its
    archive already holds: the next flush sends them only the rest, so a join storm does not
    force a flush per joiner."""
    members: dict[str, User] = field(default_factory=dict)
    recent: list[Event] = field(default_factory=list)
    pending: list[bytes] = field(default_factory=list)
    flush: asyncio.Handle | None = None
    quiet_until: float = 0.0
    """Monotonic time before which a new frame waits for the next flush (write_delay after the
    last one); after it, a frame goes out on the next loop pass."""
    last: tuple[int, ...] = ()
    """Key of the newest event this worker has delivered (or loaded) for the room."""
    refs: int = 0
    resuming: int = 0
    loading: list[Event] | None = None
    ready: asyncio.Future[None] | None = None
    _member_json: dict[str, str] = field(default_factory=dict)
    _members_cache: str | None = None

    def set_members(self, users: Iterable[User]) -> None:
        self.members = {}
        self._member_json = {}
        for user in users:
            self.put_member(user)

    def put_member(self, user: User) -> None:
        self.members[user.id] = user
        self._member_json[user.id] = dumps(user.as_dict())
        self._members_cache = None

    def apply(self, event: Event) -> None:
        """Keep the member list in step with the room's join and leave events."""
        if event.type == "join":
            self.put_member(event.user)
        elif event.type == "leave" and self.members.pop(event.user.id, None) is not None:
            del self._member_json[event.user.id]
            self._members_cache = None

    def archive(self, since: str | None, missed: list[Event] | None, size: int,
                resume_limit: int) -> tuple[list[Event], bool]:
        """A welcome's archive and ``resumed`` flag: with ``since`` and the events ``missed``
        after it read from history, everything after ``since`` (unless over ``resume_limit``);
        otherwise the last ``size`` events. Built without awaiting anything."""
        if missed is not None and since is not None:
            # Events read from history but not yet delivered here will arrive live: leave them
            # out so nobody receives an event twice.
            missed = [e for e in missed if e.key <= self.last]
            after = missed[-1].key if missed else id_key(since) or ()
            archive = missed + [e for e in self.recent if e.key > after]
            if len(archive) <= resume_limit:
                return archive, True
        return (self.recent[-size:] if size else []), False

    def forget(self, anonymous: User) -> None:
        """Show ``anonymous`` (same id) wherever its user's name and avatar were (data deletion)."""
        self.recent = [Event(e.type, e.id, e.room, anonymous, e.timestamp, e.text)
                       if e.user.id == anonymous.id else e for e in self.recent]
        if anonymous.id in self.members:
            self.put_member(anonymous)

    def members_frame(self) -> str:
        """The members as JSON for a welcome: each member is encoded once, when it joins."""
        if self._members_cache is None:
            self._members_cache = "[" + ",".join(self._member_json.values()) + "]"
        return self._members_cache
