"""Idle connections: server memory (RSS) per open socket at 1,000, 10,000 and 50,000 sockets.

    .venv/bin/python benchmarks/idle.py                        # revchat and baseline
    .venv/bin/python benchmarks/idle.py --counts 1000,10000 --per-room 100

Each server starts fresh on one core and its RSS is read; the C generator then opens the sockets
(distinct guests, ``--per-room`` to a room, source addresses spread over 127.0.0.2, 127.0.0.3, ...
so the ephemeral-port range is no limit), waits for every welcome, lets the server settle, and the
RSS is read again: (after - before) / sockets. Counts the open-file limit cannot hold (server
and generator each need one descriptor per socket) are skipped, and the reason is printed.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from typing import Any

import benchlib as b

COLUMNS = [
    ("server", "server", ""), ("sockets", "count", ""), ("open", "open", ""),
    ("RSS before MB", "rss_before_mb", ".1f"), ("RSS after MB", "rss_after_mb", ".1f"),
    ("KB / socket", "kb_per_socket", ".1f"), ("x baseline", "x_baseline", ".2f"),
    ("connect s", "all_welcomed_s", ".1f"), ("server cpu ms/connect", "cpu_ms_per_connect", ".2f"),
]


FIGURES = ("open", "failed", "rss_before_mb", "rss_after_mb", "kb_per_socket", "all_welcomed_s",
           "cpu_ms_per_connect")


def nofile_room() -> int:
    """Sockets one process can hold: raise the soft open-file limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200


def run_one(kind: str, count: int, args: argparse.Namespace, cores: b.Cores) -> dict[str, Any]:
    extra = list(args.revchat_arg) if kind == "revchat" else []
    with b.running(kind, cores.server, extra=extra, nice=args.nice) as server:
        time.sleep(1.0)
        before = server.rss_kb()
        cookies = b.minted_cookies(count)
        conns = [("R", f"/rooms/idle-{i // args.per_room}/socket", c)
                 for i, c in enumerate(cookies)]
        gen = b.LoadGen(server.port, conns, cpu=cores.generator, server_pid=server.pid,
                        concurrency=args.concurrency, sources=args.sources,
                        connect_timeout=300, nice=args.nice)
        try:
            connected = gen.event(330)
            time.sleep(args.settle)
            stats = gen.command("stats", 30)
            after = server.rss_kb()
        finally:
            gen.close()
    row = {
        "server": kind, "count": count, "open": stats["open"], "failed": connected["failed"],
        "rss_before_mb": before / 1024, "rss_after_mb": after / 1024,
        "kb_per_socket": (after - before) / max(1, stats["open"]),
        "all_welcomed_s": connected["all_welcomed_s"],
        "cpu_ms_per_connect": 1000 * connected["server_cpu_s"] / max(1, connected["ok"]),
        "connect": {k: v for k, v in connected.items() if k != "event"},
    }
    print(f"  {kind:9} {count:>6} sockets: {row['kb_per_socket']:.1f} KB each "
          f"({stats['open']} open)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--servers", default="revchat,baseline")
    parser.add_argument("--counts", default="1000,10000,50000")
    parser.add_argument("--per-room", type=int, default=100, help="sockets per room")
    parser.add_argument("--sources", type=int, default=4,
                        help="loopback source addresses (127.0.0.2, ...)")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="handshakes in flight (at most the servers' listen backlog, 100)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--tries", type=int, default=3,
                        help="tries per server and count (servers take turns); medians shown")
    parser.add_argument("--server-cpu", type=int, default=None)
    parser.add_argument("--gen-cpu", type=int, default=None)
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--revchat-arg", action="append", default=[])
    parser.add_argument("--out", default=None, help="JSON path [benchmarks/results/idle.json]")
    args = parser.parse_args()
    b.check_clean(args.out)
    machine = b.machine()

    room = nofile_room()
    cores = b.Cores.pick(args.server_cpu, args.gen_cpu)
    noise = b.noise(cores)
    print(f"idle: server on cpu {cores.server}, generator on cpu {cores.generator}; {noise}",
          flush=True)
    started = time.monotonic()
    rows, skipped = [], []
    for count in (int(c) for c in args.counts.split(",")):
        if count > room:
            reason = (f"{count} sockets skipped: the open-file limit here is "
                      f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]} per process and cannot "
                      "be raised (ulimit -Hn; raise it as root to measure this)")
            print("  " + reason, flush=True)
            skipped.append({"count": count, "reason": reason})
            continue
        kinds = [s.strip() for s in args.servers.split(",") if s.strip()]
        tries = b.alternate(kinds, args.tries,
                            lambda kind, _, count=count: run_one(kind, count, args, cores))
        rows += [b.medians(tries[kind], FIGURES) for kind in kinds]
    base = {r["count"]: r for r in rows if r["server"] == "baseline"}
    for r in rows:
        ref = base.get(r["count"])
        r["x_baseline"] = b.ratio(r["kb_per_socket"], ref["kb_per_socket"]) if ref else None
    print()
    print(b.table(rows, COLUMNS))
    print("\nx baseline < 1: less memory than the baseline. Medians of the tries (all in the JSON).")
    elapsed = time.monotonic() - started
    print(f"{elapsed:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    path = b.write_result("idle", {
        "scenario": "idle", "argv": sys.argv[1:], "machine": machine, "tries": args.tries,
        "cores": {"server": cores.server, "generator": cores.generator}, "noise_at_start": noise,
        "results": rows, "skipped": skipped,
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
