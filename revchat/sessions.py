"""Signed cookies: the session (who you are) and short-lived values such as OAuth state.

A value is ``base64url(json) "." base64url(HMAC-SHA256(key, purpose "|" payload))``; the JSON
carries its issue time, so a cookie expires even if a browser keeps it. No framework imports:
the web layer sets and reads the cookies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from revchat.events import User

SESSION_COOKIE = "revchat_session"
SESSION_MAX_AGE = 30 * 24 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs and checks JSON values for one purpose ("session", "oauth", ...)."""

    def __init__(self, secret_key: str, purpose: str) -> None:
        self._key = hashlib.sha256(f"revchat|{purpose}|{secret_key}".encode()).digest()

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def dumps(self, value: dict[str, Any], now: float | None = None) -> str:
        body = dict(value, iat=int(time.time() if now is None else now))
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}"

    def loads(self, token: str | None, max_age: float, now: float | None = None) -> dict[str, Any] | None:
        """The value, or None if the token is missing, tampered with, malformed or too old."""
        if not token or token.count(".") != 1 or len(token) > 8192:
            return None
        payload, mac = token.split(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("iat"), int):
            return None
        age = (time.time() if now is None else now) - body["iat"]
        if age > max_age or age < -300:
            return None
        return body


def session_token(signer: Signer, user: User) -> str:
    return signer.dumps({"user": user.as_dict()})


def session_user(signer: Signer, token: str | None) -> User | None:
    """The signed-in user named by a session cookie, or None."""
    body = signer.loads(token, SESSION_MAX_AGE)
    if body is None:
        return None
    try:
        return User.from_dict(body["user"])
    except (KeyError, TypeError):
        return None
