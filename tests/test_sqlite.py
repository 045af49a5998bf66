"""The SQLite history against real files, and the History contract every store keeps: memory,
SQLite, and a Redis stream per room (against a real redis-server)."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from revchat.backends.factory import open_history
from revchat.backends.memory import MemoryHistory
from revchat.backends.redis_history import RedisHistory
from revchat.backends.sqlite import SQLiteHistory
from revchat.backends.sqlite_schema import SCHEMA_VERSION
from revchat.core.events import Draft, Event, User
from revchat.core.history import FORGOTTEN_NAME, History, HistoryUnavailable
from revchat.core.sessions import Ended
from tests.support.redis_server import RedisServer

ANN = User("guest:ann", "Ann", "https://example.com/ann.png")
BOB = User("guest:bob", "Bob")
NOW = int(time.time() * 1000)


def draft(room: str, text: str = "hi", user: User = ANN, ts: int = NOW) -> Draft:
    return Draft("message", room, user, ts, text)


def texts(events: list[Event]) -> list[str]:
    return [e.text for e in events]


async def opened(path: Path, **options: Any) -> SQLiteHistory:
    history = SQLiteHistory(str(path), **options)
    await history.open()
    return history


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def history(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[History]:
    client = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("shared_redis")
        client = Redis.from_url(server.url, decode_responses=True)
        store: History = RedisHistory(client, where=server.url, prefix=secrets.token_hex(4))
    elif request.param == "memory":
        store = MemoryHistory()
    else:
        store = SQLiteHistory(str(tmp_path / "chat.db"))
    await store.open()
    yield store
    await store.close()
    if client is not None:
        await client.aclose()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SQLiteHistory]:
    store = await opened(tmp_path / "chat.db")
    yield store
    await store.close()


# -- the contract every History keeps ---------------------------------------------------------


async def test_ids_increase_per_room_in_append_order(history: History) -> None:
    """A batch comes back in order, with ids that increase within each room across batches."""
    first = await history.append([draft("a", "1"), draft("b", "2"), draft("a", "3")])
    second = await history.append([draft("a", "4"), draft("b", "5")])
    assert texts(first) == ["1", "2", "3"] and texts(second) == ["4", "5"]
    for room in ("a", "b"):
        keys = [e.key for e in first + second if e.room == room]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert [e.id for e in await history.recent("a", 10)] == [first[0].id, first[2].id, second[0].id]


async def test_empty_batch_stores_nothing(history: History) -> None:
    """Appending no drafts returns no events."""
    assert await history.append([]) == []
    assert await history.recent("a", 10) == []


async def test_recent_returns_newest_oldest_first(history: History) -> None:
    """recent() gives the last ``limit`` events of the room only, oldest first."""
    await history.append([draft("a", str(i)) for i in range(5)] + [draft("b", "other")])
    assert texts(await history.recent("a", 3)) == ["2", "3", "4"]
    assert await history.recent("a", 0) == []
    assert await history.recent("nowhere", 3) == []


async def test_after_returns_following_events(history: History) -> None:
    """after() gives at most ``limit`` events that follow a kept id, oldest first."""
    events = await history.append([draft("a", str(i)) for i in range(5)])
    assert texts(await history.after("a", events[1].id, 2) or []) == ["2", "3"]
    assert await history.after("a", events[4].id, 10) == []


async def test_after_unknown_id_is_none(history: History) -> None:
    """after() returns None for an id that is unknown, malformed or (where ids are unique across
    rooms) from another room."""
    events = await history.append([draft("a"), draft("b")])
    assert await history.after("a", "999999", 10) is None
    assert await history.after("a", "not-an-id", 10) is None
    assert await history.after("a", "1764489600123-0", 10) is None
    other = await history.after("a", events[1].id, 10)
    if history.name == "redis":
        # Ids are unique in a room (docs/protocol.md), not across rooms: a stream id is a
        # position in time, and room a's event may hold the same one; resuming from it gives
        # what came after it there (nothing).
        assert other == [] if events[0].id == events[1].id else other is None
    else:
        assert other is None


async def test_before_pages_backwards(history: History) -> None:
    """before() pages from the newest backwards and says whether older events remain."""
    events = await history.append([draft("a", str(i)) for i in range(5)] + [draft("b")])
    page, more = await history.before("a", None, 2)
    assert (texts(page), more) == (["3", "4"], True)
    page, more = await history.before("a", page[0].id, 2)
    assert (texts(page), more) == (["1", "2"], True)
    page, more = await history.before("a", page[0].id, 2)
    assert (texts(page), more) == (["0"], False)
    assert await history.before("a", events[0].id, 2) == ([], False)
    assert await history.before("a", "garbage", 2) == ([], False)


async def test_purge_deletes_one_room(history: History) -> None:
    """purge() deletes every event of the room, counts them, and leaves other rooms alone."""
    await history.append([draft("a"), draft("a"), draft("b", "kept")])
    assert await history.purge("a") == 2
    assert await history.recent("a", 10) == []
    assert texts(await history.recent("b", 10)) == ["kept"]
    assert await history.purge("a") == 0


async def test_export_yields_every_event_oldest_first(history: History) -> None:
    """export() yields the whole room in order."""
    await history.append([draft("a", str(i)) for i in range(7)] + [draft("b")])
    assert [e.text async for e in history.export("a")] == [str(i) for i in range(7)]


async def test_forget_user_anonymises_their_events(history: History) -> None:
    """forget_user() replaces the user's name and avatar everywhere and counts the events."""
    await history.append([draft("a"), draft("b"), draft("a", user=BOB)])
    assert await history.forget_user(ANN.id) == 2
    users = [e.user for room in ("a", "b") for e in await history.recent(room, 10)]
    assert User(ANN.id, FORGOTTEN_NAME, None) in users and BOB in users
    assert all(u.name == FORGOTTEN_NAME for u in users if u.id == ANN.id)


