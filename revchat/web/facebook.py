"""Sign in with Facebook (the README's "Sign-in"); its data-deletion callback is in
:mod:`revchat.web.deletion`.

The seed trusted a constant ``state`` and ignored HTTP errors. Here:

* ``GET /auth/facebook`` sends the browser to the login dialog with a fresh random ``state`` and a
  PKCE S256 challenge; both secrets wait in a signed cookie that lives ten minutes.
* ``GET /auth/facebook/callback`` checks the state, exchanges the code (client secret and PKCE
  verifier in the body), reads ``/me?fields=id,name,picture`` and starts the session as
  ``fb:<id>``. Any failure shows the sign-in page with a readable message (400 for what the
  user did, 502 for what Facebook did), logs one line and starts no session.

Every URL comes from the settings, so tests and staging point it at another provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import unicodedata
from typing import Any, NoReturn

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from sanic import Blueprint, HTTPResponse, Request, Sanic, redirect

from revchat.core.events import User
from revchat.settings.config import Settings
from revchat.web import deletion
from revchat.web.context import context, context_of
from revchat.web.deletion import FB_ID
from revchat.web.requests import (
    TOO_MANY_SIGNINS,
    client_address,
    facebook_settings,
    page,
    set_short_cookie,
    signin_allowed,
    start_session,
)

log = logging.getLogger("revchat.facebook")

bp = Blueprint("facebook", url_prefix="/auth/facebook")

OAUTH_COOKIE = "revchat_oauth"
OAUTH_MAX_AGE = 600
SCOPE = "public_profile"
# Facebook answers in well under a second; a stuck request must not hold the browser for long.
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
TOTAL_TIMEOUT = 20.0
MAX_NAME = 100
MAX_URL = 2048


class SignInFailed(Exception):
    """The callback cannot sign the user in: ``message`` is for them, ``detail`` for the log."""

    def __init__(self, status: int, message: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.message = message
        self.detail = detail


def setup(app: Sanic[Any, Any], settings: Settings) -> None:
    """Mount the routes. They always exist and answer 404 while Facebook is not configured, so
    a half-configured server says why instead of showing a bare "not found"."""
    app.blueprint(bp)
    app.blueprint(deletion.bp)

    async def open_tls(app: Sanic[Any, Any]) -> None:
        # Building a TLS context reads the trust store: ~0.1 s of CPU that would stall every
        # room of the worker if each sign-in paid it. One per worker, shared by the clients.
        context_of(app).facebook_tls = httpx.create_ssl_context() if settings.facebook else None

    app.register_listener(open_tls, "before_server_start")


def redirect_uri(settings: Settings) -> str:
    """The callback URL to register with Facebook: ``<public-url>/auth/facebook/callback``."""
    return f"{settings.public_url}/auth/facebook/callback"


def _client(request: Request, settings: Settings) -> AsyncOAuth2Client:
    # A client per sign-in: fetch_token() stores the user's access token on the client.
    return AsyncOAuth2Client(
        client_id=settings.fb_client_id, client_secret=settings.fb_client_secret,
        token_endpoint_auth_method="client_secret_post", scope=SCOPE,
        redirect_uri=redirect_uri(settings), code_challenge_method="S256", timeout=TIMEOUT,
        verify=context(request).facebook_tls,
    )


@bp.get("/")
async def login(request: Request) -> HTTPResponse:
    """302 to Facebook's login dialog with a fresh state and PKCE challenge kept in a cookie."""
    settings = facebook_settings(request)
    state, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(48)
    async with _client(request, settings) as client:
        url, _ = client.create_authorization_url(
            f"{settings.fb_dialog_url}/{settings.fb_graph_version}/dialog/oauth",
            state=state, code_verifier=verifier,
        )
    response = redirect(str(url), headers={"cache-control": "no-store"})
    signer = context(request).oauth_signer
    set_short_cookie(request, response, OAUTH_COOKIE,
                     signer.dumps({"state": state, "verifier": verifier}), OAUTH_MAX_AGE)
    return response


@bp.get("/callback")
async def callback(request: Request) -> HTTPResponse:
    """Start the session of the Facebook user and 302 to ``/``; the sign-in page on failure."""
    settings = facebook_settings(request)
    try:
        if not signin_allowed(request):
            raise SignInFailed(429, TOO_MANY_SIGNINS, "too many sign-ins from "
                               f"{client_address(request)}")
        user = await _sign_in(request, settings)
    except SignInFailed as failed:
        log.warning("Facebook sign-in failed: %s", failed.detail)
        response = await page(request, "index.html", status=failed.status, error=failed.message)
    else:
        log.info("%s signed in with Facebook", user.id)
        response = redirect("/", headers={"cache-control": "no-store"})
        start_session(request, response, user)
    # One state, one attempt: a replayed callback finds no cookie. (Not delete_cookie(): it
    # marks the deletion Secure, which browsers ignore from a plain-http origin.)
    set_short_cookie(request, response, OAUTH_COOKIE, "", 0)
    return response


