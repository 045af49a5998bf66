"""Backends by URL: the only place that knows which class serves which scheme.

Each factory takes a URL and keywords, never the settings, and returns an unopened backend; the
Redis one is imported only when asked for, so the embedded default needs no ``redis`` package.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from revchat.backends.memory import MemoryBroker, MemoryHistory
from revchat.core.broker import Broker
from revchat.core.errors import NEEDS_REDIS, BrokerUnavailable
from revchat.core.history import History


def open_broker(url: str, *, history: str = "memory://", keep: int = 1000, retention_count: int = 0,
                retention_days: float = 0.0, redis_prefix: str = "revchat") -> Broker:
    """The broker for ``url``, with its history; nothing is connected until ``open()``.

    ``memory://`` stores through the ``history`` URL (keeping ``keep`` events per room in
    memory, and the retention limits in SQLite); ``redis://`` and ``rediss://`` (the redis
    extra) keep each room's history in its stream, at most ``retention_count`` per room.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryBroker(open_history(history, keep=keep, retention_count=retention_count,
                                         retention_days=retention_days))
    if scheme in {"redis", "rediss"}:
        try:
            from revchat.backends.redis_broker import RedisBroker
        except ImportError as exc:
            raise BrokerUnavailable(NEEDS_REDIS) from exc
        return RedisBroker(url, prefix=redis_prefix, maxlen=retention_count)
    raise ValueError(f"unknown broker URL {url!r} (expected memory:// or redis://...)")


def open_history(url: str, *, keep: int = 1000, retention_count: int = 0,
                 retention_days: float = 0.0) -> History:
    """The history store for ``url``: ``memory://`` or ``sqlite:///PATH``."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryHistory(keep=keep)
    if scheme == "sqlite":
        from revchat.backends.sqlite import SQLiteHistory

        return SQLiteHistory(sqlite_path(url), retention_count=retention_count,
                             retention_days=retention_days)
    raise ValueError(f"unknown history URL {url!r} (expected sqlite:///PATH or memory://)")


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///PATH`` URL: ``sqlite:///rel.db`` is relative, ``sqlite:////abs`` not."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"{url!r} is not sqlite:///PATH")
    return url[len("sqlite:///"):]
