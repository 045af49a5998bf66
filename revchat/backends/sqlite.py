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
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from revchat.backends import sqlite_schema as schema
from revchat.backends.sqlite_schema import COLUMNS, EXPIRED, INSERT, MAX_ID, ROOMS, TOP_ID, T
from revchat.core.errors import one_line
from revchat.core.events import Draft, Event
from revchat.core.history import FORGOTTEN_NAME, History, HistoryUnavailable
from revchat.core.sessions import SESSION_MAX_AGE, Ended, now_ms

log = logging.getLogger("revchat.sqlite")


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
        call = functools.partial(schema.transaction, job) if write else job
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, call, conn)
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            # RuntimeError: the executor was shut down under us by close().
            raise HistoryUnavailable(f"cannot {what} ({self.path}): {one_line(exc)}") from exc

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file (and its directory) if needed, switch to WAL and migrate the schema.

        Raises :class:`HistoryUnavailable` with one line naming the file if it cannot be used.
        """
        if self._conn is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="revchat-sqlite")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(
                executor, functools.partial(schema.connect, self.path, self.busy_timeout))
        except (sqlite3.Error, OSError, ValueError) as exc:  # ValueError: a NUL in the path
            executor.shutdown(wait=False)
            raise HistoryUnavailable(
                f"cannot open history database {self.path}: {one_line(exc)}") from exc
        self._executor, self._conn = executor, conn
        self._next_retention = asyncio.get_running_loop().time() + self.retention_interval

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
        rows = await self._run(schema.rows(sql, (room, limit)), "read history")
        return [schema.event_of(r) for r in reversed(rows)]

    async def after(self, room: str, event_id: str, limit: int) -> list[Event] | None:
        """Events after ``event_id``; None when that id is not (or no longer) in ``room``."""
        row_id = schema.row_id(event_id)
        if row_id is None:
            return None

        # Read from the id itself: the first row tells whether it is still kept in this room.
        sql = f"SELECT {COLUMNS} FROM events WHERE room = ? AND id >= ? ORDER BY id LIMIT ?"
        rows = await self._run(schema.rows(sql, (room, row_id, max(0, limit) + 1)),
                               "read history")
        if not rows or rows[0][0] != row_id:
            return None
        return [schema.event_of(r) for r in rows[1:]]

    async def before(self, room: str, event_id: str | None, limit: int) -> tuple[list[Event], bool]:
        row_id = MAX_ID if event_id is None else schema.row_id(event_id)
        if row_id is None:
            return [], False
        limit = max(0, limit)
        sql = f"SELECT {COLUMNS} FROM events WHERE room = ? AND id < ? ORDER BY id DESC LIMIT ?"
        # One row more than asked tells whether older ones remain.
        rows = await self._run(schema.rows(sql, (room, row_id, limit + 1)), "read history")
        return [schema.event_of(r) for r in reversed(rows[:limit])], len(rows) > limit

    async def purge(self, room: str) -> int:
        sql = "DELETE FROM events WHERE room = ?"
        return await self._run(schema.changes(sql, (room,)), "purge history", write=True)

    async def export(self, room: str, page: int = 500) -> AsyncIterator[Event]:
        """Every event of ``room``, oldest first, read ``page`` rows at a time."""
        sql = f"SELECT {COLUMNS} FROM events WHERE room = ? AND id > ? ORDER BY id LIMIT ?"
        last = 0
        while True:
            rows = await self._run(schema.rows(sql, (room, last, page)), "export history")
            for row in rows:
                yield schema.event_of(row)
            if len(rows) < page:
                return
            last = rows[-1][0]

    async def forget_user(self, user_id: str) -> int:
        sql = "UPDATE events SET user_name = ?, user_avatar = NULL WHERE user_id = ?"
        return await self._run(schema.changes(sql, (FORGOTTEN_NAME, user_id)), "forget user",
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
                    rooms |= {r[0] for r in await self._run(schema.rows(ROOMS, ()), "list rooms")}
                    self._sweep_all = False
                while rooms and self.retention_count:
                    deleted += await self._trim_room(min(rooms))
                    rooms.remove(min(rooms))
            except BaseException:
                self._touched |= rooms  # not trimmed yet: the next pass does them
                raise
            if self.retention_days:
                cutoff = time.time() * 1000 - self.retention_days * 86_400_000
                deleted += await self._chunks(
                    schema.changes(EXPIRED, (self.retention_chunk, cutoff)))
            return deleted

    async def _trim_room(self, room: str) -> int:
        """Delete ``room``'s events beyond its newest ``retention_count``."""
        sql = "SELECT id FROM events WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?"
        rows = await self._run(schema.rows(sql, (room, self.retention_count)), "trim history")
        if not rows:
            return 0
        return await self._chunks(schema.changes(
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
