"""The app factory: glue only. Resources open in listeners, never at import.

``create_app(settings)`` is what Sanic's AppLoader calls in every worker process, so it takes
only picklable settings and has no side effects until the server starts.
"""

from __future__ import annotations

import asyncio
import logging

from sanic import HTTPResponse, Request, Sanic, json
from sanic.exceptions import SanicException
from sanic_ext import Config as ExtConfig

from revchat.backends.factory import open_broker
from revchat.core.engine import Engine
from revchat.core.errors import BrokerUnavailable
from revchat.core.history import HistoryUnavailable
from revchat.core.protocol import RateLimiter
from revchat.core.sessions import Signer
from revchat.settings.config import Settings
from revchat.web import adapter, auth, facebook, ops, pages, redact, socket
from revchat.web.context import Context, context_of
from revchat.web.requests import STATIC, TEMPLATES, App, page

log = logging.getLogger("revchat")

SHUTDOWN_GRACE = 5.0
"""Seconds the sockets' handlers have, after the sockets close, to publish what they had read."""

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


def create_app(settings: Settings, name: str = "revchat") -> App:
    """A configured revchat app; its engine, broker and history open when the server starts."""
    if not settings.secret_key:
        raise ValueError("settings.secret_key is empty: call "
                         "revchat.settings.startup.ensure_secret_key() first")
    redact.install()
    app = Sanic(name, ctx=Context(
        settings=settings,
        session_signer=Signer(settings.secret_key, "session"),
        oauth_signer=Signer(settings.secret_key, "oauth"),
        signins=RateLimiter(settings.signin_rate / 60, settings.signin_rate),
        history_reads=RateLimiter(*pages.HISTORY_RATE),
    ))
    app.config.update(
        WEBSOCKET_MAX_SIZE=settings.max_frame_size,
        # revchat pings from one task per worker (adapter.Pinger), not one per socket
        WEBSOCKET_PING_INTERVAL=None,
        WEBSOCKET_PING_TIMEOUT=None,
        GRACEFUL_SHUTDOWN_TIMEOUT=3.0,
        REQUEST_MAX_SIZE=64 * 1024,
        # Slowloris: a connection that sends nothing, or headers too slowly, is dropped. Sanic
        # checks every half of the shortest timeout, so it goes within 1.5 times this.
        REQUEST_TIMEOUT=settings.header_timeout,
        KEEP_ALIVE_TIMEOUT=settings.header_timeout,
        # The client address comes from X-Forwarded-For only through this many proxies.
        PROXIES_COUNT=settings.trusted_proxies or None,
        ACCESS_LOG=False,
        MOTD=False,
        FALLBACK_ERROR_FORMAT="text",
    )
    app.extend(config=ExtConfig(
        oas=False, health=False, cors=False, templating_path_to_templates=str(TEMPLATES),
        templating_enable_async=True,
    ))
    app.static("/static", STATIC, name="static")
    for blueprint in (pages.bp, auth.bp, socket.bp, ops.bp):
        app.blueprint(blueprint)
    setup_facebook(app, settings)
    setup_lifecycle(app, settings)
    setup_responses(app)
    return app


def setup_facebook(app: App, settings: Settings) -> None:
    """Mount Facebook sign-in (and its data-deletion callback) when it is configured."""
    facebook.setup(app, settings)


def setup_lifecycle(app: App, settings: Settings) -> None:
    @app.before_server_start
    async def open_engine(app: App) -> None:
        broker = open_broker(settings.broker, **settings.store_options())
        await broker.open()
        engine = Engine(broker, settings.limits(), frame=adapter.text_frame)
        try:
            await engine.open()
        except BrokerUnavailable:
            await broker.close()
            raise
        ctx = context_of(app)
        ctx.engine = engine
        ctx.metrics = ops.registry_for(engine)
        if settings.ping_interval > 0:
            ctx.pinger = adapter.Pinger(settings.ping_interval, settings.ping_timeout)
            ctx.pinger.start()

    @app.before_server_stop
    async def close_sockets(app: App) -> None:
        ctx = context_of(app)
        if ctx.pinger is not None:
            await ctx.pinger.stop()
        ctx.engine.close()

    @app.after_server_stop
    async def close_engine(app: App) -> None:
        engine = context_of(app).engine
        # The sockets are closed; their handlers still publish what their clients had sent and
        # their leaves. Wait for them (a while), then store what is queued and close.
        try:
            await asyncio.wait_for(engine.emptied.wait(), SHUTDOWN_GRACE)
        except TimeoutError:
            log.warning("revchat: %d sockets still finishing at shutdown", engine.connections)
        await engine.broker.close()


def setup_responses(app: App) -> None:
    @app.on_response
    async def security_headers(request: Request, response: HTTPResponse) -> None:
        for header, value in SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)

    @app.exception(BrokerUnavailable, HistoryUnavailable)
    async def unavailable(request: Request, exc: Exception) -> HTTPResponse:
        # The detail (a path, an address) is for the log; the answer names the part only.
        log.warning("%s %s: %s", request.method, request.path, exc)
        message = "history is unavailable, try again later"
        if "text/html" in request.headers.get("accept", ""):
            return await page(request, "error.html", status=503, message=message)
        return json({"error": message}, status=503)

    @app.exception(SanicException)
    async def http_error(request: Request, exc: SanicException) -> HTTPResponse:
        status = getattr(exc, "status_code", 500) or 500
        message = str(exc) or "error"
        if "text/html" in request.headers.get("accept", ""):
            return await page(request, "error.html", status=status, message=message)
        return json({"error": message}, status=status)
