"""A fake Facebook for the tests: the login dialog, the token endpoint and the Graph API's ``/me``,
served by a real HTTP server on a loopback port, with a switch to make each of them fail.

revchat is pointed at it with ``fb_dialog_url``/``fb_api_url`` and does not know it is tested. The
fake checks what Facebook checks (client id and secret, the redirect URI, the PKCE verifier, a code
used once, the access token and its ``appsecret_proof``) and answers in Facebook's shapes: errors
as ``{"error": {"message", "type", "code"}}``, the success redirect with ``#_=_`` appended.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

from sanic import HTTPResponse, Request, Sanic, redirect
from sanic import json as json_response

from tests.support.live import serving
from tests.support.ports import free_socket

Failure = Literal["400", "500", "bad_json", "slow"] | None
"""How an endpoint fails: Facebook's JSON error with 400 or 500, 200 with an HTML body, or a
right answer after :data:`SLOW` seconds."""

SLOW = 1.0


@dataclass(frozen=True)
class Person:
    """Who signs in at the dialog."""

    id: str = "10229876543210"
    name: str = "Ann Example"
    picture: str = "https://fake-facebook.example/pictures/10229876543210.jpg"


@dataclass
class Grant:
    person: Person
    redirect_uri: str
    challenge: str | None


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def fb_error(message: str, status: int, code: int = 100) -> HTTPResponse:
    """An error the way the Graph API sends it."""
    error = {"message": message, "type": "OAuthException", "code": code,
             "fbtrace_id": secrets.token_urlsafe(8)}
    return json_response({"error": error}, status=status)


def failure(kind: Failure) -> HTTPResponse | None:
    if kind == "400":
        return fb_error("(#100) Invalid parameter", 400)
    if kind == "500":
        return fb_error("An unexpected error has occurred. Please retry your request later.",
                        500, code=2)
    if kind == "bad_json":
        return HTTPResponse("<html><body>Sorry, something went wrong.</body></html>",
                            content_type="text/html")
    return None


@dataclass
class FakeFacebook:
    """The fake provider's state: switches set by a test and the requests it received."""

    client_id: str
    client_secret: str
    version: str = "v26.0"
    person: Person = field(default_factory=Person)
    cancel: bool = False
    """The person presses Cancel in the dialog."""
    token_failure: Failure = None
    me_failure: Failure = None
    require_proof: bool = True
    """Like an app with "Require App Secret" on: /me needs ``appsecret_proof``."""
    dialog_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    me_requests: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    _grants: dict[str, Grant] = field(default_factory=dict)
    _tokens: dict[str, Person] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Sanic[Any, Any]:
        app = Sanic(f"fake_facebook_{uuid.uuid4().hex[:8]}")
        app.config.update(MOTD=False, ACCESS_LOG=False)
        app.add_route(self.dialog, f"/{self.version}/dialog/oauth")
        app.add_route(self.token, f"/{self.version}/oauth/access_token", methods=["GET", "POST"])
        app.add_route(self.me, f"/{self.version}/me")
        return app

    async def dialog(self, request: Request) -> HTTPResponse:
        """The login dialog: the person signs in and consents at once (or cancels)."""
        args = {k: v[0] for k, v in request.args.items()}
        self.dialog_requests.append(args)
        if args.get("client_id") != self.client_id or not args.get("redirect_uri"):
            return HTTPResponse("Invalid App ID or redirect_uri", status=400)
        back = args["redirect_uri"]
        state = {"state": args["state"]} if "state" in args else {}
        if self.cancel:
            query = {"error": "access_denied", "error_code": "200",
                     "error_description": "Permissions error", "error_reason": "user_denied"}
            return redirect(f"{back}?{urlencode(query | state)}#_=_")
        code = secrets.token_urlsafe(24)
        self._grants[code] = Grant(self.person, back, args.get("code_challenge"))
        return redirect(f"{back}?{urlencode({'code': code} | state)}#_=_")

    async def token(self, request: Request) -> HTTPResponse:
        """Exchange a code for an access token, checking what Facebook checks."""
        params = {k: v[0] for k, v in (request.form or request.args).items()}
        self.token_requests.append(params | {"authorization": request.headers.get("authorization",
                                                                                  "")})
        if self.token_failure == "slow":
            await asyncio.sleep(SLOW)
        failed = failure(self.token_failure)
        if failed is not None:
            return failed
        if params.get("client_id") != self.client_id or \
                params.get("client_secret") != self.client_secret:
            return fb_error("Error validating client secret.", 400, code=1)
        grant = self._grants.pop(params.get("code", ""), None)
        if grant is None:
            return fb_error("This authorization code has been used.", 400)
        if params.get("redirect_uri") != grant.redirect_uri:
            return fb_error("Error validating verification code. Please make sure your "
                            "redirect_uri is identical to the one you used in the OAuth dialog "
                            "request", 400)
        if grant.challenge is not None and s256(params.get("code_verifier", "")) != grant.challenge:
            return fb_error("Invalid code verifier.", 400)
        access_token = "EAA" + secrets.token_urlsafe(32)
        self._tokens[access_token] = grant.person
        return json_response({"access_token": access_token, "token_type": "bearer",
                              "expires_in": 5183944})

    async def me(self, request: Request) -> HTTPResponse:
        """The Graph API's /me with the asked fields."""
        params = {k: v[0] for k, v in request.args.items()}
        header = request.headers.get("authorization", "")
        access_token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else \
            params.get("access_token", "")
        self.me_requests.append(params | {"access_token": access_token})
        failed = failure(self.me_failure)
        if failed is not None:
            return failed
        person = self._tokens.get(access_token)
        if person is None:
            return fb_error("Invalid OAuth access token.", 400, code=190)
        proof = hmac.new(self.client_secret.encode(), access_token.encode(),
                         hashlib.sha256).hexdigest()
        checked = "appsecret_proof" in params or self.require_proof
        if checked and params.get("appsecret_proof") != proof:
            return fb_error("Invalid appsecret_proof provided in the API argument", 400)
        profile = {"id": person.id, "name": person.name, "picture": {"data": {
            "height": 50, "is_silhouette": False, "url": person.picture, "width": 50}}}
        fields = params.get("fields", "id,name").split(",")
        return json_response({k: v for k, v in profile.items() if k in fields})


@asynccontextmanager
async def fake_facebook(client_id: str, client_secret: str) -> AsyncIterator[FakeFacebook]:
    """Serve a fake Facebook on a free loopback port in this event loop."""
    sock = free_socket()
    fake = FakeFacebook(client_id, client_secret, port=sock.getsockname()[1])
    async with serving(fake.app(), sock):
        yield fake


def refused_url() -> str:
    """A loopback URL where nothing listens: connecting is refused at once."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def signed_request(payload: dict[str, Any], secret: str) -> str:
    """What Facebook posts to the data deletion callback: ``base64url(sig).base64url(payload)``."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    body = b64(json.dumps(payload).encode())
    signature = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    return f"{b64(signature)}.{body}"
