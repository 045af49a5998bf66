"""Events and frames as the wire carries them (revchat/core/events.py): what each frame's JSON holds,
events read back from their stored form, and room names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from revchat.core.events import Event, User, error_frame, stored_room_name, typing_frame, welcome_frame

ANN = User("guest:ann", "Ann", "https://example.com/ann.png")


def event(**changes: Any) -> dict[str, Any]:
    """A stored event's dict (as :meth:`Event.as_dict` gives it), with ``changes`` applied."""
    data: dict[str, Any] = {"type": "message", "id": "1764489600123-4", "room": "lobby",
                            "user": ANN.as_dict(), "timestamp": 1764489600123, "text": "hi"}
    data.update(changes)
    return data


def test_error_frame_is_the_documented_object() -> None:
    """An error frame is exactly {"type": "error", "code", "message"}, as docs/protocol.md shows."""
    text = error_frame("too_long", "the message is longer than 2000 characters")
    assert json.loads(text) == {"type": "error", "code": "too_long",
                                "message": "the message is longer than 2000 characters"}


def test_event_json_carries_every_field() -> None:
    """An event's JSON has its type, id, room, user, timestamp and text under their documented names."""
    stored = Event.from_dict(event())
    assert json.loads(stored.json) == event()
    assert stored.timestamp == 1764489600123


def test_event_reads_back_from_its_dict() -> None:
    """Every field of a stored event survives as_dict/from_dict, and from_dict coerces what a
    store hands back as other JSON types (a numeric id, a text timestamp)."""
    original = Event("join", "42", "lobby", ANN, 7, "")
    assert Event.from_dict(original.as_dict()) == original
    read = Event.from_dict(event(id=42, timestamp="7", room="lobby"))
    assert (read.id, read.key, read.timestamp, read.room, read.user, read.text) == (
        "42", (42, 0), 7, "lobby", ANN, "hi")


def test_event_text_defaults_to_empty() -> None:
    """A stored join or leave without a text field reads back with the empty text."""
    data = event(type="leave")
    del data["text"]
    assert Event.from_dict(data).text == ""


@pytest.mark.parametrize("kind", ["typing", "welcome", "error", "", None, "MESSAGE"])
def test_event_from_dict_refuses_other_types(kind: Any) -> None:
    """Only message, join and leave are stored event types; anything else is a ValueError."""
    with pytest.raises(ValueError, match="unknown event type"):
        Event.from_dict(event(type=kind))


@pytest.mark.parametrize("missing", ["type", "id", "room", "user", "timestamp"])
def test_event_from_dict_needs_each_field(missing: str) -> None:
    """A stored event without one of its required fields is refused (KeyError), not half read."""
    data = event()
    del data[missing]
    with pytest.raises(KeyError):
        Event.from_dict(data)


def test_welcome_and_typing_frames() -> None:
    """The welcome frame splices the members and archive in; a typing frame names room and user."""
    stored = Event.from_dict(event())
    welcome = json.loads(welcome_frame("lobby", ANN, "[" + json.dumps(ANN.as_dict()) + "]",
                                       [stored], True))
    assert welcome == {"type": "welcome", "room": "lobby", "you": ANN.as_dict(), "resumed": True,
                       "members": [ANN.as_dict()], "archive": [event()]}
    assert json.loads(typing_frame("lobby", ANN)) == {"type": "typing", "room": "lobby",
                                                       "user": ANN.as_dict()}


@pytest.mark.parametrize(("raw", "stored"), [
    ("Lobby", "lobby"), ("a", "a"), ("A-b_9", "a-b_9"), ("x" * 64, "x" * 64),
    ("", None), ("x" * 65, None), ("lob by", None), ("lobby/", None), ("é", None), ("lobby\n", None),
])
def test_stored_room_name(raw: str, stored: str | None) -> None:
    """A room name is 1-64 letters, digits, - and _, stored in lower case; anything else is None."""
    assert stored_room_name(raw) == stored


@pytest.mark.parametrize("bad_id", ["", "x", "1-", "-1", "1-2-3", str(2**64)])
def test_event_refuses_a_malformed_id(bad_id: str) -> None:
    """An event whose id is not one or two 64-bit numbers is a ValueError that names the id."""
    with pytest.raises(ValueError) as caught:
        Event("message", bad_id, "lobby", ANN, 7, "hi")
    assert str(caught.value) == f"malformed event id {bad_id!r}"
