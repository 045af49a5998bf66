"""Operations endpoints: ``/healthz`` and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sanic import Blueprint, HTTPResponse, Request, json

from revchat.engine import Engine
from revchat.history import HistoryUnavailable

bp = Blueprint("ops")


@bp.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    """200 when history and broker work; 503 naming the part that does not."""
    engine: Engine = request.app.ctx.engine
    problem = engine.broker.problem()
    if problem is None:
        try:
            await engine.broker.history.check()
        except HistoryUnavailable as exc:
            problem = f"history: {exc}"
    body = {
        "broker": engine.broker.name,
        "history": engine.broker.history.name,
        "connections": engine.connections,
        "rooms": len(engine.rooms),
        "worker": os.getpid(),
    }
    if problem is not None:
        return json({"status": "unavailable", "problem": problem, **body}, status=503)
    return json({"status": "ok", **body})


class EngineCollector(Collector):
    """Reads the engine's plain counters at scrape time, so the hot path only adds integers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        engine, stats = self.engine, self.engine.stats
        yield GaugeMetricFamily("revchat_connections", "Open chat sockets.", engine.connections)
        yield GaugeMetricFamily("revchat_rooms", "Rooms with subscribers on this worker.",
                                len(engine.rooms))
        yield GaugeMetricFamily("revchat_members", "Members of the rooms held by this worker.",
                                sum(len(r.members) for r in engine.rooms.values()))
        yield GaugeMetricFamily("revchat_queued_bytes", "Bytes waiting to be sent to clients.",
                                engine.queued_bytes())
        yield CounterMetricFamily("revchat_events", "Events delivered to this worker's rooms.",
                                  stats.events)
        yield CounterMetricFamily("revchat_deliveries", "Event frames sent to subscribers.",
                                  stats.deliveries)
        yield CounterMetricFamily("revchat_writes", "Coalesced socket writes.", stats.writes)
        yield CounterMetricFamily("revchat_subscriptions", "Sockets that joined a room.",
                                  stats.subscriptions)
        yield CounterMetricFamily("revchat_slow_consumers",
                                  "Sockets closed with 1013 for not reading.",
                                  stats.slow_consumers)
        yield CounterMetricFamily("revchat_rate_limited", "Messages refused by the rate limit.",
                                  stats.rate_limited)
        problem = engine.broker.problem()
        yield GaugeMetricFamily("revchat_broker_up", "1 when the broker is usable.",
                                0 if problem else 1)


def registry_for(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return registry


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    registry: CollectorRegistry = request.app.ctx.metrics
    return HTTPResponse(generate_latest(registry), content_type="text/plain; version=0.0.4")