async def test_ended_sessions_are_kept_until_they_expire(history: History) -> None:
    """Ended sessions and users come back merged with what was kept; an ended session whose
    own expiry has passed is dropped."""
    soon = NOW + 3_600_000
    await history.end_sessions(Ended(sessions={"s1": soon, "gone": NOW - 1000}))
    await history.end_sessions(Ended(sessions={"s2": soon}, users={ANN.id: NOW}))
    kept = await history.ended_sessions()
    assert kept.sessions == {"s1": soon, "s2": soon}
    assert kept.users == {ANN.id: NOW}


# -- SQLite: durability, transactions, migrations ---------------------------------------------


async def test_open_history_url_gives_sqlite(tmp_path: Path) -> None:
    """``sqlite:///PATH`` opens this store, creating missing parent directories."""
    store = open_history(f"sqlite:///{tmp_path}/deep/er/chat.db")
    assert isinstance(store, SQLiteHistory)
    await store.open()
    await store.check()
    await store.close()
    assert (tmp_path / "deep" / "er" / "chat.db").is_file()


async def test_reopen_keeps_events_and_never_reuses_ids(tmp_path: Path) -> None:
    """Events survive close and reopen; ids keep increasing even after the newest were purged."""
    store = await opened(tmp_path / "chat.db")
    events = await store.append([draft("a", "1"), draft("a", "2"), draft("b", "3")])
    await store.purge("b")
    await store.close()
    store = await opened(tmp_path / "chat.db")
    assert await store.recent("a", 10) == events[:2]
    new = await store.append([draft("b", "4")])
    assert new[0].key > events[2].key
    await store.close()


async def test_batch_is_one_transaction(db: SQLiteHistory) -> None:
    """A batch whose last draft cannot be stored leaves none of its drafts behind."""
    await db.append([draft("a", "before")])
    bad = Draft("message", "a", ANN, NOW, cast(str, object()))
    with pytest.raises(HistoryUnavailable):
        await db.append([draft("a", "x"), draft("b", "y"), bad])
    assert texts(await db.recent("a", 10)) == ["before"]
    assert await db.recent("b", 10) == []


