"""Request helpers shared by the blueprints: who is signed in, Origin checks, page rendering."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import Forbidden, NotFound
from sanic_ext import render

from revchat.core.events import User
from revchat.core.sessions import (
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    Session,
    new_session,
    read_session,
    session_token,
)
from revchat.settings.config import Settings
from revchat.web.context import context

PACKAGE = Path(__file__).resolve().parent
TEMPLATES = PACKAGE / "templates"
STATIC = PACKAGE / "static"

App: TypeAlias = Sanic[Any, Any]
"""The revchat Sanic app type (config and ctx are Sanic's defaults)."""


def settings_of(request: Request) -> Settings:
    settings = context(request).settings
    return settings


def facebook_settings(request: Request) -> Settings:
    """The settings, for a Facebook route: 404 while Facebook sign-in is not configured."""
    settings = settings_of(request)
    if not settings.facebook:
        raise NotFound("Facebook sign-in is not configured")
    return settings


def current_session(request: Request) -> Session | None:
    """The session the request's cookie names, or None: no cookie, a forged, expired or
    malformed one, or a session the server has ended (signed out, data deleted)."""
    ctx = request.ctx
    if not hasattr(ctx, "session"):
        signer = context(request).session_signer
        session = read_session(signer, request.cookies.get(SESSION_COOKIE))
        book = context(request).engine.sessions
        ctx.session = None if session is None or book.ended(session) else session
    found: Session | None = ctx.session
    return found


def current_user(request: Request) -> User | None:
    """The user of :func:`current_session`, or None."""
    session = current_session(request)
    return session.user if session is not None else None


def client_address(request: Request) -> str:
    """Who is asking: the peer's address, or the one ``--trusted-proxies`` proxies forwarded.

    An IPv6 address counts by its /64, the block one household or one host is given: a client
    picks addresses within it at will.
    """
    address = request.client_ip or "unknown"
    if ":" in address:
        try:
            ip = ipaddress.IPv6Address(address.strip("[]"))
        except ValueError:
            return address
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


def form_of(request: Request) -> Mapping[str, Any] | None:
    """The request's form fields, or None when the body is not a URL-encoded form of UTF-8 text.

    revchat's forms (and Facebook's callback) are URL-encoded; anything else Sanic would try to
    parse, and log a traceback when it cannot: anyone could fill the log.
    """
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if request.body and kind != "application/x-www-form-urlencoded":
        return None
    try:
        request.body.decode()
    except UnicodeDecodeError:
        return None
    return request.form or {}


def signin_allowed(request: Request) -> bool:
    """Take one of the client address's sign-ins (``--signin-rate``); False when none is left."""
    limiter = context(request).signins
    return limiter.allow(client_address(request), "")


TOO_MANY_SIGNINS = "Too many sign-ins from your network just now. Please try again in a minute."


def origin_allowed(request: Request) -> bool:
    """True when the request has no Origin header or names the public URL's origin."""
    origin = request.headers.get("origin")
    return origin is None or origin in settings_of(request).allowed_origins


def require_same_origin(request: Request) -> None:
    """Refuse (403) a request that a page of another origin made (CSRF for forms, CSWSH)."""
    if not origin_allowed(request):
        raise Forbidden("cross-origin request refused")


def start_session(request: Request, response: HTTPResponse, user: User) -> Session:
    """Sign ``user`` in: a new session, its cookie set on ``response``."""
    signer = context(request).session_signer
    session = new_session(user)
    _set_cookie(request, response, SESSION_COOKIE, session_token(signer, session), SESSION_MAX_AGE)
    return session


def end_session(request: Request, response: HTTPResponse) -> None:
    # Not delete_cookie(): Sanic marks the deletion Secure, which plain-http browsers ignore.
    _set_cookie(request, response, SESSION_COOKIE, "", 0)


def _set_cookie(request: Request, response: HTTPResponse, name: str, value: str, max_age: int) -> None:
    response.add_cookie(
        name, value, path="/", max_age=max_age, httponly=True, samesite="Lax",
        secure=settings_of(request).secure_cookies,
    )


def set_short_cookie(request: Request, response: HTTPResponse, name: str, value: str,
                     max_age: int) -> None:
    """A signed, HttpOnly, SameSite=Lax cookie that lives ``max_age`` seconds (OAuth state)."""
    _set_cookie(request, response, name, value, max_age)


async def page(request: Request, template: str, status: int = 200, **context: Any) -> HTTPResponse:
    """Render a template with the signed-in user and the settings the pages need."""
    settings = settings_of(request)
    base = {
        "user": current_user(request),
        "guests": settings.guests,
        "facebook": settings.facebook,
        "error": None,
    }
    response: HTTPResponse = await render(
        template, status=status, context=base | context, app=request.app
    )
    return response
