"""The chat socket, ``WS /rooms/{room}/socket?since=ID`` (``docs/protocol.md``): Sanic on one
side, the engine on the other.

The handshake is refused (403) before any upgrade without a valid session or from a foreign
Origin. Server frames are written straight to the transport, pre-framed: one encoding per event
serves every subscriber, and the engine bounds what each may hold back (1013).
"""

from __future__ import annotations

import asyncio
import logging
import time

from sanic import Blueprint, Request
from sanic.exceptions import Forbidden, ServiceUnavailable
from sanic.server.websockets.impl import WebsocketImplProtocol

from revchat.core.codes import GOING_AWAY, SIGNED_OUT, TOO_MANY_SOCKETS, UNAVAILABLE, ErrorCode
from revchat.core.commit import Unstorable
from revchat.core.engine import Closing, Engine, RateLimited, SessionEnded
from revchat.core.errors import BrokerUnavailable, Unavailable
from revchat.core.events import ROOM_PATTERN, error_frame
from revchat.core.protocol import BadFrame, Say, TokenBucket, parse
from revchat.core.quota import TooManySockets
from revchat.core.room import Subscription
from revchat.web.adapter import Gone, Inbox, WebSocketSink
from revchat.web.context import context
from revchat.web.pages import room_name
from revchat.web.requests import current_session, current_user, origin_allowed, settings_of

bp = Blueprint("socket")
log = logging.getLogger("revchat.socket")

@bp.on_request
async def check_handshake(request: Request) -> None:
    """Refuse the upgrade with a plain HTTP answer: 403 without a session or from another origin."""
    if not origin_allowed(request):
        raise Forbidden("cross-origin WebSocket refused")
    if current_user(request) is None:
        raise Forbidden("sign in first")
    engine = context(request).engine
    if engine.connections >= settings_of(request).max_connections:
        raise ServiceUnavailable("too many connections")


@bp.websocket(f"/rooms/<room:{ROOM_PATTERN}>/socket")
async def socket(request: Request, ws: WebsocketImplProtocol, room: str) -> None:
    """Welcome, then relay the client's ``say`` and ``typing`` until either side closes."""
    session = current_session(request)
    assert session is not None  # check_handshake refused the upgrade otherwise
    engine = context(request).engine
    settings = settings_of(request)
    inbox = Inbox(ws)
    try:
        sub = await engine.subscribe(room_name(room), session.user, WebSocketSink(ws),
                                     request.args.get("since") or None, session)
    except Closing:
        await ws.close(*GOING_AWAY.args)
        return
    except TooManySockets as exc:
        await ws.close(TOO_MANY_SOCKETS.code, str(exc))
        return
    except SessionEnded:
        await ws.close(*SIGNED_OUT.args)
        return
    except Unavailable as exc:
        # The page retries with backoff; 4503 says "try again later".
        log.warning("socket for %s refused: %s", room, exc)
        await ws.close(*UNAVAILABLE.args)
        return
    # From here on the subscription is ours: whatever ends this handler (the client leaving
    # cancels it at any await), the finally clause finishes it.
    pinger = context(request).pinger
    try:
        if pinger is not None:
            pinger.add(ws)
        budget = TokenBucket(settings.frame_rate, 2 * settings.frame_rate, time.monotonic()) \
            if settings.frame_rate > 0 else None
        while True:
            data = await inbox.get()
            if budget is not None:
                await pace(budget)
            await handle(engine, sub, data, settings.max_message_length)
    except Gone:
        pass  # the connection is lost; the handler was not (always) cancelled
    finally:
        if pinger is not None:
            pinger.discard(ws)
        # Sanic cancels this handler when the connection closes; finish in a task of our own.
        await asyncio.shield(finish(engine, sub, inbox, settings.max_message_length))


async def pace(budget: TokenBucket) -> None:
    """Wait for the socket's next frame token: meanwhile its inbox fills and reading stops."""
    wait = budget.take(time.monotonic())
    while wait > 0:
        await asyncio.sleep(wait)  # the pacing itself, not a wait for an event
        wait = budget.take(time.monotonic())


async def finish(engine: Engine, sub: Subscription, inbox: Inbox, max_length: int) -> None:
    """Publish what the client sent before it closed, then leave the room."""
    try:
        for data in inbox.drain():
            await handle(engine, sub, data, max_length)
    finally:
        await engine.cancel(sub)


async def handle(engine: Engine, sub: Subscription, data: str | bytes, max_length: int) -> None:
    """Act on one client frame; a bad one is answered with an error frame and changes nothing.

    No exception escapes but cancellation: what nothing foresaw is logged, counted and answered
    with ``unavailable``, and the socket stays open.
    """
    try:
        command = parse(data, max_length)
        if isinstance(command, Say):
            await engine.say(sub, command.text)
        else:
            engine.typing(sub)
    except BadFrame as exc:
        tell(engine, sub, exc.code, exc.message)
    except RateLimited:
        tell(engine, sub, "rate_limited", "you are sending messages too fast; wait a moment")
    except Unstorable:
        tell(engine, sub, "bad_request", "the message cannot be stored")
    except BrokerUnavailable:
        tell(engine, sub, "unavailable", "the message was not sent: the server cannot store "
             "messages right now; try again in a moment")
    except Exception as exc:
        engine.faults.record("handling a frame", exc)
        tell(engine, sub, "unavailable", "the server could not handle this frame")


def tell(engine: Engine, sub: Subscription, code: ErrorCode, message: str) -> None:
    engine.send(sub, error_frame(code, message))
