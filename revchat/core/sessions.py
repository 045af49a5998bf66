"""Sessions: who a signed cookie says you are, and which sessions the server has ended.

A signed value is itsdangerous's ``URLSafeSerializer`` (HMAC-SHA256, a salt per purpose) over a
JSON object that carries its own issue time ``t`` (Unix ms): checked here, with five minutes'
leeway for servers whose clocks differ, so a copied cookie still expires. A session cookie holds
``{"u": USER, "s": SESSION_ID, "t": ISSUED}``.

A signature alone cannot be taken back, so the server also keeps what it has ended
(:class:`Ended`): session ids signed out (until they would have expired anyway) and, per user, a
time before which every session is void (data deletion). Every worker holds that list in a
:class:`SessionBook`, so checking a cookie stays a signature and a dictionary lookup. No
framework imports: the web layer sets and reads the cookies.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadData, URLSafeSerializer

from revchat.core.events import User, storable

SESSION_COOKIE = "revchat_session"
SESSION_MAX_AGE = 30 * 24 * 3600
"""Seconds a session lasts unless it is ended sooner."""
CLOCK_SKEW = 300
"""Seconds a value may seem to come from the future (another server's clock)."""
MAX_TOKEN = 8192


def now_ms() -> int:
    return int(time.time() * 1000)


class Signer:
    """Signs and checks JSON objects for one purpose ("session", "oauth", ...)."""

    def __init__(self, secret_key: str, purpose: str) -> None:
        self._serializer = URLSafeSerializer(
            secret_key, salt=f"revchat.{purpose}", signer_kwargs={"digest_method": hashlib.sha256})

    def dumps(self, value: Mapping[str, Any], now: int | None = None) -> str:
        """``value`` signed, with its issue time ``t`` (Unix ms; now unless given)."""
        return self._serializer.dumps(dict(value, t=now_ms() if now is None else now))

    def loads(self, token: str | None, max_age: float, now: int | None = None) -> dict[str, Any] | None:
        """The value, or None if the token is missing, tampered with, malformed or too old.

        Never raises, whatever ``token`` holds.
        """
        if not token or len(token) > MAX_TOKEN:
            return None
        try:
            body = self._serializer.loads(token)
        except (BadData, ValueError, TypeError, UnicodeError, RecursionError):
            return None
        issued = body.get("t") if isinstance(body, dict) else None
        if type(issued) is not int:
            return None
        age = (now_ms() if now is None else now) - issued  # ms, in ints: any size compares
        if age > max_age * 1000 or age < -CLOCK_SKEW * 1000:
            return None
        found: dict[str, Any] = body
        return found


@dataclass(frozen=True, slots=True)
class Session:
    """One sign-in: its random id, the user, and when it began (Unix ms)."""

    id: str
    user: User
    issued: int

    @property
    def expires(self) -> int:
        """When the cookie stops working by itself (Unix ms)."""
        return self.issued + SESSION_MAX_AGE * 1000


def new_session(user: User, now: int | None = None) -> Session:
    return Session(secrets.token_urlsafe(16), user, now_ms() if now is None else now)


def session_token(signer: Signer, session: Session) -> str:
    return signer.dumps({"u": session.user.as_dict(), "s": session.id}, now=session.issued)


def read_session(signer: Signer, token: str | None) -> Session | None:
    """The session a cookie names, or None (missing, forged, expired or malformed)."""
    body = signer.loads(token, SESSION_MAX_AGE)
    if body is None:
        return None
    sid, data = body.get("s"), body.get("u")
    if not isinstance(sid, str) or not sid or not isinstance(data, dict):
        return None
    try:
        user = User.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return None
    texts = (sid, user.id, user.name, user.avatar or "")
    if not all(storable(text) for text in texts):
        return None
    return Session(sid, user, body["t"])


@dataclass
class Ended:
    """What the server has ended: session ids, each with the time it would have expired anyway
    (Unix ms), and user ids, each with a time before which all their sessions are void."""

    sessions: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"sessions": self.sessions, "users": self.users}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Ended:
        """Parse :meth:`to_json`'s output; raises ``ValueError`` (only) for anything else."""
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("not an Ended value: nested too deep") from None
        sessions = data.get("sessions") if isinstance(data, dict) else None
        users = data.get("users") if isinstance(data, dict) else None
        if not isinstance(sessions, dict) or not isinstance(users, dict):
            raise ValueError("not an Ended value")
        if not all(type(v) is int for v in (*sessions.values(), *users.values())):
            raise ValueError("an Ended value's times are whole numbers")
        return cls({str(k): v for k, v in sessions.items()}, {str(k): v for k, v in users.items()})


class SessionBook:
    """This worker's copy of :class:`Ended`: is a session still good?"""

    PRUNE_EVERY = 3600_000
    """Milliseconds between two sweeps of what expired by itself (an expired entry is harmless:
    its session is refused anyway)."""

    def __init__(self) -> None:
        self._sessions: dict[str, int] = {}
        self._users: dict[str, int] = {}
        self._pruned = 0

    def ended(self, session: Session) -> bool:
        """True when the session was signed out, or its user's sessions were ended after it began."""
        if session.id in self._sessions:
            return True
        before = self._users.get(session.user.id)
        return before is not None and session.issued <= before

    def apply(self, ended: Ended, now: int | None = None) -> None:
        """Add what ``ended`` holds (in time proportional to it, not to the book); at most once
        an hour, forget what has expired by itself meanwhile."""
        now = now_ms() if now is None else now
        self._sessions.update(ended.sessions)
        for user_id, before in ended.users.items():
            self._users[user_id] = max(before, self._users.get(user_id, before))
        if now - self._pruned >= self.PRUNE_EVERY:
            self._pruned = now
            horizon = now - SESSION_MAX_AGE * 1000
            self._sessions = {sid: t for sid, t in self._sessions.items() if t >= now}
            self._users = {uid: t for uid, t in self._users.items() if t >= horizon}

    def snapshot(self) -> Ended:
        """What the book holds, as an :class:`Ended` (a copy)."""
        return Ended(dict(self._sessions), dict(self._users))

    def __len__(self) -> int:
        return len(self._sessions) + len(self._users)
