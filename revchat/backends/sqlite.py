"""The ``sqlite:///PATH`` history: events kept in one SQLite file, in WAL mode.

All SQLite work happens on one dedicated thread that owns the only connection; the async methods
hand their work to it, so the event loop never waits on the disk. Because that thread runs one job
at a time, in the order they were submitted, jobs never interleave inside a transaction and need no
locks. Event ids are the table's AUTOINCREMENT rowid, so they increase in append order in every
room and are never reused, even after a purge or retention deleted the newest rows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from revchat.events import Draft, Event, EventType, User
from revchat.files import DIR_MODE, private_file
from revchat.history import FORGOTTEN_NAME, History, HistoryUnavailable
from revchat.sessions import SESSION_MAX_AGE, Ended, now_ms

log = logging.getLogger("revchat.sqlite")

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


def _event(row: tuple[Any, ...]) -> Event:
    event_id, kind, room, user_id, name, avatar, ts, text = row
    return Event(cast(EventType, kind), str(event_id), room, User(user_id, name, avatar), ts, text)


def _rows(sql: str, args: tuple[Any, ...]) -> Callable[[sqlite3.Connection], list[Any]]:
    """A job that returns every row of a query."""
    return lambda conn: conn.execute(sql, args).fetchall()


def _changes(sql: str, args: tuple[Any, ...]) -> Callable[[sqlite3.Connection], int]:
    """A job that returns how many rows a statement changed."""
    return lambda conn: conn.execute(sql, args).rowcount


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _transaction(job: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
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


def _row_id(event_id: str) -> int | None:
    """The rowid an id names, or None when it cannot be one of ours (malformed, Redis-style)."""
    # isascii(): str.isdigit() also accepts digits like "²" that int() rejects.
    ok = event_id.isascii() and event_id.isdigit() and len(event_id) <= 19
    if not ok or int(event_id) > MAX_ID:
        return None
    return int(event_id)


class SQLiteHistory(History):
    """Events in a SQLite file: durable across restarts, trimmed by optional retention.

    ``retention_count > 0`` keeps at most that many events per room; ``retention_days > 0``
    deletes events older than that. Retention runs in the background at most every
    ``retention_interval`` seconds after appends, in chunks of ``retention_chunk`` rows, each its
    own short transaction so appends queued meanwhile are not held up; :meth:`enforce_retention`
    runs a pass on demand. Commits use ``synchronous=NORMAL``: in WAL mode a committed batch
    survives a crash of the process; only a power loss can take back the last commits.
    """

    name = "sqlite"

    def __init__(self, path: str, *, retention_count: int = 0, retention_days: float = 0.0,
                 retention_interval: float = 5.0, retention_chunk: int = 1000,
                 busy_timeout: float = 5.0) -> None:
        self.path = path
        self.retention_count = max(0, retention_count)
        self.retention_days = max(0.0, retention_days)
        self.retention_interval = retention_interval
        self.retention_chunk = max(1, retention_chunk)
        self.busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used only on the executor's thread
        self._touched: set[str] = set()  # rooms appended to since the last retention pass
        self._sweep_all = True  # the first pass looks at every room: settings may have shrunk
        self._retention_lock = asyncio.Lock()
        self._retention_task: asyncio.Task[None] | None = None
        self._next_retention = 0.0  # loop time after which an append may start a pass

    # -- running work on the SQLite thread -------------------------------------------------

    async def _run(self, job: Callable[[sqlite3.Connection], T], what: str, *,
                   write: bool = False) -> T:
        """Run ``job`` on the SQLite thread (``write``: in one transaction); any failure becomes
        a one-line :class:`HistoryUnavailable`."""
        executor, conn = self._executor, self._conn
        if executor is None or conn is None:
            raise HistoryUnavailable(f"history database {self.path} is not open")
        call = functools.partial(_transaction, job) if write else job
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, call, conn)
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            # RuntimeError: the executor was shut down under us by close().
            raise HistoryUnavailable(f"cannot {what} ({self.path}): {_one_line(exc)}") from exc

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file (and its directory) if needed, switch to WAL and migrate the schema.

        Raises :class:`HistoryUnavailable` with one line naming the file if it cannot be used.
        """
        if self._conn is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="revchat-sqlite")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, self._connect)
        except (sqlite3.Error, OSError, ValueError) as exc:  # ValueError: a NUL in the path
            executor.shutdown(wait=False)
            raise HistoryUnavailable(
                f"cannot open history database {self.path}: {_one_line(exc)}") from exc
        self._executor, self._conn = executor, conn
        self._next_retention = asyncio.get_running_loop().time() + self.retention_interval

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:" and not self.path.startswith("file:"):
            # The database and its -wal/-shm files (SQLite gives them the database's mode) are
            # private; a directory made for them too (an existing one is the operator's).
            path = Path(os.path.abspath(self.path))
            path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            private_file(path)
            for extra in ("-wal", "-shm"):
                if Path(f"{path}{extra}").exists():
                    private_file(Path(f"{path}{extra}"))
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, nothing implicit.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            self._enter_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _enter_wal(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL needs an exclusive lock, and when two processes switch a new file at
        # once SQLite reports the clash at once instead of through the busy handler: retry.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)  # on the SQLite thread, never the event loop

    def _migrate(self, conn: sqlite3.Connection) -> None:
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

        _transaction(upgrade, conn)

    async def close(self) -> None:
        """Stop background retention, close the connection and the SQLite thread.

        Appends already awaited are committed; a retention pass in progress stops between chunks.
        """
        task, self._retention_task = self._retention_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        executor, conn = self._executor, self._conn
        self._executor = self._conn = None
        if executor is None or conn is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            executor.shutdown(wait=False)  # its queue is empty: the thread ends right away

    async def check(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone(), "read history")

    # -- events ------------------------------------------------------------------------------

    async def append(self, drafts: Sequence[Draft]) -> list[Event]:
        """Store the batch in one transaction and return its events, ids given, in order."""
        if not drafts:
            return []
        events = await self._run(lambda c: self._insert(c, drafts), "store events", write=True)
        if self.retention_count:
            self._touched.update(d.room for d in drafts)
        self._schedule_retention()
        return events

    @staticmethod
    def _insert(conn: sqlite3.Connection, drafts: Sequence[Draft]) -> list[Event]:
        """Insert the drafts with consecutive new ids (we hold the write lock)."""
        # Giving the ids ourselves, rather than letting AUTOINCREMENT pick each one, makes them
        # known without reading back and saves a quarter of the insert time; sqlite_sequence
        # still follows, so no id is ever given twice.
        first: int = conn.execute(TOP_ID).fetchone()[0] + 1
        conn.executemany(INSERT, [
            (first + i, d.type, d.room, d.user.id, d.user.name, d.user.avatar, d.timestamp, d.text)
            for i, d in enumerate(drafts)])
        # Built here rather than on the event loop: a big batch's events take milliseconds.
        return [Event.stored(d, str(first + i)) for i, d in enumerate(drafts)]

    async def recent(self, room: str, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        sql = f"SELECT {COLUMNS} FROM events WHERE room = ? ORDER BY id DESC LIMIT ?"
        rows = await self._run(_rows(sql, (room, limit)), "read history")
        return [_event(r) for r in reversed(rows)]

    async def after(self, room: str, event_id: str, limit: int) -> list[Event] | None:
        """Events after ``event_id``; None when that id is not (or no longer) in ``room``."""
        row_id = _row_id(event_id)
        if row_id is None:
            return None

        # Read from the id itself: the first row tells whether it is still kept in this room.
        sql = f"SELECT {COLUMNS} FROM events WHERE room = ? AND id >= ? ORDER BY id LIMIT ?"
        rows = await self._run(_rows(sql, (room, row_id, max(0, limit) + 1)), "read history")
        if not rows or rows[0][0] != row_id:
            return None
        return [_event(r) for r in rows[1:]]

    async def before(self, room: str, event_id: str | None, limit: int) -> tuple[list[Event], bool]:
        row_id = MAX_ID if event_id is None else _row_id(event_id)
        if row_id is None:
            return [], False
        limit = max(0, limit)
        sql = f"SELECT {COLUMNS} FROM events WHERE room = ? AND id < ? ORDER BY id DESC LIMIT ?"
        # One row more than asked tells whether older ones remain.
        rows = await self._run(_rows(sql, (room, row_id, limit + 1)), "read history")
        return [_event(r) for r in reversed(rows[:limit])], len(rows) > limit

    async def purge(self, room: str) -> int:
        sql = "DELETE FROM events WHERE room = ?"
        return await self._run(_changes(sql, (room,)), "purge history", write=True)

    async def export(self, room: str, page: int = 500) -> AsyncIterator[Event]:
        """Every event of ``room``, oldest first, read ``page`` rows at a time."""
        sql = f"SELECT {COLUMNS} FROM events WHERE room = ? AND id > ? ORDER BY id LIMIT ?"
        last = 0
        while True:
            rows = await self._run(_rows(sql, (room, last, page)), "export history")
            for row in rows:
                yield _event(row)
            if len(rows) < page:
                return
            last = rows[-1][0]

    async def forget_user(self, user_id: str) -> int:
        sql = "UPDATE events SET user_name = ?, user_avatar = NULL WHERE user_id = ?"
        return await self._run(_changes(sql, (FORGOTTEN_NAME, user_id)), "forget user",
                               write=True)

    # -- ended sessions ----------------------------------------------------------------------

    async def ended_sessions(self) -> Ended:
        def load(conn: sqlite3.Connection) -> list[Any]:
            now = now_ms()
            conn.execute("DELETE FROM ended WHERE (kind = 's' AND until < ?) OR (kind = 'u' AND until < ?)",
                         (now, now - SESSION_MAX_AGE * 1000))
            return conn.execute("SELECT kind, key, until FROM ended").fetchall()

        rows = await self._run(load, "read ended sessions", write=True)
        ended = Ended()
        for kind, key, until in rows:
            (ended.sessions if kind == "s" else ended.users)[key] = until
        return ended

    async def end_sessions(self, ended: Ended) -> None:
        rows = [("s", k, v) for k, v in ended.sessions.items()] + \
            [("u", k, v) for k, v in ended.users.items()]
        sql = ("INSERT INTO ended (kind, key, until) VALUES (?, ?, ?) ON CONFLICT (kind, key)"
               " DO UPDATE SET until = max(until, excluded.until)")
        await self._run(lambda conn: conn.executemany(sql, rows), "end sessions", write=True)

    # -- retention ---------------------------------------------------------------------------

    def _schedule_retention(self) -> None:
        if not (self.retention_count or self.retention_days) or self._retention_task is not None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next_retention:
            self._retention_task = loop.create_task(self._background_retention(),
                                                    name="revchat-retention")

    async def _background_retention(self) -> None:
        try:
            await self.enforce_retention()
        except HistoryUnavailable as exc:
            log.warning("history retention failed: %s", exc)
        finally:
            self._next_retention = asyncio.get_running_loop().time() + self.retention_interval
            self._retention_task = None

    async def enforce_retention(self) -> int:
        """Delete what the retention settings no longer keep; return how many events went.

        Passes run one at a time (a call waits for a background pass in progress). Each chunk is
        its own job on the SQLite thread, so appends submitted meanwhile run between chunks.
        """
        async with self._retention_lock:
            deleted = 0
            rooms, self._touched = self._touched, set()
            try:
                if self.retention_count and self._sweep_all:
                    rooms |= {r[0] for r in await self._run(_rows(ROOMS, ()), "list rooms")}
                    self._sweep_all = False
                while rooms and self.retention_count:
                    deleted += await self._trim_room(min(rooms))
                    rooms.remove(min(rooms))
            except BaseException:
                self._touched |= rooms  # not trimmed yet: the next pass does them
                raise
            if self.retention_days:
                cutoff = time.time() * 1000 - self.retention_days * 86_400_000
                deleted += await self._chunks(_changes(EXPIRED, (self.retention_chunk, cutoff)))
            return deleted

    async def _trim_room(self, room: str) -> int:
        """Delete ``room``'s events beyond its newest ``retention_count``."""
        sql = "SELECT id FROM events WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?"
        rows = await self._run(_rows(sql, (room, self.retention_count)), "trim history")
        if not rows:
            return 0
        return await self._chunks(_changes(
            "DELETE FROM events WHERE id IN (SELECT id FROM events"
            " WHERE room = ? AND id <= ? ORDER BY id LIMIT ?)",
            (room, rows[0][0], self.retention_chunk)))

    async def _chunks(self, delete: Callable[[sqlite3.Connection], int]) -> int:
        """Run a DELETE of at most one chunk until a chunk comes back short; return the total."""
        total = 0
        while True:
            count = await self._run(delete, "trim history", write=True)
            total += count
            if count < self.retention_chunk:
                return total
