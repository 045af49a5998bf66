"""Facebook's data-deletion callback and the status page its answer names.

``POST /auth/facebook/data-deletion`` verifies Facebook's ``signed_request``, ends the user's
sessions, anonymises them in history and answers the status URL that
``GET /auth/facebook/deletion?code=...`` serves. The code needs no storage (:func:`deletion_code`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from datetime import UTC, datetime

from sanic import Blueprint, HTTPResponse, Request
from sanic import json as json_response
from sanic.exceptions import NotFound

from revchat.core.sessions import Ended, now_ms
from revchat.settings.config import Settings
from revchat.web.context import context
from revchat.web.requests import facebook_settings, form_of, page

log = logging.getLogger("revchat.facebook")

bp = Blueprint("facebook_deletion", url_prefix="/auth/facebook")

FB_ID = re.compile(r"[0-9]{1,32}")
DELETION_CODE = re.compile(r"([0-9a-f]{8})([0-9a-f]{12})([0-9a-f]{12})")

def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def signed_request_user(signed_request: str, app_secret: str) -> str | None:
    """The ``user_id`` of a valid ``base64url(sig).base64url(payload)``, or None.

    The signature is HMAC-SHA256 of the payload part with the app secret, compared in constant
    time before the payload is parsed; the payload's algorithm must be HMAC-SHA256.
    """
    sig_part, dot, payload_part = signed_request.partition(".")
    if not dot or len(signed_request) > 8192:
        return None
    try:
        signature = _unb64(sig_part)
        expected = hmac.new(app_secret.encode(), payload_part.encode("ascii"),
                            hashlib.sha256).digest()
        if not hmac.compare_digest(signature, expected):
            return None
        payload = json.loads(_unb64(payload_part))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(payload, dict) or str(payload.get("algorithm", "")).upper() != "HMAC-SHA256":
        return None
    user_id = str(payload.get("user_id", ""))
    return user_id if FB_ID.fullmatch(user_id) else None


def _code_mac(settings: Settings, body: str) -> str:
    key = f"revchat|fb-deletion|{settings.secret_key}".encode()
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()[:12]


def deletion_code(settings: Settings, user_id: str, now: float | None = None) -> str:
    """A confirmation code that needs no storage: the time in hex, a keyed hash of the user (the
    code is shown to people, the Facebook id is not) and a MAC over both."""
    body = f"{int(time.time() if now is None else now):08x}{_code_mac(settings, 'user|' + user_id)}"
    return body + _code_mac(settings, body)


def deletion_time(settings: Settings, code: str) -> datetime | None:
    """When the deletion a code confirms was done, or None for a code this server did not issue."""
    match = DELETION_CODE.fullmatch(code)
    if match is None or not hmac.compare_digest(match[3], _code_mac(settings, match[1] + match[2])):
        return None
    return datetime.fromtimestamp(int(match[1], 16), UTC)


@bp.post("/data-deletion")
async def data_deletion(request: Request) -> HTTPResponse:
    """Facebook's data deletion callback: anonymise the user, answer the status URL and code.

    Facebook's servers call it, not a browser, so no Origin check: the signature is the proof.
    """
    settings = facebook_settings(request)
    form = form_of(request) or {}
    raw = form.get("signed_request")
    user_id = signed_request_user(raw or "", settings.fb_client_secret)
    if user_id is None:
        log.warning("data deletion refused: signed_request missing, malformed or forged")
        return json_response({"error": "invalid signed_request"}, status=400)
    engine = context(request).engine
    # Their sessions end everywhere first, then their name goes from what is stored.
    await engine.end_sessions(Ended(users={f"fb:{user_id}": now_ms()}))
    count = await engine.forget_user(f"fb:{user_id}")
    code = deletion_code(settings, user_id)
    log.info("data deletion %s: anonymised %d stored events", code, count)
    return json_response({"url": f"{settings.public_url}/auth/facebook/deletion?code={code}",
                          "confirmation_code": code})


@bp.get("/deletion")
async def deletion_status(request: Request) -> HTTPResponse:
    """The status page a deletion's URL names; 404 for a code this server did not issue."""
    settings = facebook_settings(request)
    code = str(request.args.get("code", ""))
    done = deletion_time(settings, code)
    if done is None:
        raise NotFound("no data deletion has this confirmation code")
    return await page(request, "deletion.html", code=code,
                      done=done.strftime("%Y-%m-%d %H:%M UTC"))
