"""What one user may cost in sockets: how many they hold open, and how many they open a minute.

Kept per worker, in the engine, from the moment a subscription is asked for until it is cancelled.
"""

from __future__ import annotations

from revchat.core.errors import Refused
from revchat.core.protocol import RateLimiter


class TooManySockets(Refused):
    """The user has ``limit`` sockets open already, or opened that many in the last minute."""


class SocketQuota:
    """``limit`` open sockets per user and ``limit`` new ones per minute (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._opening = RateLimiter(limit / 60, max(1, limit))

    def hold(self, user_id: str) -> None:
        """Count one more socket of the user; :class:`TooManySockets` (nothing counted) over
        either limit."""
        count = self._open.get(user_id, 0)
        if self.limit:
            if count >= self.limit:
                raise TooManySockets(f"you have {self.limit} sockets open already; close a tab")
            if not self._opening.allow(user_id, ""):
                raise TooManySockets("you are reconnecting too often; wait a minute")
        self._open[user_id] = count + 1

    def release(self, user_id: str) -> None:
        """Count one socket less (each :meth:`hold` is released once)."""
        count = self._open.get(user_id, 0) - 1
        if count > 0:
            self._open[user_id] = count
        else:
            self._open.pop(user_id, None)

    def held(self, user_id: str) -> int:
        return self._open.get(user_id, 0)
