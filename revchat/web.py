"""Request helpers shared by the blueprints: who is signed in, Origin checks, page rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeAlias

from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import Forbidden
from sanic_ext import render

from revchat.config import Settings
from revchat.events import User
from revchat.sessions import SESSION_COOKIE, SESSION_MAX_AGE, Signer, session_token, session_user

PACKAGE = Path(__file__).resolve().parent
TEMPLATES = PACKAGE / "templates"
STATIC = PACKAGE / "static"

App: TypeAlias = Sanic[Any, Any]
"""The revchat Sanic app type (config and ctx are Sanic's defaults)."""


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.ctx.settings
    return settings


def current_user(request: Request) -> User | None:
    """The user the request's session cookie names, or None (no, expired or forged cookie)."""
    signer: Signer = request.app.ctx.session_signer
    return session_user(signer, request.cookies.get(SESSION_COOKIE))


def origin_allowed(request: Request) -> bool:
    """True when the request has no Origin header or names the public URL's origin."""
    origin = request.headers.get("origin")
    return origin is None or origin in settings_of(request).allowed_origins


def require_same_origin(request: Request) -> None:
    """Refuse (403) a request that a page of another origin made (CSRF for forms, CSWSH)."""
    if not origin_allowed(request):
        raise Forbidden("cross-origin request refused")


def start_session(request: Request, response: HTTPResponse, user: User) -> None:
    signer: Signer = request.app.ctx.session_signer
    _set_cookie(request, response, SESSION_COOKIE, session_token(signer, user), SESSION_MAX_AGE)


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
