"""The SQLite history's schema, its migrations and the SQL it runs, apart from the store
(:mod:`revchat.backends.sqlite`) that runs them on its own thread.

Migration N (1-based) takes ``PRAGMA user_version`` from N-1 to N; a file from a newer revchat
is refused rather than written to.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from revchat.core.events import Event, EventType, User
from revchat.core.files import DIR_MODE, private_file

T = TypeVar("T")

# Migration N (1-based) takes the schema from version N-1 to N. Each step is also idempotent on
# its own (IF NOT EXISTS), in case a file was left half-migrated by an older, buggier release.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE IF NOT EXISTS events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL, type TEXT NOT NULL,
            user_id TEXT NOT NULL, user_name TEXT NOT NULL, user_avatar TEXT NULL,
            ts INTEGER NOT NULL, text TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS events_room_id ON events (room, id)",
    ],
    [
        # Sessions ended on the server: kind 's' (a session id, until it expires by itself) or
        # 'u' (a user id, every session begun before `until`).
        """CREATE TABLE IF NOT EXISTS ended (
            kind TEXT NOT NULL, key TEXT NOT NULL, until INTEGER NOT NULL,
            PRIMARY KEY (kind, key)) WITHOUT ROWID""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = "id, type, room, user_id, user_name, user_avatar, ts, text"
INSERT = f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# The highest id ever given: AUTOINCREMENT keeps it in sqlite_sequence even after deletes.
TOP_ID = """SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),
                  coalesce((SELECT max(id) FROM events), 0))"""
# Every room name, by hopping along the (room, id) index: one seek per room, not a table scan.
ROOMS = """WITH RECURSIVE r(room) AS (
    SELECT MIN(room) FROM events
    UNION ALL SELECT (SELECT MIN(room) FROM events WHERE room > r.room) FROM r
    WHERE r.room IS NOT NULL)
SELECT room FROM r WHERE room IS NOT NULL"""
# Retention by age looks only at the oldest chunk by id, never the whole table: ids follow
# storage order and the server sets timestamps, so old events are at the front. One stored with an
# older timestamp than its predecessor (the clock stepped back) simply waits for them.
EXPIRED = ("DELETE FROM events WHERE id IN"
           " (SELECT id FROM (SELECT id, ts FROM events ORDER BY id LIMIT ?) WHERE ts < ?)")
MAX_ID = 2**63 - 1


def event_of(row: tuple[Any, ...]) -> Event:
    event_id, kind, room, user_id, name, avatar, ts, text = row
    return Event(cast(EventType, kind), str(event_id), room, User(user_id, name, avatar), ts, text)


def rows(sql: str, args: tuple[Any, ...]) -> Callable[[sqlite3.Connection], list[Any]]:
    """A job that returns every row of a query."""
    return lambda conn: conn.execute(sql, args).fetchall()


def changes(sql: str, args: tuple[Any, ...]) -> Callable[[sqlite3.Connection], int]:
    """A job that returns how many rows a statement changed."""
    return lambda conn: conn.execute(sql, args).rowcount


def transaction(job: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """Run ``job`` in one write transaction; roll it back whole if anything fails."""
    # IMMEDIATE takes the write lock up front, so another process's writer makes us wait
    # (busy_timeout) at BEGIN instead of failing half-way through the batch.
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = job(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def row_id(event_id: str) -> int | None:
    """The rowid an id names, or None when it cannot be one of ours (malformed, Redis-style)."""
    # isascii(): str.isdigit() also accepts digits like "²" that int() rejects.
    ok = event_id.isascii() and event_id.isdigit() and len(event_id) <= 19
    if not ok or int(event_id) > MAX_ID:
        return None
    return int(event_id)


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Open ``path`` (making it and a missing directory private), in WAL mode, migrated to
    :data:`SCHEMA_VERSION`; on the SQLite thread."""
    if path != ":memory:" and not path.startswith("file:"):
        # The database and its -wal/-shm files (SQLite gives them the database's mode) are
        # private; a directory made for them too (an existing one is the operator's).
        file = Path(os.path.abspath(path))
        file.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        private_file(file)
        for extra in ("-wal", "-shm"):
            if Path(f"{file}{extra}").exists():
                private_file(Path(f"{file}{extra}"))
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, nothing implicit.
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                           check_same_thread=False)
    try:
        enter_wal(conn, busy_timeout)
        conn.execute("PRAGMA synchronous=NORMAL")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def enter_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    # Switching to WAL needs an exclusive lock, and when two processes switch a new file at
    # once SQLite reports the clash at once instead of through the busy handler: retry.
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)  # on the SQLite thread, never the event loop


def migrate(conn: sqlite3.Connection) -> None:
    """Run the migrations this file has not had yet, in one write transaction."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return

    def upgrade(conn: sqlite3.Connection) -> None:
        # Read again under the write lock: another process may have migrated meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this revchat's {SCHEMA_VERSION}")
        for steps in MIGRATIONS[version:]:
            for statement in steps:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    transaction(upgrade, conn)
