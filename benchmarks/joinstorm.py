"""Join storm: 5,000 clients connect at once; the time until every one has its welcome.

    .venv/bin/python benchmarks/joinstorm.py                     # revchat and baseline, 1 and 50 rooms
    .venv/bin/python benchmarks/joinstorm.py --clients 2000 --rooms 1 --servers revchat

Each server starts fresh on one core; the C generator, on another, opens every TCP connection
at once (non-blocking connects, no pacing), sends each WebSocket handshake as soon as its
connection is up, and records when each welcome frame arrives. The clients are distinct guests,
spread evenly over ``--rooms`` rooms: with one room, every joiner's welcome lists the members
before it and every join is fanned out to everyone already there, so the work grows with the
square of the room's size; with 50 rooms it is the cost of the connections themselves.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import benchlib as b

sys.path.insert(0, str(b.ROOT))
from revchat.web.server import LISTEN_BACKLOG

COLUMNS = [
    ("server", "server", ""), ("clients", "clients", ""), ("rooms", "rooms", ""),
    ("ok", "ok", ""), ("failed", "failed", ""), ("all welcomed s", "all_welcomed_s", ".2f"),
    ("p50 ms", "welcome_p50_ms", ".0f"), ("p99 ms", "welcome_p99_ms", ".0f"),
    ("x baseline", "x_baseline", ".2f"), ("server cpu s", "server_cpu_s", ".2f"),
    ("server cpu ms/join", "cpu_ms_per_join", ".2f"), ("gen cpu s", "gen_cpu_s", ".2f"),
    ("server RSS MB", "rss_mb", ".0f"),
]


def run_one(kind: str, clients: int, rooms: int, args: argparse.Namespace,
            cores: b.Cores) -> dict[str, Any]:
    extra = (list(args.revchat_arg) if kind == "revchat"
             else ["--backlog", str(args.baseline_backlog)] if kind == "baseline" else [])
    with b.running(kind, cores.server, extra=extra, nice=args.nice) as server:
        cookies = b.minted_cookies(clients)
        conns = [("R", f"/rooms/storm-{i % rooms}/socket", c) for i, c in enumerate(cookies)]
        gen = b.LoadGen(server.port, conns, cpu=cores.generator, server_pid=server.pid,
                        concurrency=0, sources=args.sources, connect_timeout=args.timeout,
                        nice=args.nice)
        try:
            result = gen.event(args.timeout + 30)
            rss = server.rss_kb()
        finally:
            gen.close()
    result.pop("event", None)
    result.update(server=kind, rooms=rooms, rss_mb=rss / 1024,
                  cpu_ms_per_join=1000 * result["server_cpu_s"] / max(1, result["ok"]))
    print(f"  {kind:9} {clients} clients in {rooms} room(s): all welcomed in "
          f"{result['all_welcomed_s']:.2f} s, {result['failed']} failed", flush=True)
    return result


FIGURES = ("ok", "failed", "all_welcomed_s", "welcome_p50_ms", "welcome_p99_ms", "server_cpu_s",
           "cpu_ms_per_join", "gen_cpu_s", "rss_mb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--servers", default="revchat,baseline")
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rooms", default="1,50", help="comma-separated room counts")
    parser.add_argument("--sources", type=int, default=2,
                        help="loopback source addresses (127.0.0.2, ...)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds before a client without its welcome counts as failed")
    parser.add_argument("--server-cpu", type=int, default=None)
    parser.add_argument("--gen-cpu", type=int, default=None)
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--revchat-arg", action="append", default=[])
    parser.add_argument("--baseline-backlog", type=int, default=LISTEN_BACKLOG,
                        help="the baseline's listen backlog (default: revchat's, "
                        f"{LISTEN_BACKLOG}: both servers face the kernel alike)")
    parser.add_argument("--tries", type=int, default=3,
                        help="tries per server and room count (servers take turns); medians shown")
    parser.add_argument("--out", default=None, help="JSON path [benchmarks/results/joinstorm.json]")
    args = parser.parse_args()
    b.check_clean(args.out)
    machine = b.machine()

    cores = b.Cores.pick(args.server_cpu, args.gen_cpu)
    noise = b.noise(cores)
    print(f"join storm: server on cpu {cores.server}, generator on cpu {cores.generator}; {noise}",
          flush=True)
    started = time.monotonic()
    results = []
    kinds = [s.strip() for s in args.servers.split(",") if s.strip()]
    for rooms in (int(r) for r in args.rooms.split(",")):
        tries = b.alternate(kinds, args.tries,
                            lambda kind, _, rooms=rooms: run_one(kind, args.clients, rooms, args, cores))
        results += [b.medians(tries[kind], FIGURES) for kind in kinds]
    base = {r["rooms"]: r for r in results if r["server"] == "baseline"}
    for r in results:
        ref = base.get(r["rooms"])
        # a ratio above 1 means faster than the baseline (time is inverted)
        r["x_baseline"] = b.ratio(ref["all_welcomed_s"], r["all_welcomed_s"]) if ref else None
    print()
    print(b.table(results, COLUMNS))
    print("\nx baseline > 1: faster than the baseline. Medians of the tries (all in the JSON).")
    elapsed = time.monotonic() - started
    print(f"{elapsed:.0f} s; load average now {os.getloadavg()[0]:.2f} (other work on this machine "
          "adds noise: compare ratios, which share it)")
    path = b.write_result("joinstorm", {
        "scenario": "joinstorm", "argv": sys.argv[1:], "machine": machine, "tries": args.tries,
        "cores": {"server": cores.server, "generator": cores.generator},
        "noise_at_start": noise, "noise_at_end": b.noise(cores), "results": results,
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
