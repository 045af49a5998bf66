"""A room as a worker holds it (revchat/core/room.py): the welcome's archive on a fresh subscribe and on
a resume, the member list kept by join and leave events, and data deletion."""

from __future__ import annotations

import json

from revchat.core.events import Event, User
from revchat.core.room import Room

ANN = User("guest:ann", "Ann", "https://example.com/ann.png")
BOB = User("guest:bob", "Bob")
FORGOTTEN = User(ANN.id, "Deleted user", None)


def ev(n: int, user: User = ANN, kind: str = "message") -> Event:
    return Event(kind, str(n), "lobby", user, 1000 + n, f"m{n}" if kind == "message" else "")  # type: ignore[arg-type]


def room_with(*ids: int, last: int | None = None) -> Room:
    """A room caching the events ``ids`` that has delivered up to ``last`` (its newest by default)."""
    room = Room("lobby")
    room.recent = [ev(n) for n in ids]
    room.last = ev(last if last is not None else ids[-1]).key
    return room


def ids(events: list[Event]) -> list[str]:
    return [e.id for e in events]


def test_fresh_archive_is_the_last_size_events() -> None:
    """Without ``since`` the archive is the last ``size`` cached events, not resumed; size 0 is none."""
    room = room_with(1, 2, 3, 4)
    assert room.archive(None, None, 2, 100) == ([ev(3), ev(4)], False)
    assert room.archive(None, None, 10, 100) == (room.recent, False)
    assert room.archive(None, None, 0, 100) == ([], False)


def test_resume_joins_history_and_cache_without_doubles() -> None:
    """A resume whose history read overlaps the cache gives every event after ``since`` once, in order."""
    room = room_with(3, 4, 5, 6)
    archive, resumed = room.archive("1", [ev(2), ev(3), ev(4)], 2, 100)
    assert (ids(archive), resumed) == (["2", "3", "4", "5", "6"], True)


def test_resume_keeps_the_last_delivered_event_and_leaves_out_later_ones() -> None:
    """Events read from history up to the last one delivered here are in the archive, as read
    (the store's copy, which a data deletion on another worker may have anonymised); those after
    it will arrive live, so they are left out."""
    room = room_with(1, 2, last=2)
    read = [ev(2, FORGOTTEN), ev(3, FORGOTTEN)]
    assert room.archive("1", read, 5, 100) == ([read[0]], True)


def test_resume_within_the_cache() -> None:
    """A resume whose id is cached (nothing read from history) gives the cached events after it."""
    room = room_with(1, 2, 3)
    assert room.archive("1", [], 1, 100) == ([ev(2), ev(3)], True)


def test_resume_limit_is_inclusive() -> None:
    """A resume of exactly ``resume_limit`` events is resumed; one more falls back to the last ``size``."""
    room = room_with(1, 2, 3, 4)
    assert room.archive("1", [], 2, 3) == ([ev(2), ev(3), ev(4)], True)
    assert room.archive("1", [], 2, 2) == ([ev(3), ev(4)], False)


def test_an_unknown_resume_id_gives_the_fresh_archive() -> None:
    """When ``since`` is not kept (``missed`` is None) the archive is the fresh one, not resumed."""
    room = room_with(1, 2, 3)
    assert room.archive("99", None, 2, 100) == ([ev(2), ev(3)], False)


def test_members_follow_joins_and_leaves() -> None:
    """A join adds its user, a leave removes it, a leave of someone absent changes nothing, and
    the members frame follows each change."""
    room = Room("lobby")
    room.set_members([BOB])
    room.apply(ev(1, ANN, "join"))
    assert json.loads(room.members_frame()) == [BOB.as_dict(), ANN.as_dict()]
    room.apply(ev(2, BOB, "leave"))
    assert json.loads(room.members_frame()) == [ANN.as_dict()]
    room.apply(ev(3, BOB, "leave"))
    room.apply(ev(4, ANN, "message"))
    assert list(room.members) == [ANN.id]
    assert json.loads(room.members_frame()) == [ANN.as_dict()]


def test_forget_anonymises_only_that_users_events_keeping_the_rest() -> None:
    """Data deletion replaces the user's name and avatar in its cached events, keeps every other
    field, leaves other users' events alone, and updates the member list."""
    room = Room("lobby")
    room.recent = [ev(1, ANN, "join"), ev(2, ANN), ev(3, BOB)]
    room.set_members([ANN, BOB])
    room.forget(FORGOTTEN)
    assert [e.as_dict() for e in room.recent] == [
        {**ev(1, ANN, "join").as_dict(), "user": FORGOTTEN.as_dict()},
        {**ev(2, ANN).as_dict(), "user": FORGOTTEN.as_dict()},
        ev(3, BOB).as_dict(),
    ]
    assert json.loads(room.members_frame()) == [FORGOTTEN.as_dict(), BOB.as_dict()]


def test_forget_of_someone_absent_adds_no_member() -> None:
    """Forgetting a user who is not a member leaves the member list as it was."""
    room = Room("lobby")
    room.set_members([BOB])
    room.forget(FORGOTTEN)
    assert list(room.members) == [BOB.id]