async def _sign_in(request: Request, settings: Settings) -> User:
    code, verifier = _checked_callback(request)
    try:
        # httpx's timeouts bound each step; this bounds the whole (a server dripping bytes).
        async with asyncio.timeout(TOTAL_TIMEOUT):
            me = await _fetch_profile(request, settings, code, verifier)
    except TimeoutError as exc:
        _unreachable(exc)
    return _profile_user(me)


def _checked_callback(request: Request) -> tuple[str, str]:
    """The code and the PKCE verifier of a callback that belongs to this browser's sign-in."""
    args = request.args
    if args.get("error"):
        if args.get("error") == "access_denied":
            raise SignInFailed(400, "You cancelled the Facebook sign-in.", "the user cancelled")
        _provider_failed(f"the dialog answered error={_short(args.get('error'))} "
                         f"({_short(args.get('error_description'))})")
    signer = context(request).oauth_signer
    saved = signer.loads(request.cookies.get(OAUTH_COOKIE), OAUTH_MAX_AGE)
    if saved is None:
        raise SignInFailed(400, "Your Facebook sign-in took too long or your browser did not keep "
                           "its cookie. Please try again.", "no valid state cookie")
    expected = str(saved.get("state"))
    # Bytes: compare_digest() refuses str with non-ASCII characters, which anyone can send.
    if not hmac.compare_digest(str(args.get("state", "")).encode(), expected.encode()):
        raise SignInFailed(400, "This Facebook sign-in link does not belong to your browser. "
                           "Please try again.", "the state does not match the cookie")
    code = args.get("code")
    if not code:
        raise SignInFailed(400, "Facebook did not send a sign-in code. Please try again.",
                           "no code in the callback")
    return str(code), str(saved.get("verifier"))


async def _fetch_profile(request: Request, settings: Settings, code: str,
                         verifier: str) -> Any:
    """Exchange the code for a token and read ``/me``: the decoded JSON answer."""
    api = f"{settings.fb_api_url}/{settings.fb_graph_version}"
    async with _client(request, settings) as client:
        try:
            token = await client.fetch_token(f"{api}/oauth/access_token", code=code,
                                             code_verifier=verifier)
        except OAuthError as exc:  # Facebook's 4xx JSON error ({"error": {...}}).
            _provider_failed(f"the token endpoint refused the code: {_short(exc.error)}")
        except httpx.HTTPStatusError as exc:
            _provider_failed(f"the token endpoint answered HTTP {exc.response.status_code}")
        except httpx.HTTPError as exc:
            _unreachable(exc)
        except ValueError:
            _provider_failed("the token endpoint answered something other than JSON")
        access_token = token.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            _provider_failed("the token endpoint answered no access_token")
        # appsecret_proof: Facebook accepts it always and demands it when the app has
        # "Require App Secret" on, which makes a leaked token useless without the secret.
        proof = hmac.new(settings.fb_client_secret.encode(), access_token.encode(),
                         hashlib.sha256).hexdigest()
        try:
            response = await client.get(f"{api}/me", params={
                "fields": "id,name,picture", "appsecret_proof": proof})
        except OAuthError as exc:  # authlib refused the token (expired, unknown token_type).
            _provider_failed(f"the access token is unusable: {_short(exc.error)}")
        except httpx.HTTPError as exc:
            _unreachable(exc)
    if response.status_code != 200:
        _provider_failed(f"/me answered HTTP {response.status_code}: {_short(response.text)}")
    try:
        return response.json()
    except ValueError:
        _provider_failed("/me answered something other than JSON")


def _profile_user(me: Any) -> User:
    """The session user for a ``/me`` answer: ``fb:<id>``, the name, the picture if https."""
    if not isinstance(me, dict) or not FB_ID.fullmatch(str(me.get("id", ""))):
        _provider_failed(f"/me answered no usable id: {_short(me)}")
    spaced = " ".join(str(me.get("name") or "").split())
    # No control characters, and no lone surrogates ("\ud800" is valid JSON): nothing could
    # store or send a name holding one.
    name = "".join(c for c in spaced if unicodedata.category(c) not in {"Cc", "Cs"})[:MAX_NAME]
    picture = me.get("picture")
    data = picture.get("data") if isinstance(picture, dict) else None
    url = data.get("url") if isinstance(data, dict) else None
    # The page's CSP allows https images only; anything else would show as a broken image.
    good = isinstance(url, str) and url.startswith("https://") and len(url) <= MAX_URL and \
        url.isascii() and url.isprintable()
    avatar = url if good else None
    return User(id=f"fb:{me['id']}", name=name or "Facebook user", avatar=avatar)


def _provider_failed(detail: str) -> NoReturn:
    raise SignInFailed(502, "Facebook could not sign you in just now. Please try again later.",
                       detail)


def _unreachable(exc: Exception) -> NoReturn:
    raise SignInFailed(502, "revchat could not reach Facebook. Please try again in a moment.",
                       f"Facebook unreachable: {type(exc).__name__}: {_short(str(exc))}")


def _short(value: Any) -> str:
    """A value for a log line: repr'd (no forged line breaks) and cut short."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."
