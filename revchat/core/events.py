"""Event types and the JSON frames of the socket protocol (docs/protocol.md). No I/O, no Sanic.

An :class:`Event` is encoded to its JSON text once (:attr:`Event.json`); frames that carry events
(the welcome's ``archive``, live events) splice that text in rather than encoding again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from revchat.core.codes import ErrorCode

EventType = Literal["message", "join", "leave"]
EVENT_TYPES: frozenset[str] = frozenset({"message", "join", "leave"})

ROOM_PATTERN = r"[A-Za-z0-9_-]{1,64}"
"""Room names (docs/protocol.md): 1-64 letters, digits, ``-`` and ``_``; case-insensitive."""
_ROOM_RE = re.compile(ROOM_PATTERN)


def stored_room_name(raw: str) -> str | None:
    """A room's stored (lower-case) name, or None if ``raw`` is not a room name."""
    return raw.lower() if _ROOM_RE.fullmatch(raw) else None


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class User:
    """Who speaks: ``fb:<id>`` or ``guest:<random>``, a display name, and an avatar URL or None."""

    id: str
    name: str
    avatar: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "avatar": self.avatar}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> User:
        avatar = data.get("avatar")
        return cls(id=str(data["id"]), name=str(data["name"]), avatar=str(avatar) if avatar else None)


@dataclass(frozen=True, slots=True)
class Draft:
    """An event before the store has given it an id."""

    type: EventType
    room: str
    user: User
    timestamp: int
    text: str = ""


@dataclass(frozen=True)
class Event:
    """A stored event of a room, as every subscriber receives it."""

    type: EventType
    id: str
    room: str
    user: User
    timestamp: int
    text: str = ""
    key: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = id_key(self.id)
        if key is None:
            raise ValueError(f"malformed event id {self.id!r}")
        object.__setattr__(self, "key", key)

    @classmethod
    def stored(cls, draft: Draft, event_id: str) -> Event:
        return cls(draft.type, event_id, draft.room, draft.user, draft.timestamp, draft.text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "id": self.id,
            "room": self.room,
            "user": self.user.as_dict(),
            "timestamp": self.timestamp,
            "text": self.text,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        kind = data["type"]
        if kind not in EVENT_TYPES:
            raise ValueError(f"unknown event type {kind!r}")
        return cls(
            type=kind,
            id=str(data["id"]),
            room=str(data["room"]),
            user=User.from_dict(data["user"]),
            timestamp=int(data["timestamp"]),
            text=str(data.get("text", "")),
        )

    @cached_property
    def json(self) -> str:
        """The event's JSON text, encoded once and shared by every frame that carries it."""
        return _dumps(self.as_dict())


MAX_ID_PART = 2**64 - 1
"""The largest number in an id: Redis stream ids are two unsigned 64-bit numbers."""


def id_key(event_id: str) -> tuple[int, ...] | None:
    """The sort key of an event id (``"42"`` or Redis's ``"1764489600123-0"``), or None if malformed.

    Ids are opaque to clients; inside revchat they compare by this key. Only ASCII digits count
    (``str.isdigit`` also takes "²"), and no part may exceed 64 bits, so any id that parses can be
    handed to every store.
    """
    # Every stored event's id passes here once: no generators, no lists.
    head, dash, tail = event_id.partition("-")
    if not (head.isascii() and head.isdigit() and len(head) <= 20):
        return None
    if dash and not (tail.isascii() and tail.isdigit() and len(tail) <= 20):
        return None
    first, second = int(head), int(tail) if dash else 0
    if first > MAX_ID_PART or second > MAX_ID_PART:
        return None
    return first, second


def storable(text: str) -> bool:
    """True when ``text`` can be stored and sent as UTF-8: no lone surrogates (``"\\ud800"``),
    which JSON lets a client send but no store and no WebSocket frame can carry."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def welcome_frame(room: str, you: User, members: str, archive: list[Event], resumed: bool) -> str:
    """The first frame a subscriber receives; ``members`` (a JSON list) and the archive's
    events are spliced in pre-encoded."""
    head = _dumps({"type": "welcome", "room": room, "you": you.as_dict(), "resumed": resumed})
    return (head[:-1] + ',"members":' + members + ',"archive":['
            + ",".join(e.json for e in archive) + "]}")


def typing_frame(room: str, user: User) -> str:
    return _dumps({"type": "typing", "room": room, "user": user.as_dict()})


def error_frame(code: ErrorCode, message: str) -> str:
    return _dumps({"type": "error", "code": code, "message": message})


def dumps(data: Any) -> str:
    """Compact JSON, as every frame is encoded."""
    return _dumps(data)
