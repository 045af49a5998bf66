"""How many events per second the SQLite history persists behind the in-process broker.

Many publishers call ``MemoryBroker.publish`` at once, so the broker's group commit forms batches;
a listener counts what is delivered (each event is delivered only after its batch committed). The
``memory`` row runs the same load without a disk, to show what the broker itself costs.

    .venv/bin/python benchmarks/history.py                  # benchmarks/results/history.json
    .venv/bin/python benchmarks/history.py --events 50000 --out /tmp/h.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import benchlib as b

from revchat.backends.memory import MemoryBroker, MemoryHistory
from revchat.backends.sqlite import SQLiteHistory
from revchat.core.events import Draft, Event, User
from revchat.core.history import History


class Counter:
    """The broker's listener: counts deliveries and the batches they came in."""

    def __init__(self) -> None:
        self.delivered = 0
        self.batches: list[int] = []

    def deliver(self, events: Sequence[Event]) -> None:
        self.delivered += len(events)
        self.batches.append(len(events))

    def relay(self, room: str, user: User) -> None:
        pass


async def publisher(broker: MemoryBroker, index: int, count: int, rooms: int, text: str) -> None:
    user = User(f"guest:p{index}", f"Publisher {index}")
    for n in range(count):
        room = f"room{(index + n) % rooms}"
        await broker.publish(Draft("message", room, user, int(time.time() * 1000), text))


async def run(backend: str, args: argparse.Namespace, directory: str) -> dict[str, Any]:
    path = os.path.join(directory, f"bench-{backend}.db")
    history: History = SQLiteHistory(path) if backend == "sqlite" else MemoryHistory()
    await history.open()
    broker = MemoryBroker(history)
    counter = Counter()
    broker.listener = counter
    await broker.open()
    per = args.events // args.publishers
    total = per * args.publishers
    text = "x" * args.text_size
    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(publisher(broker, i, per, args.rooms, text)
                           for i in range(args.publishers)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await broker.close()
    await history.close()
    stored = total
    if backend == "sqlite":
        with sqlite3.connect(path) as conn:  # read back what is really on disk
            stored = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        conn.close()
    assert counter.delivered == total == stored, (counter.delivered, total, stored)
    batches = counter.batches
    return {
        "backend": backend, "events": total, "rooms": args.rooms,
        "publishers": args.publishers, "seconds": round(elapsed, 3),
        "events_per_second": round(total / elapsed),
        # CPU seconds of this process (both threads): steadier than wall time on a busy machine.
        "cpu_seconds": round(cpu, 3), "events_per_cpu_second": round(total / cpu),
        "batches": len(batches),
        "mean_batch": round(total / len(batches), 1), "max_batch": max(batches),
    }


FIGURES = ("seconds", "events_per_second", "cpu_seconds", "events_per_cpu_second", "batches",
           "mean_batch", "max_batch")


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per backend: the medians of ``--repeat`` runs, the backends taking turns (a shared
    machine is noisy); every run is kept."""
    runs: dict[str, list[dict[str, Any]]] = {backend: [] for backend in args.backends}
    for _ in range(args.repeat):
        for backend in args.backends:
            with tempfile.TemporaryDirectory(dir=args.dir) as directory:
                runs[backend].append(await run(backend, args, directory))
    results = []
    for backend in args.backends:
        row = b.medians(runs[backend], FIGURES)
        rates = [r["events_per_second"] for r in runs[backend]]
        results.append({**row, "runs": len(rates), "min_eps": min(rates), "max_eps": max(rates)})
    return results


def table(results: list[dict[str, Any]]) -> str:
    columns = ["backend", "events", "rooms", "publishers", "seconds", "events_per_second",
               "min_eps", "max_eps", "events_per_cpu_second", "runs", "mean_batch"]
    widths = [max(len(c), *(len(str(r[c])) for r in results)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(str(r[c]).rjust(w) for c, w in zip(columns, widths, strict=True))
              for r in results]
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--publishers", type=int, default=1000,
                        help="concurrent publishing tasks (each awaits its event before the next)")
    parser.add_argument("--text-size", type=int, default=100, help="characters per message")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "memory"],
                        choices=["sqlite", "memory"])
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per backend (backends take turns); medians shown")
    parser.add_argument("--dir", default=None, help="where the database goes (default: tmp)")
    parser.add_argument("--out", default=None, help="JSON path [benchmarks/results/history.json]")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    b.check_clean(arguments.out)
    machine = b.machine()
    results = asyncio.run(main(arguments))
    print(table(results))
    path = b.write_result("history", {
        "scenario": "history", "argv": sys.argv[1:], "machine": machine,
        "sqlite": sqlite3.sqlite_version, "tries": arguments.repeat, "results": results,
    }, arguments.out)
    print(f"wrote {path}")
