"""How a socket ends: every close code the server sends, with its reason and what the page
should do about it. (``docs/protocol.md`` lists them for clients.)"""

from __future__ import annotations

from typing import Literal, NamedTuple

Advice = Literal["reconnect", "sign_in", "wait"]


class Close(NamedTuple):
    """A close frame: ``code`` and ``reason`` as sent, and the advice for the client."""

    code: int
    reason: str
    advice: Advice

    @property
    def args(self) -> tuple[int, str]:
        """What a sink's ``close(code, reason)`` takes."""
        return self.code, self.reason


GOING_AWAY = Close(1001, "server shutting down", "reconnect")
SIGNED_OUT = Close(1008, "signed out", "sign_in")
TOO_BIG = Close(1009, "frame too big", "reconnect")
"""Sent by Sanic (``--max-frame-size``)."""
NO_PONG = Close(1011, "no answer to ping", "reconnect")
SLOW_CONSUMER = Close(1013, "slow consumer", "reconnect")
UNAVAILABLE = Close(1013, "service unavailable, try again later", "reconnect")
TOO_MANY_SOCKETS = 1008
"""With the reason :class:`~revchat.quota.TooManySockets` gives; the page waits and retries."""
