"""The room engine: the heart of revchat, a plain asyncio object that knows no Sanic.

It keeps the seed's design: every event of a room passes through one place (the broker's
delivery, :meth:`Engine.deliver`, in :mod:`revchat.core.fanout`), so every subscriber sees one order.
A :class:`Subscription` is what the seed called it: the archive first, then live events. Here:
subscribing (the welcome, resume, presence), what clients do (say, typing, leaving), and the
sessions and users the server ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from revchat.core.broker import Broker
from revchat.core.codes import GOING_AWAY, SIGNED_OUT
from revchat.core.errors import BrokerUnavailable, Refused, RevchatError
from revchat.core.events import Draft, Event, User, id_key, welcome_frame
from revchat.core.fanout import Fanout
from revchat.core.history import forgotten_user
from revchat.core.protocol import RateLimiter
from revchat.core.quota import SocketQuota
from revchat.core.room import Room, Sink, Subscription
from revchat.core.sessions import Ended, Session, SessionBook

log = logging.getLogger("revchat.engine")



class RateLimited(Refused):
    """The user is over the room's message rate; the message was not published."""


class Closing(RevchatError):
    """The engine is shutting down and takes no new subscribers."""


class SessionEnded(Refused):
    """The subscriber's session was ended on the server while its socket was opening."""


@dataclass(frozen=True)
class Limits:
    """What the engine enforces (:meth:`revchat.settings.config.Settings.limits` fills it from the
    settings; :mod:`revchat.settings.options` says what each one means). The defaults are the
    tests': no per-user limits."""

    archive_size: int = 50
    resume_limit: int = 1000
    queue_size: int = 1024 * 1024
    write_delay: float = 0.003
    """Seconds between two flushes of a busy room; 0 flushes on every loop pass."""
    rate: float = 2.0
    burst: int = 10
    user_rate: float = 0.0
    """Messages per second a user may say across all rooms (0: no limit beyond each room's)."""
    user_sockets: int = 0
    """Open sockets per user, and new ones per user per minute (0: no limit)."""


def _retrieved(future: asyncio.Future[None]) -> None:
    """Take a finished room load's outcome, so a failure nobody awaits is not logged as lost."""
    if not future.cancelled():
        future.exception()


