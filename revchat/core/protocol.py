"""What a client may send, checked without I/O: socket frames and the numbers in query strings.

:func:`parse` turns one received frame into a :class:`Say` or :class:`Typing`, or raises
:class:`BadFrame` carrying the error code and message the client is answered with; nothing else
escapes it, whatever the frame holds (see ``docs/protocol.md``). :func:`whole_number` reads a
query-string number the same way. :class:`RateLimiter` and :class:`TokenBucket` are the budgets
that bound what one client may cost.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from revchat.core.codes import ErrorCode
from revchat.core.errors import Refused
from revchat.core.events import storable


class BadFrame(Refused):
    """A frame the server answers with an error frame; the socket stays open."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Say:
    text: str


@dataclass(frozen=True, slots=True)
class Typing:
    pass


Command = Say | Typing


def parse(data: str | bytes, max_length: int) -> Command:
    """Validate one client frame. ``text`` is trimmed and must be 1..max_length code points."""
    if not isinstance(data, str):
        raise BadFrame("bad_request", "frames must be JSON text, not binary")
    try:
        frame = json.loads(data)
    except ValueError:
        raise BadFrame("bad_request", "the frame is not valid JSON") from None
    except RecursionError:  # "[[[[...]]]]": the C decoder stops at the interpreter's depth limit
        raise BadFrame("bad_request", "the frame is nested too deep") from None
    if not isinstance(frame, dict):
        raise BadFrame("bad_request", "the frame must be a JSON object")
    kind = frame.get("type")
    if kind == "typing":
        return Typing()
    if kind != "say":
        # Echo a short, ASCII-only form of what was sent: the answer must itself be sendable.
        shown = ascii(kind[:40]) if isinstance(kind, str) else type(kind).__name__
        raise BadFrame("bad_request", f"unknown frame type {shown}")
    text = frame.get("text")
    if not isinstance(text, str):
        raise BadFrame("bad_request", "a say frame needs a text string")
    text = text.strip()
    if not text:
        raise BadFrame("bad_request", "the message is empty")
    if len(text) > max_length:
        raise BadFrame("too_long", f"the message is longer than {max_length} characters")
    if not storable(text):
        raise BadFrame("bad_request", "the message is not valid Unicode text (a lone surrogate)")
    return Say(text)


def whole_number(raw: str, low: int, high: int) -> int | None:
    """``raw`` as an int from ``low`` to ``high``, or None: ASCII digits only (no sign, no
    spaces, no "²", which ``str.isdigit`` accepts and ``int`` refuses)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw.lstrip("0")) > len(str(high)):
        return None
    value = int(raw)
    return value if low <= value <= high else None


class RateLimiter:
    """Token buckets keyed by (user, room): ``burst`` at once, then ``rate`` per second.

    A rate of 0 turns limiting off. Idle full buckets are forgotten so memory stays bounded.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def allow(self, user_id: str, room: str) -> bool:
        """Take one token; False when the bucket is empty (the message must not be published)."""
        if self.rate <= 0:
            return True
        now = self._clock()
        key = (user_id, room)
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 10000:
            self._forget_full(now)
        return True

    def _forget_full(self, now: float) -> None:
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.rate >= self.burst:
                del self._buckets[key]


_EPSILON = 1e-9


class TokenBucket:
    """One budget: ``burst`` at once, then ``rate`` per second (a socket's incoming frames)."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not rate > 0:
            raise ValueError("a token bucket needs a rate above 0")
        self.rate = rate
        self.burst = max(1.0, burst)  # below one token nothing would ever pass
        self._tokens = self.burst
        self._last = now

    def take(self, now: float) -> float:
        """Take one token and return 0, or return the seconds until one is there (none taken)."""
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens >= 1.0 - _EPSILON:  # after waiting what it said, rounding must not starve it
            self._tokens = max(0.0, tokens - 1.0)
            return 0.0
        self._tokens = tokens
        # A few ulps more than exact: `now + wait - last` must not round below what is needed.
        return (1.0 - tokens) / self.rate + 4 * math.ulp(now)
