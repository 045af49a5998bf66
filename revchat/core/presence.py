"""Who is in which room: the Presence interface.

A user is a member of a room while they have at least one socket in it, on any worker; a join
and a leave each happen once however many tabs and workers they use. In the manner of
centrifuge's ``PresenceManager`` and Phoenix's ``Tracker``: the engine asks, a backend counts
(:class:`revchat.backends.memory.MemoryPresence` in one process,
:class:`revchat.backends.redis_presence.RedisPresence` across workers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from revchat.core.events import User


class Presence(ABC):
    """Counts each user's sockets per room."""

    @abstractmethod
    async def connected(self, room: str, user: User) -> bool:
        """Count one more socket of ``user`` in ``room``; True if it is the user's first anywhere."""

    @abstractmethod
    async def disconnected(self, room: str, user: User) -> bool:
        """Count one socket less; True if it was the user's last anywhere. A socket that was
        never counted is not counted down."""

    @abstractmethod
    async def members(self, room: str) -> list[User]:
        """Users with at least one socket in ``room``."""