async def test_migrations_are_safe_twice_and_concurrently(tmp_path: Path) -> None:
    """Two stores opening a new file at once both migrate it safely, and reopening is a no-op."""
    path = tmp_path / "chat.db"
    one, two = SQLiteHistory(str(path)), SQLiteHistory(str(path))
    await asyncio.gather(one.open(), two.open())
    a = await one.append([draft("a", "1")])
    b = await two.append([draft("a", "2")])
    assert b[0].key > a[0].key
    assert texts(await one.recent("a", 10)) == ["1", "2"]
    await asyncio.gather(one.close(), two.close())
    again = await opened(path)
    assert texts(await again.recent("a", 10)) == ["1", "2"]
    await again.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer schema is refused with one line instead of being misread."""
    path = tmp_path / "chat.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(HistoryUnavailable, match="newer") as info:
        await opened(path)
    assert "\n" not in str(info.value)


async def test_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    """A path under a regular file fails to open with one line that names it."""
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "file" / "chat.db"
    with pytest.raises(HistoryUnavailable) as info:
        await opened(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


async def test_locked_database_is_unavailable(tmp_path: Path) -> None:
    """While another connection holds the write lock past the busy timeout, appends fail cleanly."""
    store = await opened(tmp_path / "chat.db", busy_timeout=0.05)
    other = sqlite3.connect(tmp_path / "chat.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(HistoryUnavailable, match="locked") as info:
            await store.append([draft("a")])
        assert "\n" not in str(info.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert texts(await store.append([draft("a", "later")])) == ["later"]
    await store.close()


async def test_full_disk_is_unavailable(db: SQLiteHistory) -> None:
    """When the file cannot grow, the batch fails with one line and the store keeps what it had."""
    await db.append([draft("a", "kept")])
    # Capping the file at its current size is how SQLite itself simulates a full disk.
    pages = await db._run(lambda c: c.execute("PRAGMA page_count").fetchone()[0], "size")
    await db._run(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"), "cap")
    with pytest.raises(HistoryUnavailable, match="full") as info:
        await db.append([draft("a", "x" * 1000) for _ in range(100)])
    assert "\n" not in str(info.value)
    assert texts(await db.recent("a", 10)) == ["kept"]


async def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    """check() passes while open; after close every call raises HistoryUnavailable."""
    store = await opened(tmp_path / "chat.db")
    await store.check()
    await store.close()
    with pytest.raises(HistoryUnavailable, match="not open"):
        await store.check()
    with pytest.raises(HistoryUnavailable):
        await store.append([draft("a")])
    await store.close()


async def test_odd_ids_are_not_kept(db: SQLiteHistory) -> None:
    """Ids that cannot be rowids (unicode digits, beyond 64 bits) are unknown, not errors."""
    await db.append([draft("a")])
    for odd in ("²", "9" * 19, "1" * 5000, ""):
        assert await db.after("a", odd, 10) is None
        assert await db.before("a", odd, 10) == ([], False)


async def test_export_pages_through_the_room(db: SQLiteHistory) -> None:
    """export() reads in pages yet yields every event once, in order."""
    await db.append([draft("a", str(i)) for i in range(10)] + [draft("b")])
    assert [e.text async for e in db.export("a", page=3)] == [str(i) for i in range(10)]


async def test_big_append_does_not_block_the_loop(db: SQLiteHistory) -> None:
    """While a 100,000-event batch is stored, other tasks on the event loop keep running."""
    append = asyncio.create_task(db.append([draft("a", str(i)) for i in range(100_000)]))
    ticks = 0
    while not append.done():
        ticks += 1
        await asyncio.sleep(0)
    assert ticks > 10
    assert len(await append) == 100_000


# -- SQLite: retention -------------------------------------------------------------------------


async def test_retention_by_count_keeps_newest_per_room(tmp_path: Path) -> None:
    """With retention_count, a pass keeps each room's newest events, deleting in small chunks."""
    store = await opened(tmp_path / "chat.db", retention_count=3, retention_chunk=2,
                         retention_interval=3600)
    await store.append([draft(room, f"{room}{i}") for i in range(8) for room in ("a", "b")])
    await store.append([draft("c", "c0")])
    assert await store.enforce_retention() == 10
    assert texts(await store.recent("a", 10)) == ["a5", "a6", "a7"]
    assert texts(await store.recent("b", 10)) == ["b5", "b6", "b7"]
    assert texts(await store.recent("c", 10)) == ["c0"]
    assert await store.enforce_retention() == 0
    await store.close()


async def test_retention_by_count_covers_rooms_from_before_open(tmp_path: Path) -> None:
    """The first pass after opening also trims rooms nobody has written to since."""
    store = await opened(tmp_path / "chat.db")
    await store.append([draft("old", str(i)) for i in range(5)])
    await store.close()
    store = await opened(tmp_path / "chat.db", retention_count=2)
    assert await store.enforce_retention() == 3
    assert texts(await store.recent("old", 10)) == ["3", "4"]
    await store.close()


async def test_retention_by_age_deletes_old_events(tmp_path: Path) -> None:
    """With retention_days, events older than that go and newer ones stay."""
    store = await opened(tmp_path / "chat.db", retention_days=1, retention_chunk=2,
                         retention_interval=3600)
    old = NOW - 3 * 86_400_000
    await store.append([draft("a", f"old{i}", ts=old) for i in range(5)])
    await store.append([draft("a", "new"), draft("b", "new")])
    assert await store.enforce_retention() == 5
    assert texts(await store.recent("a", 10)) == ["new"]
    assert texts(await store.recent("b", 10)) == ["new"]
    await store.close()


async def test_retention_runs_in_the_background_after_appends(tmp_path: Path) -> None:
    """An append starts a background retention pass that trims the room without being asked."""
    store = await opened(tmp_path / "chat.db", retention_count=2, retention_interval=0)
    await store.append([draft("a", str(i)) for i in range(5)])
    passes = [t for t in asyncio.all_tasks() if t.get_name() == "revchat-retention"]
    assert len(passes) == 1
    await passes[0]
    assert texts(await store.recent("a", 10)) == ["3", "4"]
    await store.close()
