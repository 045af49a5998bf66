"""Guest sign-in and sign-out. Facebook sign-in lives in :mod:`revchat.web.facebook`."""

from __future__ import annotations

import logging
import secrets
import unicodedata

from sanic import Blueprint, HTTPResponse, Request, redirect

from revchat.core.errors import BrokerUnavailable
from revchat.core.events import User
from revchat.core.sessions import Ended
from revchat.web.context import context
from revchat.web.requests import (
    TOO_MANY_SIGNINS,
    current_session,
    end_session,
    form_of,
    page,
    require_same_origin,
    settings_of,
    signin_allowed,
    start_session,
)

log = logging.getLogger("revchat.auth")

bp = Blueprint("auth", url_prefix="/auth")

MAX_NAME = 32


def guest_name_problem(name: str) -> str | None:
    """Why a nickname is refused (1-32 characters after trimming, no control characters)."""
    if not name:
        return "Please choose a name."
    if len(name) > MAX_NAME:
        return f"Names are at most {MAX_NAME} characters."
    if any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"} for c in name):
        return "Names cannot contain control characters."
    return None


@bp.post("/guest")
async def guest(request: Request) -> HTTPResponse:
    """Start a guest session for a valid nickname; show the form again (400) otherwise."""
    require_same_origin(request)
    if not settings_of(request).guests:
        return await page(request, "index.html", status=403,
                          error="Guest sign-in is turned off on this server.")
    form = form_of(request)
    if form is None:
        return await page(request, "index.html", status=400, error="The form could not be read.")
    name = str(form.get("name") or "").strip()
    problem = guest_name_problem(name)
    if problem:
        return await page(request, "index.html", status=400, error=problem, name=name[:64])
    if not signin_allowed(request):
        return await page(request, "index.html", status=429, error=TOO_MANY_SIGNINS, name=name)
    user = User(id=f"guest:{secrets.token_urlsafe(9)}", name=name)
    response = redirect("/")
    start_session(request, response, user)
    return response


@bp.post("/logout")
async def logout(request: Request) -> HTTPResponse:
    """End the session on the server (every worker refuses its cookie from now on, and its
    sockets close), clear the cookie, and go back to the sign-in page."""
    require_same_origin(request)
    session = current_session(request)
    if session is not None:
        engine = context(request).engine
        try:
            await engine.end_sessions(Ended(sessions={session.id: session.expires}))
        except BrokerUnavailable as exc:
            # Keep the cookie: it is still good elsewhere until the server can record its end.
            log.warning("sign-out of %s not recorded: %s", session.user.id, exc)
            return await page(request, "error.html", status=503, message=(
                "Signing out did not work just now: the server could not record it. "
                "Please try again in a moment."))
    response = redirect("/")
    end_session(request, response)
    return response