class Engine(Fanout):
    """Rooms, subscriptions, presence and fan-out for one worker."""

    def __init__(
        self,
        broker: Broker,
        limits: Limits | None = None,
        *,
        frame: Callable[[str], bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.limits = limits = limits or Limits()
        super().__init__(frame=frame, queue_size=limits.queue_size, write_delay=limits.write_delay,
                         cache=max(limits.archive_size, 100))
        self.clock = clock
        self.closing = False
        self.sessions = SessionBook()
        self.faults = broker.faults
        self._limiter = RateLimiter(self.limits.rate, self.limits.burst)
        self._user_limiter = RateLimiter(self.limits.user_rate, 2 * self.limits.burst)
        self._typing_limiter = RateLimiter(1.0, 3)
        self.quota = SocketQuota(self.limits.user_sockets)
        self._tasks: set[asyncio.Task[None]] = set()
        self.emptied = asyncio.Event()
        """Set while the engine holds no room: every subscription has finished."""
        self.emptied.set()
        broker.listener = self

    async def open(self) -> None:
        """Load what the store says about ended sessions (the broker is open)."""
        self.sessions.apply(await self.broker.ended_sessions())

    # -- subscribing ------------------------------------------------------------------------

    async def subscribe(
        self, name: str, user: User, sink: Sink, since: str | None = None,
        session: Session | None = None,
    ) -> Subscription:
        """Send ``sink`` the welcome frame, then every live event of room ``name``.

        With ``since``, the welcome's archive is every event after that id (``resumed`` true),
        unless the id is unknown or more than ``resume_limit`` events were missed. Publishes the
        user's ``join`` when this is their first socket in the room.

        Interrupted at any await (the client left), it leaves no trace: not counted, not a
        member, its ``leave`` published if its ``join`` was. Once it returns, the caller must
        :meth:`cancel` it. Raises :class:`Closing`, :class:`TooManySockets` and
        :class:`SessionEnded`.
        """
        if self.closing:
            raise Closing()
        self.quota.hold(user.id)
        try:
            sub = await self._welcome(name, user, sink, since, session)
        except BaseException:
            self.quota.release(user.id)
            raise
        try:
            if await self.broker.connected(name, user):
                await self.broker.publish(Draft("join", name, user, self._now()))
        except BrokerUnavailable as exc:
            log.warning("join of %s in %s not published: %s", user.id, name, exc)
        except BaseException:
            # Interrupted while the join was counted or stored: undo it in a task of its own,
            # which a second cancellation of this one cannot stop half-way.
            task = asyncio.ensure_future(self.cancel(sub))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            raise
        return sub

    async def _welcome(self, name: str, user: User, sink: Sink, since: str | None,
                       session: Session | None) -> Subscription:
        """Hold the room, then send the welcome and start the live stream; on any failure or
        interruption, let go of the room again."""
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
            self.emptied.clear()
            room.ready = asyncio.ensure_future(self._load(room))
            room.ready.add_done_callback(_retrieved)  # its subscribers may all be gone
        room.refs += 1
        try:
            await asyncio.shield(room.ready)  # type: ignore[arg-type]
            missed = await self._missed(room, since) if since is not None else None
            if self.closing:
                raise Closing()
            if session is not None and self.sessions.ended(session):
                raise SessionEnded()  # signed out while this socket waited for its room
            # From here to the end of the block nothing awaits, so the welcome and the live
            # stream meet exactly: no event is lost or doubled between them.
            archive, resumed = room.archive(since, missed, self.limits.archive_size,
                                            self.limits.resume_limit)
            sub = Subscription(room, user, sink, session)
            if room.pending:  # already in the archive: the next flush sends only the rest
                room.joining[sub] = len(room.pending)
            else:
                room.subs.add(sub)
            self.stats.subscriptions += 1
            welcome = welcome_frame(name, user, room.members_frame(), archive, resumed)
            self._write(sub, self.frame(welcome))
        except BaseException:
            self._release(room)
            raise
        return sub

    async def _load(self, room: Room) -> None:
        """Fill a newly held room: recent events, members, then live delivery from there on."""
        room.loading = []
        try:
            recent = await self.broker.history.recent(room.name, self._cache)
            members = await self.broker.members(room.name)
        except BaseException:
            room.loading = None
            if self.rooms.get(room.name) is room:  # not a newer room of the same name
                del self.rooms[room.name]
            if not self.rooms:
                self.emptied.set()
            raise
        if self.rooms.get(room.name) is not room:
            return  # let go while loading (its subscribers left): nothing to deliver to
        self.broker.subscribe(room.name, recent[-1].id if recent else None)
        room.set_members(members)
        room.recent = recent
        room.last = recent[-1].key if recent else ()
        buffered, room.loading = room.loading, None
        self._accept(room, buffered)

    async def _missed(self, room: Room, since: str) -> list[Event] | None:
        """Events after ``since`` read from history, or None when ``since`` is not kept.

        Only what is older than the room's cached events needs a read; while one is in flight
        the cache is not trimmed, so the read and the cache together leave no gap.
        """
        key = id_key(since)
        if key is None:
            return None
        recent = room.recent
        if recent and recent[0].key <= key:
            return [] if any(e.key == key for e in recent) else None
        room.resuming += 1
        try:
            return await self.broker.history.after(room.name, since, self.limits.resume_limit + 1)
        finally:
            room.resuming -= 1

    def _release(self, room: Room) -> None:
        room.refs -= 1
        if room.refs <= 0 and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            if room.flush is not None:
                room.flush.cancel()
            self.broker.unsubscribe(room.name)
        if not self.rooms:
            self.emptied.set()

    # -- client actions ---------------------------------------------------------------------

    async def say(self, sub: Subscription, text: str) -> Event:
        """Publish a message from the subscriber's user; it is stored before anyone receives it.

        Raises :class:`RateLimited` over the room's rate or the user's across rooms,
        :class:`BrokerUnavailable` if it cannot be stored.
        """
        user_id = sub.user.id
        if not (self._limiter.allow(user_id, sub.room.name) and self._user_limiter.allow(user_id, "")):
            self.stats.rate_limited += 1
            raise RateLimited()
        return await self.broker.publish(Draft("message", sub.room.name, sub.user, self._now(), text))

    def typing(self, sub: Subscription) -> None:
        """Tell the room's other members that this user is typing (never stored)."""
        if self._typing_limiter.allow(sub.user.id, sub.room.name):
            self.broker.typing(sub.room.name, sub.user)

    async def cancel(self, sub: Subscription) -> None:
        """Forget a subscription; publish the user's ``leave`` if it was their last socket."""
        if sub.closed:
            return
        sub.closed = True
        room = sub.room
        room.subs.discard(sub)
        room.joining.pop(sub, None)
        self.quota.release(sub.user.id)
        try:
            if await self.broker.disconnected(room.name, sub.user):
                await self.broker.publish(Draft("leave", room.name, sub.user, self._now()))
        except BrokerUnavailable as exc:
            log.warning("leave of %s in %s not published: %s", sub.user.id, room.name, exc)
        finally:
            self._release(room)

    def close(self, code: int = GOING_AWAY.code, reason: str = GOING_AWAY.reason) -> None:
        """Take no new subscribers and close every socket (1001 on shutdown)."""
        self.closing = True
        for room in list(self.rooms.values()):
            self._flush(room)
            for sub in list(room.subs):
                sub.sink.close(code, reason)

    # -- sessions ended on the server -----------------------------------------------------

    async def end_sessions(self, ended: Ended) -> None:
        """End sessions everywhere: stored, then every worker refuses them and closes their
        sockets. Raises :class:`BrokerUnavailable` when it cannot be stored."""
        await self.broker.end_sessions(ended)

    def sessions_ended(self, ended: Ended) -> None:
        """Called by the broker on every worker: refuse these sessions from now on and close
        the sockets that use them (4401 "signed out")."""
        self.sessions.apply(ended)
        for room in list(self.rooms.values()):
            gone = [sub for sub in (*room.subs, *room.joining)
                    if sub.session is not None and self.sessions.ended(sub.session)]
            if gone:
                self._flush(room)
            for sub in gone:
                room.subs.discard(sub)
                sub.sink.close(*SIGNED_OUT.args)  # its handler's cancel() does the rest

    def _now(self) -> int:
        return int(self.clock() * 1000)

    async def forget_user(self, user_id: str) -> int:
        """Anonymise a user's name and avatar in the store and in the rooms every worker holds
        (Facebook's data deletion); return how many stored events changed."""
        return await self.broker.forget_user(user_id)

    def user_forgotten(self, user_id: str) -> None:
        """Called by the broker on every worker: show the user anonymised in the rooms held."""
        anonymous = forgotten_user(user_id)
        for room in self.rooms.values():
            room.forget(anonymous)
