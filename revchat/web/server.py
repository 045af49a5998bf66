"""Starting and stopping the server: pre-flight checks, then Sanic with one or more workers."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from functools import partial

from sanic import Sanic
from sanic.worker.loader import AppLoader

from revchat.backends.factory import open_broker
from revchat.core.errors import BrokerUnavailable
from revchat.core.files import private_dir
from revchat.settings.config import Settings
from revchat.settings.options import SettingError
from revchat.settings.startup import ensure_secret_key, uses_data_dir
from revchat.web.adapter import Protocol as SocketProtocol
from revchat.web.app import create_app

log = logging.getLogger("revchat")


LISTEN_BACKLOG = 4096
"""A join storm arrives faster than one accept loop: Sanic's 100 would drop connection attempts."""


class ServeError(Exception):
    """The server cannot start; the message is one line for the terminal."""


def preflight(settings: Settings) -> None:
    """Open the history and broker once, so a bad URL or a down Redis is one clear line."""

    async def attempt() -> None:
        try:
            broker = open_broker(settings.broker, **settings.store_options())
        except ValueError as exc:
            raise ServeError(str(exc)) from None
        await broker.open()
        await broker.close()

    try:
        asyncio.run(attempt())
    except BrokerUnavailable as exc:
        raise ServeError(str(exc)) from None


def check_port(host: str, port: int) -> None:
    """Fail early, in one line, when the address cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {host} is already in use") from None
            reason = exc.strerror or str(exc)
            raise ServeError(f"cannot listen on {host!r}:{port}: {reason}") from None
        except (ValueError, UnicodeError) as exc:  # a NUL or an unencodable name
            raise ServeError(f"cannot listen on {host!r}: {exc}") from None


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM: sockets close with 1001, history is flushed, exit 0."""
    logging.getLogger("revchat").setLevel(settings.log_level.upper())
    try:
        settings = ensure_secret_key(settings)
        if uses_data_dir(settings):
            private_dir(settings.data_dir)
    except SettingError as exc:
        raise ServeError(str(exc)) from None
    except OSError as exc:
        raise ServeError(f"cannot use the data dir {settings.data_dir}: {exc.strerror}") from None
    check_port(settings.host, settings.port)
    preflight(settings)
    if settings.guests and not settings.facebook:
        log.info("revchat: guest sign-in is on (no Facebook credentials configured)")
    elif settings.guests:
        log.info("revchat: Facebook and guest sign-in are on")
    else:
        log.info("revchat: Facebook sign-in is on; guests are off (--guests turns them on)")
    log.info("revchat: history %s, broker %s", settings.history if settings.broker.startswith(
        "memory") else "in the broker's streams", settings.broker)
    log.info("revchat: serving %s (listening on %s:%s)", settings.public_url, settings.host,
             settings.port)
    loader = AppLoader(factory=partial(create_app, settings))
    app = loader.load()
    app.prepare(host=settings.host, port=settings.port, workers=settings.workers,
                single_process=settings.workers == 1, motd=False, access_log=False,
                backlog=LISTEN_BACKLOG, protocol=SocketProtocol)
    if settings.workers == 1:
        Sanic.serve_single(primary=app)
    else:
        Sanic.serve(primary=app, app_loader=loader)
