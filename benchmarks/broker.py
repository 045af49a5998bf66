"""What the Redis broker adds over ``memory://``: latency (p50/p99) and throughput.

Both brokers run under the real room engine, with in-memory sinks standing for sockets, so the
figures are the broker's cost, not the network's. Latency: one publisher at a steady rate, time
from ``say`` to the frame reaching a subscriber's sink. Throughput: many publishers at once, events
delivered per second. Redis is a throwaway ``redis-server`` on a free loopback port.

    .venv/bin/python benchmarks/broker.py        # benchmarks/results/broker.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib as b

from revchat.backends.memory import MemoryBroker, MemoryHistory
from revchat.backends.redis_broker import RedisBroker
from revchat.core.broker import Broker
from revchat.core.engine import Engine, Limits
from revchat.core.events import User
from tests.support.redis_server import redis_server
from tests.support.sink import line_frame


class Sink:
    """Counts frames; records when each timestamped one arrived."""

    def __init__(self) -> None:
        self.frames = 0
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.expect = 0
        self.expect_latencies = 0
        self.timed = asyncio.Event()

    def write(self, data: bytes) -> None:
        now = time.perf_counter()
        for line in data.splitlines():
            self.frames += 1
            marker = line.find(b'"text":"t')
            if marker > 0:
                sent = float(line[marker + 9 : line.index(b'"', marker + 9)])
                self.latencies.append((now - sent) * 1000)
        if self.expect_latencies and len(self.latencies) >= self.expect_latencies:
            self.timed.set()
        if self.expect and self.frames >= self.expect:
            self.done.set()

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self, code: int, reason: str) -> None:
        pass


class NullSink:
    """A subscriber that takes frames and does nothing with them."""

    def write(self, data: bytes) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self, code: int, reason: str) -> None:
        pass


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(broker: Broker, rate: int, seconds: float, publishers: int,
                  burst: int) -> dict[str, Any]:
    await broker.open()
    engine = Engine(broker, Limits(rate=0, write_delay=0.0, archive_size=0), frame=line_frame)
    sink = Sink()
    speaker = await engine.subscribe("bench", User("guest:a", "A"), NullSink())
    await engine.subscribe("bench", User("guest:b", "B"), sink)
    # latency: a steady rate of single messages
    sink.latencies.clear()
    count = int(rate * seconds)
    start = time.perf_counter()
    for n in range(count):
        await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
        await engine.say(speaker, f"t{time.perf_counter():.6f}")
    sink.expect_latencies = count
    if len(sink.latencies) >= count:
        sink.timed.set()
    async with asyncio.timeout(30):
        await sink.timed.wait()
    latencies = list(sink.latencies)
    # throughput: many publishers at once
    subs = [await engine.subscribe("bench", User(f"guest:p{i}", f"P{i}"), NullSink())
            for i in range(publishers)]
    sink.frames, sink.expect = 0, publishers * burst
    sink.done.clear()
    start = time.perf_counter()

    async def publish(sub: Any) -> None:
        for _ in range(burst):
            await engine.say(sub, "x" * 200)

    await asyncio.gather(*(publish(s) for s in subs))
    async with asyncio.timeout(60):
        await sink.done.wait()
    elapsed = time.perf_counter() - start
    await broker.close()
    return {"broker": broker.name, "p50_ms": statistics.median(latencies),
            "p99_ms": quantile(latencies, 0.99), "samples": len(latencies), "rate": rate,
            "events_per_s": publishers * burst / elapsed}


FIGURES = ("p50_ms", "p99_ms", "events_per_s")


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Memory and Redis taking turns, ``--tries`` times each; one row each of the medians."""
    runs: dict[str, list[dict[str, Any]]] = {"memory": [], "redis": []}
    with redis_server() as redis:
        for attempt in range(args.tries):
            runs["memory"].append(await measure(MemoryBroker(MemoryHistory()), args.rate,
                                                args.seconds, args.publishers, args.burst))
            runs["redis"].append(await measure(RedisBroker(redis.url, prefix=f"bench{attempt}"),
                                               args.rate, args.seconds, args.publishers,
                                               args.burst))
    return [b.medians(runs[name], FIGURES) for name in ("memory", "redis")]


def report(rows: list[dict[str, Any]]) -> None:
    print(f"{'broker':<8} {'p50 ms':>8} {'p99 ms':>8} {'events/s':>10}")
    for r in rows:
        print(f"{r['broker']:<8} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['events_per_s']:>10.0f}")
    mem, red = rows
    print(f"redis adds {red['p50_ms'] - mem['p50_ms']:.3f} ms at p50 and "
          f"{red['p99_ms'] - mem['p99_ms']:.3f} ms at p99, and keeps "
          f"{red['events_per_s'] / mem['events_per_s']:.0%} of the throughput (medians of "
          f"{len(mem['tries'])} tries each)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500, help="messages/s for the latency run")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--publishers", type=int, default=200)
    parser.add_argument("--burst", type=int, default=100, help="messages per publisher")
    parser.add_argument("--tries", type=int, default=3, help="runs per broker (taking turns)")
    parser.add_argument("--out", default=None, help="JSON path [benchmarks/results/broker.json]")
    args = parser.parse_args()
    b.check_clean(args.out)
    machine = b.machine()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    outcome = asyncio.run(main(args))
    report(outcome)
    path = b.write_result("broker", {"scenario": "broker", "argv": sys.argv[1:],
                                     "machine": machine, "tries": args.tries,
                                     "results": outcome}, args.out)
    print(f"wrote {path}")
