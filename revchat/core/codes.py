"""How a socket ends and what an error frame says: every close code the server sends and every
error code, each defined once, with what a client should do about it.

The page reads the same table: ``static/js/codes.js`` is generated from it (:func:`javascript`;
a test keeps them in step), and ``docs/protocol.md`` lists it for other clients. In the manner
of centrifuge's ``disconnect.go``: one code, one meaning, one piece of reconnect advice.
"""

from __future__ import annotations

import json
from typing import Literal, NamedTuple

Advice = Literal["reconnect", "sign_in", "wait"]
"""``reconnect``: again, with backoff, resuming with ``?since=``; ``sign_in``: the session is
over; ``wait``: not before a while (the reason says why)."""


class Close(NamedTuple):
    """A close frame: ``code`` and ``reason`` as sent, the advice, and what to tell a person."""

    code: int
    reason: str
    advice: Advice
    message: str

    @property
    def args(self) -> tuple[int, str]:
        """What a sink's ``close(code, reason)`` takes."""
        return self.code, self.reason


GOING_AWAY = Close(1001, "server shutting down", "reconnect", "The server is restarting.")
TOO_MANY_SOCKETS = Close(1008, "too many sockets", "wait",
                         "You have too many connections open to this server.")
"""Sent with the sentence :class:`~revchat.core.quota.TooManySockets` gives as its reason."""
TOO_BIG = Close(1009, "frame too big", "reconnect", "A message was too big to send.")
"""Sent by Sanic itself (``--max-frame-size``)."""
NO_PONG = Close(1011, "no answer to ping", "reconnect", "The connection stopped answering.")
SLOW_CONSUMER = Close(1013, "slow consumer", "reconnect", "The connection was too slow.")
SIGNED_OUT = Close(4401, "signed out", "sign_in", "You are signed out.")
UNAVAILABLE = Close(4503, "service unavailable, try again later", "reconnect",
                    "The server cannot store messages right now.")

CLOSES: tuple[Close, ...] = (GOING_AWAY, TOO_MANY_SOCKETS, TOO_BIG, NO_PONG, SLOW_CONSUMER,
                             SIGNED_OUT, UNAVAILABLE)

ErrorCode = Literal["bad_request", "too_long", "rate_limited", "unavailable"]

ERRORS: dict[ErrorCode, str] = {
    "bad_request": "The frame was malformed; nothing happened.",
    "too_long": "The message is longer than the server takes; nothing was sent.",
    "rate_limited": "Too many messages too fast; nothing was sent.",
    "unavailable": "The server could not store the message; nothing was sent, try again.",
}
"""Each error frame's code and what it means; the frame's ``message`` says more."""

GIVE_BACK: tuple[ErrorCode, ...] = ("too_long", "rate_limited", "unavailable")
"""Errors after which a client should give the person their text back to send again."""


def javascript() -> str:
    """``static/js/codes.js``: this table as an ES module for the page."""
    closes = {c.code: {"reason": c.reason, "advice": c.advice, "message": c.message} for c in CLOSES}
    names = {name: close.code for name, close in sorted(globals().items()) if isinstance(close, Close)}
    def dumps(value: object) -> str:
        return json.dumps(value, indent=2, ensure_ascii=False)

    return (
        "// Generated from revchat/core/codes.py by codes.javascript(): do not edit (a test checks it).\n"
        f"export const CLOSE = {dumps(names)};\n\n"
        f"export const CLOSES = {dumps(closes)};\n\n"
        f"export const ERRORS = {dumps(ERRORS)};\n\n"
        f"export const GIVE_BACK = {dumps(list(GIVE_BACK))};\n"
    )
