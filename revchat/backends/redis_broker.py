"""The Redis broker: rooms shared by every worker and machine (``--broker redis://HOST:PORT/DB``).

Each room is a Redis stream (:mod:`revchat.backends.redis_history`): publishing is an XADD, and one reader
task per worker XREADs the streams of the rooms it holds, so every worker delivers a room's events
in the stream's one order. Other keys, under the same prefix:

* ``{p}:typing`` and ``{p}:ended`` — pub/sub channels: :mod:`revchat.backends.redis_notices`.
* ``{p}:wake:{worker}`` — what wakes the worker's reader: :mod:`revchat.backends.redis_reader`.
* presence across workers: see :mod:`revchat.backends.redis_presence`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from revchat.backends.redis_history import RedisHistory
from revchat.backends.redis_notices import ERRORS, RedisNotices
from revchat.backends.redis_presence import Change, RedisPresence
from revchat.backends.redis_reader import RedisReader
from revchat.core.broker import Broker
from revchat.core.commit import CommitStats, GroupCommit
from revchat.core.errors import BrokerUnavailable, one_line
from revchat.core.events import Draft, Event, User
from revchat.core.sessions import Ended

log = logging.getLogger("revchat.redis")



class RedisBroker(Broker):
    """Publishes to room streams, reads the held rooms' streams, keeps presence across workers.

    ``heartbeat`` is how long a silent worker's sockets stay counted (refreshed every third of
    it); ``timeout`` bounds every Redis command, so a publish fails within it when Redis is gone.
    """

    name = "redis"
    max_batch = 1000
    retry_min = 0.1
    retry_max = 5.0

    def __init__(self, url: str, *, prefix: str = "revchat", maxlen: int = 0,
                 heartbeat: float = 15.0, timeout: float = 5.0) -> None:
        super().__init__()
        parts = urlsplit(url)
        self.where = f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 6379}" + (
            parts.path if parts.path not in ("", "/") else "")
        self.address = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        self.prefix = prefix
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.worker = secrets.token_hex(8)
        # Errors reach this class at once: it retries with its own backoff, and a blind retry of
        # an XADD whose reply was lost would store the message twice.
        options: dict[str, Any] = {"decode_responses": True, "protocol": 2,
                                   "socket_connect_timeout": timeout, "socket_keepalive": True,
                                   "retry": Retry(NoBackoff(), 0)}
        self._redis = Redis.from_url(url, socket_timeout=timeout, **options)
        # The reader's XREAD blocks on its own connections, so nothing queues behind it.
        self._reader = Redis.from_url(url, socket_timeout=timeout + RedisReader.block, **options)
        self.history: RedisHistory = RedisHistory(self._redis, where=self.where, prefix=prefix,
                                                  maxlen=maxlen)
        self.presence: RedisPresence = RedisPresence(self._redis, prefix=prefix, worker=self.worker,
                                 heartbeat=heartbeat)
        self.notices = RedisNotices(self._redis, self._reader, prefix=prefix, worker=self.worker)
        self.reading = RedisReader(self._redis, self._reader, self.history, prefix=prefix,
                                   worker=self.worker)
        self._commits = GroupCommit(self.history.append, lambda events: self._up(),
                                    lambda exc: self._down(str(exc)), self.max_batch,
                                    faults=self.faults)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sends: set[asyncio.Task[None]] = set()
        self._unpublished: list[Draft] = []
        self._failure: str | None = None
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and register this worker; :class:`BrokerUnavailable` (one line naming
        HOST:PORT) if Redis does not answer. Then start the publisher, reader, heartbeat and
        typing tasks, which survive outages on their own."""
        try:
            await self._redis.ping()
            await self._beat(force=True)
        except ERRORS as exc:
            await self._close_clients()
            reason = one_line(exc)
            raise BrokerUnavailable(f"cannot reach redis at {self.address}: {reason}") from None
        self._commits.start("revchat-redis-publisher")
        for name, run in (("reader", self._read_loop),
                          ("heartbeat", self._heartbeat_loop), ("typing", self._typing_loop)):
            self._tasks[name] = asyncio.create_task(run(), name=f"revchat-redis-{name}")

    async def close(self) -> None:
        """Publish what is queued, take this worker's sockets out of presence, disconnect."""
        self._closed = True
        await self._stop("heartbeat")
        with contextlib.suppress(*ERRORS):
            # Sockets still open here are gone now: the others must see those users leave.
            self._announce(await self.presence.leave())
        await self._commits.stop(timeout=2 * self.timeout)
        for name in list(self._tasks):
            await self._stop(name)
        for task in self._sends:
            task.cancel()
        if self._sends:
            await asyncio.wait(self._sends, timeout=1.0)
        await self._close_clients()

    async def _stop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        # A cancellation can be lost inside a Redis call (on Python 3.11 redis-py's wait_for can
        # swallow it), so cancel until the task is done; _retrying also ends once its task is
        # no longer listed.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait((task,), timeout=1.0)

    async def _close_clients(self) -> None:
        for client in (self._reader, self._redis):
            with contextlib.suppress(*ERRORS):
                await client.aclose()

    def problem(self) -> str | None:
        stopped = self._commits.problem()
        if stopped is not None:
            return f"publisher: {stopped}"
        reader = self._tasks.get("reader")
        if reader is not None and reader.done():
            return "broker: the reader has stopped"
        # The detail (address, error) is in the log: a public endpoint names no address.
        return "broker: redis is unreachable" if self._failure else None

    @property
    def commit_stats(self) -> CommitStats:
        return self._commits.stats

    def _down(self, exc: BaseException | str) -> None:
        reason = exc if isinstance(exc, str) else f"{self.where} unreachable: {one_line(exc)}"
        if self._failure is None:
            log.warning("redis broker: %s", reason)  # once per outage, not once per retry
        self._failure = reason

    def _up(self) -> None:
        if self._failure is not None:
            log.info("redis broker: %s is reachable again", self.where)
            self._failure = None

    async def _retrying(self, name: str, step: Callable[[], Awaitable[None]], *,
                        health: bool = True) -> None:
        """Run ``step`` forever; after a failure wait 0.1 s, doubling up to 5 s, and go on.

        With ``health``, a failure sets what :meth:`problem` reports (a success clears it where
        it really talked to Redis).
        """
        delay = self.retry_min
        while self._tasks.get(name) is asyncio.current_task():
            try:
                await step()
            except ERRORS as exc:
                if health:
                    self._down(exc)
            except Exception:
                log.exception("redis %s failed", name)
            else:
                delay = self.retry_min
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, draft: Draft) -> Event:
        """Add the event to its room's stream (batched with concurrent ones); every worker's
        reader then delivers it. Raises :class:`BrokerUnavailable` when Redis does not take it."""
        if self._closed:
            raise BrokerUnavailable("the server is shutting down")
        if not self._commits.running:
            raise BrokerUnavailable("the redis broker is not open")
        return await self._commits.submit(draft)

    # -- reading ------------------------------------------------------------------------------

    def subscribe(self, room: str, after: str | None) -> None:
        """Read ``room`` from ``after`` on; the reader's XREAD in flight is woken, so the next
        one includes the room at once."""
        self.reading.hold(room, after)
        if not self._closed:
            self._spawn(self.reading.wake())

    def unsubscribe(self, room: str) -> None:
        self.reading.drop(room)

    def _spawn(self, send: Coroutine[Any, Any, None]) -> None:
        """Run a send nobody awaits; :meth:`close` cancels what is left."""
        task = asyncio.ensure_future(send)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _read_loop(self) -> None:
        await self._retrying("reader", self._read_once)

    async def _read_once(self) -> None:
        events = await self.reading.read()
        self._up()
        if events and self.listener is not None:
            self.listener.deliver(events)

    # -- typing and ended sessions ----------------------------------------------------------

    def typing(self, room: str, user: User) -> None:
        if self.listener is not None:
            self.listener.relay(room, user)  # this worker's subscribers need no round trip
        if not self._closed:
            self._spawn(self.notices.send_typing(room, user))

    async def _typing_loop(self) -> None:
        await self._retrying("typing", functools.partial(
            self.notices.listen, relay=self._relay, ended=self._tell_ended,
            forgotten=self._tell_forgotten, kept=self.history.ended_sessions), health=False)

    def _relay(self, room: str, user: User) -> None:
        if self.listener is not None:
            self.listener.relay(room, user)

    async def end_sessions(self, ended: Ended) -> None:
        """Keep ``ended`` in Redis, end the sessions here, and tell the other workers."""
        await super().end_sessions(ended)
        await self.notices.send_ended(ended)

    async def forget_user(self, user_id: str) -> int:
        """Anonymise the user in Redis and here, and tell the other workers."""
        count = await super().forget_user(user_id)
        await self.notices.send_forgotten(user_id)
        return count

    # -- presence ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Redis errors as :class:`BrokerUnavailable`, and the broker marked down."""
        try:
            yield
        except ERRORS as exc:
            self._down(exc)
            raise BrokerUnavailable(f"{self.where} unreachable: {one_line(exc)}") from None

    async def connected(self, room: str, user: User) -> bool:
        with self._unavailable():
            return await self.presence.connected(room, user)

    async def disconnected(self, room: str, user: User) -> bool:
        with self._unavailable():
            return await self.presence.disconnected(room, user)

    async def members(self, room: str) -> list[User]:
        with self._unavailable():
            return await self.presence.members(room)

    async def _heartbeat_loop(self) -> None:
        async def beat() -> None:
            await asyncio.sleep(self.heartbeat / 3)
            await self._beat()

        await self._retrying("heartbeat", beat)

    async def _beat(self, *, force: bool = False) -> None:
        """Refresh this worker's presence and sweep dead workers' (see :meth:`Presence.beat`),
        then publish the joins and leaves that come of it, and those that failed before."""
        changes: list[Change] = []
        try:
            await self.presence.beat(changes, force=force)
            self._up()
            retry, self._unpublished = self._unpublished, []
            self._publish_later(retry)
        finally:
            self._announce(changes)

    def _announce(self, changes: Sequence[Change]) -> None:
        now = int(time.time() * 1000)
        self._publish_later([Draft(kind, room, user, now) for kind, room, user in changes])

    def _publish_later(self, drafts: Sequence[Draft]) -> None:
        """Publish presence events nobody awaits. Redis has already counted the change, so one
        that fails is kept and published again after the next good heartbeat: otherwise the
        member lists would disagree with presence for good."""
        def done(draft: Draft, future: asyncio.Future[Event]) -> None:
            if future.cancelled() or future.exception() is None:
                return
            if self._closed:
                log.warning("%s of %s in %s not published: %s", draft.type, draft.user.id,
                            draft.room, future.exception())
            else:
                self._unpublished.append(draft)

        for draft in drafts:
            self._commits.submit(draft).add_done_callback(functools.partial(done, draft))
