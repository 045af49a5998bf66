"""What the app keeps for its requests (Sanic's ``app.ctx``), typed: one object per worker.

The signers and limiters exist from :func:`revchat.web.app.create_app` on; the engine, the
metrics and the pinger from the server's start (``before_server_start``) on.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from sanic import Request, Sanic

from revchat.core.engine import Engine
from revchat.core.protocol import RateLimiter
from revchat.core.sessions import Signer
from revchat.settings.config import Settings
from revchat.web.adapter import Pinger


@dataclass
class Context:
    """One worker's shared state."""

    settings: Settings
    session_signer: Signer
    oauth_signer: Signer
    signins: RateLimiter
    """Sign-ins per client address (``--signin-rate``)."""
    history_reads: RateLimiter
    """``GET /rooms/{room}/history`` per user."""
    facebook_tls: ssl.SSLContext | None = None
    """One TLS context for every call to Facebook (building one costs ~0.1 s of CPU)."""
    pinger: Pinger | None = None
    metrics: CollectorRegistry | None = None
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        """The worker's room engine; only once the server has started."""
        assert self._engine is not None, "the engine opens when the server starts"
        return self._engine

    @engine.setter
    def engine(self, engine: Engine) -> None:
        self._engine = engine


def context(request: Request) -> Context:
    """The request's app's :class:`Context`."""
    return context_of(request.app)


def context_of(app: Sanic[Any, Any]) -> Context:
    ctx = app.ctx
    assert isinstance(ctx, Context), "the app was made by create_app"
    return ctx
