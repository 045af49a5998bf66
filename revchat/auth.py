"""Guest sign-in and sign-out (SPEC §3). Facebook sign-in lives in :mod:`revchat.facebook`."""

from __future__ import annotations

import secrets
import unicodedata

from sanic import Blueprint, HTTPResponse, Request, redirect

from revchat.events import User
from revchat.web import end_session, page, require_same_origin, settings_of, start_session

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
    name = (request.form.get("name") or "").strip() if request.form else ""
    problem = guest_name_problem(name)
    if problem:
        return await page(request, "index.html", status=400, error=problem, name=name[:64])
    user = User(id=f"guest:{secrets.token_urlsafe(9)}", name=name)
    response = redirect("/")
    start_session(request, response, user)
    return response


@bp.post("/logout")
async def logout(request: Request) -> HTTPResponse:
    """End the session and go back to the sign-in page."""
    require_same_origin(request)
    response = redirect("/")
    end_session(request, response)
    return response
