"""Operations endpoints: ``/healthz`` and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sanic import Blueprint, HTTPResponse, Request, json

from revchat.core.engine import Engine
from revchat.core.history import HistoryUnavailable
from revchat.web.context import context

bp = Blueprint("ops")
log = logging.getLogger("revchat.ops")


@bp.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    """200 when events can be stored and delivered; 503 naming the part that cannot (the
    publisher, the history, the broker), never a path or an address."""
    engine = context(request).engine
    problem = engine.broker.problem()
    if problem is None:
        try:
            await engine.broker.history.check()
        except HistoryUnavailable as exc:
            log.warning("health check: %s", exc)  # the detail names a path or an address
            problem = "history: it cannot be read"
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
        commits = engine.broker.commit_stats
        yield CounterMetricFamily("revchat_history_writes",
                                  "Batches of events committed to the history (group commit).",
                                  commits.batches)
        yield CounterMetricFamily("revchat_history_events", "Events stored in the history.",
                                  commits.events)
        yield CounterMetricFamily("revchat_history_failures",
                                  "Batches the history could not take (it was unavailable).",
                                  commits.failed)
        yield CounterMetricFamily("revchat_unexpected_errors",
                                  "Errors nothing foresaw, each logged; the server went on.",
                                  engine.faults.count)
        problem = engine.broker.problem()
        yield GaugeMetricFamily("revchat_broker_up", "1 when events can be published.",
                                0 if problem else 1)


def registry_for(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return registry


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    registry = context(request).metrics
    assert registry is not None, "set when the server starts, before any request"
    return HTTPResponse(generate_latest(registry), content_type="text/plain; version=0.0.4")
