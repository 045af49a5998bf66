"""What the Redis broker's workers tell each other without storing it, over pub/sub:

* ``{p}:typing`` carries typing notices (best effort: a lost one only hides an indicator);
* ``{p}:forgotten`` announces a user whose data was deleted (already anonymised in Redis), so
  every worker anonymises its cached copies too;
* ``{p}:ended`` announces sessions ended on the server. They are kept in Redis first
  (:meth:`revchat.backends.redis_history.RedisHistory.end_sessions`), so a worker that was not
  listening reads them all again each time it (re)subscribes.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError

from revchat.core.errors import one_line
from revchat.core.events import User, dumps
from revchat.core.history import HistoryUnavailable
from revchat.core.sessions import Ended

log = logging.getLogger("revchat.redis")

ERRORS = (RedisError, OSError)


class RedisNotices:
    """One worker's end of the three channels; ``reader`` is a connection that may block."""

    def __init__(self, client: Redis, reader: Redis, *, prefix: str, worker: str) -> None:
        self._redis = client
        self._reader = reader
        self.worker = worker
        self.typing_channel = f"{prefix}:typing"
        self.ended_channel = f"{prefix}:ended"
        self.forgotten_channel = f"{prefix}:forgotten"

    def _raw_reader(self) -> Redis:
        """A client like ``reader`` (same server, options and TLS) that does not decode replies;
        closing it closes its connections."""
        pool = self._reader.connection_pool
        options = {**pool.connection_kwargs, "decode_responses": False}
        return Redis.from_pool(ConnectionPool(connection_class=pool.connection_class, **options))

    async def send_typing(self, room: str, user: User) -> None:
        """Tell the other workers ``user`` is typing in ``room``; nothing if Redis is down."""
        payload = dumps({"worker": self.worker, "room": room, "user": user.as_dict()})
        with contextlib.suppress(*ERRORS):
            await self._redis.publish(self.typing_channel, payload)

    async def send_ended(self, ended: Ended) -> None:
        """Announce sessions already kept in Redis; a failure is logged, not raised (the others
        read what is kept when they subscribe again)."""
        try:
            await self._redis.publish(self.ended_channel, ended.to_json())
        except ERRORS as exc:
            log.warning("ended sessions not announced: %s", one_line(exc))

    async def send_forgotten(self, user_id: str) -> None:
        """Announce a user already anonymised in Redis; a failure is logged, not raised (the
        others show the stored, anonymised events once they load their rooms again)."""
        try:
            await self._redis.publish(self.forgotten_channel, user_id)
        except ERRORS as exc:
            log.warning("data deletion not announced: %s", one_line(exc))

    async def listen(self, *, relay: Callable[[str, User], None], ended: Callable[[Ended], None],
                     forgotten: Callable[[str], None],
                     kept: Callable[[], Awaitable[Ended]]) -> None:
        """Until cancelled or Redis fails: hand other workers' typing notices to ``relay``, every
        ended session to ``ended`` (starting with all that ``kept`` returns: some may have been
        ended while this worker was not listening) and every user whose data was deleted
        elsewhere to ``forgotten``. Malformed messages are skipped."""
        channels = {name.encode(): name for name in
                    (self.typing_channel, self.ended_channel, self.forgotten_channel)}
        # A client of its own that hands over bytes: a payload that is not UTF-8 is then one
        # message to skip, where a decoding client fails inside the iteration and the
        # subscription with it (and what is published while it starts over is lost).
        async with self._raw_reader() as client, \
                client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(*channels.values())
            try:
                ended(await kept())
            except HistoryUnavailable as exc:
                raise ConnectionError(str(exc)) from exc  # start over, like any Redis error
            async for message in pubsub.listen():
                try:
                    channel, data = channels.get(message["channel"]), message["data"].decode()
                    if channel == self.ended_channel:
                        ended(Ended.from_json(data))
                    elif channel == self.forgotten_channel:
                        forgotten(data)
                    elif channel == self.typing_channel:
                        notice = json.loads(data)
                        if notice["worker"] != self.worker:
                            relay(str(notice["room"]), User.from_dict(notice["user"]))
                except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
                    continue  # ValueError covers UnicodeDecodeError and bad JSON
