"""Fan-out: one room, N subscribers, one sender, 200-character messages, a ladder of rates.

    .venv/bin/python benchmarks/fanout.py           # N = 100 and 1,000; revchat, baseline, reference
    .venv/bin/python benchmarks/fanout.py --sizes 1000 --servers revchat,revchat@--write-delay=5

For every N, each server (revchat; the websockets+uvloop baseline; the C reference server, which
shows the generator's ceiling) is started on one core, each with its own C load generator on
another core; N receivers and one sender join room ``bench``. A step is one target rate: the
sender says ``target / N`` messages a second for ``--duration`` seconds, each stamped with the
time it was due, and every receiver times its copy from then. Each step is tried ``--tries``
times (at least 3) per server, the servers taking turns, so a noisy moment on this shared machine
hits them alike; every try is kept and the step's figures are their medians. Per try:
deliveries/s, copies lost (not received within ``--drain`` s of the last send) and doubled (seen
again, or out of order), p50/p99 latency, server and generator CPU. A try passes with nothing
lost or doubled, p99 <= 50 ms and at least 95% of the target delivered; a step passes when more
than half its tries pass and none lost or doubled. *Sustained* is the highest step with every
step up to it passing; *peak* is the highest median delivered rate of any step. A server leaves
the ladder when more than half its tries at a step saturate (under 90% delivered, a loss, a
duplicate, or p99 over 1 s).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from typing import Any

import benchlib as b

LADDERS = {
    100: [10_000, 50_000, 100_000, 200_000, 400_000, 700_000, 1_000_000, 1_400_000, 2_000_000,
          3_000_000],
    1000: [10_000, 50_000, 100_000, 200_000, 400_000, 700_000, 1_000_000, 1_400_000, 2_000_000,
           3_000_000, 4_000_000],
}
P99_LIMIT_MS = 50.0


def parse_rates(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        scale = 1_000_000 if part.endswith("m") else 1000 if part.endswith("k") else 1
        out.append(int(float(part.rstrip("mk")) * scale))
    return out


def passes(step: dict[str, Any]) -> bool:
    """One try meets the rule: no copy lost, none doubled, nobody closed as a slow consumer,
    p99 within the limit and at least 95% of the target delivered."""
    return bool(step["lost"] == 0 and step["dupes"] == 0 and step["closed_1013"] == 0
                and step["p99_ms"] <= P99_LIMIT_MS and step["delivered_per_s"] >= 0.95 * step["target"])


def saturated(step: dict[str, Any]) -> bool:
    """One try shows the server no longer keeps up: it delivers too little, loses or doubles
    copies, closes slow consumers or queues seconds."""
    return bool(step["delivered_per_s"] < 0.9 * step["target"] or step["lost"] > 0
                or step["dupes"] > 0 or step["closed_1013"] > 0 or step["p99_ms"] > 1000)


FIGURES = ("delivered_per_s", "send_rate", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms",
           "server_cpu", "gen_cpu", "frames", "reads")


def aggregate(tries: list[dict[str, Any]]) -> dict[str, Any]:
    """One step from all its tries: each figure is the median of the tries', the losses and
    duplicates the worst try's, every try is kept, and the step passes when more than half of its
    tries pass and none lost or doubled a copy (a loss is a fault, not noise)."""
    step = {k: statistics.median(t[k] for t in tries) for k in FIGURES}
    for key in ("server", "n", "target"):
        step[key] = tries[0][key]
    for key in ("lost", "dupes", "closed_1013"):
        step[key] = max(t[key] for t in tries)
    step["tries_passed"] = sum(passes(t) for t in tries)
    step["tries"] = [{k: t[k] for k in (*FIGURES, "lost", "dupes", "closed_1013")} for t in tries]
    step["ok"] = step["tries_passed"] * 2 > len(tries) and step["lost"] == 0 and step["dupes"] == 0
    step["saturated"] = sum(saturated(t) for t in tries) * 2 > len(tries)
    step["per_core"] = (step["delivered_per_s"] / step["server_cpu"]
                        if step["server_cpu"] >= 0.05 else None)
    return step


class Contender:
    """One server under test with its own generator, connected and warmed up."""

    def __init__(self, label: str, n: int, args: argparse.Namespace, cores: b.Cores) -> None:
        self.label, self.n = label, n
        kind, *variant = label.split("@")
        src = next((v[4:] for v in variant if v.startswith("src=")), None)
        variant = [v for v in variant if not v.startswith("src=")]
        extra = [*args.revchat_arg, *variant] if kind == "revchat" else variant
        self.server = b.start_server(kind, cores.server, extra=extra, nice=args.nice, src=src)
        self.gen: b.LoadGen | None = None
        self.steps: list[dict[str, Any]] = []
        self.metrics: dict[str, float] = {}
        self.active = True
        try:
            conns = [("R", "/rooms/bench/socket", c) for c in b.minted_cookies(n, src=src)]
            conns.append(("S", "/rooms/bench/socket", b.sender_cookie(self.server)))
            self.gen = b.LoadGen(self.server.port, conns, cpu=cores.generator,
                                 server_pid=self.server.pid, concurrency=50,
                                 connect_timeout=120, nice=args.nice)
            self.connected = self.gen.event(180)
            failed = self.connected["failed"]
            if failed > n // 50:
                raise RuntimeError(f"{label}: {failed} of {n + 1} sockets failed to connect")
            if failed:
                print(f"  warning: {label}: {failed} of {n + 1} sockets failed to connect; "
                      "the steps count the receivers that did", flush=True)
            self.gen.step(max(1.0, 10_000 / n), 1.0, args.drain, args.size)  # warm-up
        except BaseException:
            self.close()
            raise

    def step(self, target: int, args: argparse.Namespace, attempt: int) -> dict[str, Any]:
        assert self.gen is not None
        step = self.gen.step(target / self.n, args.duration, args.drain, args.size)
        step.pop("event", None)
        step.update(server=self.label, n=self.n, target=target, attempt=attempt)
        return step

    def close(self) -> None:
        if self.active and self.server.proc.poll() is None:
            try:
                self.metrics = self.server.metrics()
            except Exception:  # the metrics are a bonus
                self.metrics = {}
        self.active = False
        if self.gen is not None:
            self.gen.close()
            self.gen = None
        self.server.stop()

    def summary(self) -> dict[str, Any]:
        """Sustained: the highest step with every step up to it passing (ladder order). Peak: the
        highest median delivered rate of any step. Deliveries per second of server CPU: what one
        whole core would carry at that batching; unlike the rates, it hardly depends on how busy
        the machine is."""
        steps = self.steps
        passing = list(itertools.takewhile(lambda s: s["ok"], steps))
        best = passing[-1] if passing else None
        light = next((s for s in steps if s["target"] == 10_000), None)
        out = {
            "server": self.label, "n": self.n,
            "sustained": best["target"] if best else 0,
            "sustained_delivered": best["delivered_per_s"] if best else 0,
            "sustained_p50_ms": best["p50_ms"] if best else None,
            "sustained_p99_ms": best["p99_ms"] if best else None,
            "first_failed": steps[len(passing)]["target"] if len(passing) < len(steps) else None,
            "peak": max(s["delivered_per_s"] for s in steps),
            "peak_per_core": max((s["per_core"] or 0) for s in steps),
            "server_cpu_max": max(s["server_cpu"] for s in steps),
            "light_p50_ms": light["p50_ms"] if light else None,
            "light_p99_ms": light["p99_ms"] if light else None,
            "gen_cpu_max": max(s["gen_cpu"] for s in steps),
            "connect_s": self.connected["all_welcomed_s"],
        }
        if self.metrics.get("revchat_writes_total"):
            out["deliveries_per_write"] = round(
                self.metrics["revchat_deliveries_total"] / self.metrics["revchat_writes_total"], 2)
        return out


def run_size(n: int, labels: list[str], ladder: list[int], args: argparse.Namespace,
             cores: b.Cores) -> list[Contender]:
    """Every server of one N, step by step: each step is tried ``--tries`` times per server,
    the servers taking turns, so a noisy moment hits them alike; every try is kept, and the step's
    figures are their medians (:func:`aggregate`)."""
    contenders: list[Contender] = []
    try:
        for label in labels:
            contenders.append(Contender(label, n, args, cores))
        for target in ladder:
            running = [c for c in contenders if c.active]
            if not running:
                break
            tries: dict[str, list[dict[str, Any]]] = {c.label: [] for c in running}
            for attempt in range(args.tries):
                for c in running:
                    tries[c.label].append(c.step(target, args, attempt))
            for c in running:
                step = aggregate(tries[c.label])
                c.steps.append(step)
                each = ", ".join(f"{t['p99_ms']:.1f}" for t in step["tries"])
                verdict = "" if step["ok"] else "  (not sustained)"
                print(f"  {c.label:9} N={n:<5} target {b.si(target):>6}  delivered "
                      f"{b.si(step['delivered_per_s']):>6}/s  lost {step['lost']:<6} "
                      f"dupes {step['dupes']:<4} p50 {step['p50_ms']:8.2f}  p99 "
                      f"{step['p99_ms']:8.2f} ms (tries {each})  server cpu "
                      f"{step['server_cpu']:.2f}  passed {step['tries_passed']}/"
                      f"{len(step['tries'])}{verdict}", flush=True)
                if step["saturated"]:
                    c.close()
    finally:
        for c in contenders:
            c.close()
    return contenders


STEP_COLUMNS = [
    ("server", "server", ""), ("N", "n", ""), ("target/s", "target_s", ""),
    ("sent msg/s", "send_rate", ".0f"), ("delivered/s", "delivered_s", ""), ("lost", "lost", ""),
    ("p50 ms", "p50_ms", ".2f"), ("p99 ms", "p99_ms", ".2f"), ("max ms", "max_ms", ".1f"),
    ("server cpu", "server_cpu", ".2f"), ("del/cpu-s", "per_core_s", ""),
    ("gen cpu", "gen_cpu", ".2f"), ("frames/read", "frames_per_read", ".1f"), ("ok", "ok", ""),
]
SUMMARY_COLUMNS = [
    ("server", "server", ""), ("N", "n", ""), ("sustained", "sustained_s", ""),
    ("p99 there", "sustained_p99_ms", ".2f"), ("peak", "peak_s", ""),
    ("x baseline (sust.)", "x_sustained", ".2f"), ("x baseline (peak)", "x_peak", ".2f"),
    ("peak/cpu-s", "peak_per_core_s", ""), ("x baseline (/cpu-s)", "x_per_core", ".2f"),
    ("p50 @10k", "light_p50_ms", ".2f"), ("p99 @10k", "light_p99_ms", ".2f"),
    ("server cpu max", "server_cpu_max", ".2f"), ("gen cpu max", "gen_cpu_max", ".2f"),
    ("at gen. ceiling", "at_ceiling", ""),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--servers", default="revchat,baseline,reference",
                        help="comma-separated: revchat, baseline, reference; a variant adds "
                        "server flags after @, e.g. revchat@--write-delay=5, or runs a scratch "
                        "copy of the package: revchat@src=/tmp/copy")
    parser.add_argument("--sizes", default="100,1000", help="subscriber counts N")
    parser.add_argument("--ladder", default=None,
                        help="target deliveries/s, e.g. 10k,100k,1m (default: per N)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per try")
    parser.add_argument("--drain", type=float, default=1.5,
                        help="seconds after the last send before a missing copy is lost")
    parser.add_argument("--size", type=int, default=200, help="message text length")
    parser.add_argument("--tries", type=int, default=3,
                        help="tries per step and server (servers take turns); at least 3 for a "
                        "result benchmarks/report.py will use; figures are their medians")
    parser.add_argument("--server-cpu", type=int, default=None)
    parser.add_argument("--gen-cpu", type=int, default=None)
    parser.add_argument("--nice", type=int, default=0,
                        help="renice server and generator (e.g. -10; root; no effect against other "
                        "sessions while the kernel's autogroup scheduling is on)")
    parser.add_argument("--revchat-arg", action="append", default=[],
                        help="extra flag for revchat serve, e.g. --revchat-arg=--write-delay=2")
    parser.add_argument("--out", default=None, help="JSON path [benchmarks/results/fanout.json]")
    args = parser.parse_args()
    b.check_clean(args.out)
    machine = b.machine()

    cores = b.Cores.pick(args.server_cpu, args.gen_cpu)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    sizes = [int(s) for s in args.sizes.split(",")]
    noise = b.noise(cores)
    print(f"fan-out: server on cpu {cores.server}, generator on cpu {cores.generator}; {noise}",
          flush=True)
    started = time.monotonic()
    contenders: list[Contender] = []
    for n in sizes:
        ladder = parse_rates(args.ladder) if args.ladder else LADDERS.get(n, LADDERS[1000])
        contenders += run_size(n, servers, ladder, args, cores)
    runs: list[dict[str, Any]] = [
        {"summary": c.summary(), "connected": c.connected, "steps": c.steps, "metrics": c.metrics}
        for c in contenders
    ]

    steps: list[dict[str, Any]] = [dict(s, target_s=b.si(s["target"]), delivered_s=b.si(s["delivered_per_s"]),
                  per_core_s=b.si(s["per_core"]),
                  frames_per_read=s["frames"] / s["reads"] if s["reads"] else None,
                  ok="yes" if s["ok"] else "no")
             for r in runs for s in r["steps"]]
    summaries: list[dict[str, Any]] = [r["summary"] for r in runs]
    base = {s["n"]: s for s in summaries if s["server"] == "baseline"}
    reference = {s["n"]: s for s in summaries if s["server"] == "reference"}
    for s in summaries:
        ref = base.get(s["n"])
        s["x_sustained"] = b.ratio(s["sustained"], ref["sustained"]) if ref else None
        s["x_peak"] = b.ratio(s["peak"], ref["peak"]) if ref else None
        s["x_per_core"] = b.ratio(s["peak_per_core"], ref["peak_per_core"]) if ref else None
        # The generator's ceiling: what it read from the C reference server in this run. A
        # server that sustains as much is limited by the instrument, not by itself: "at least".
        ceiling = reference.get(s["n"])
        s["ceiling_sustained"] = ceiling["sustained"] if ceiling else None
        s["ceiling_peak"] = ceiling["peak"] if ceiling else None
        s["at_ceiling"] = bool(ceiling and s["server"] != "reference"
                               and s["sustained"] >= ceiling["sustained"])
        s["sustained_s"] = b.si(s["sustained"])
        s["peak_s"] = b.si(s["peak"])
        s["peak_per_core_s"] = b.si(s["peak_per_core"])
    print()
    print(b.table(steps, STEP_COLUMNS))
    print()
    print(b.table(summaries, SUMMARY_COLUMNS))
    ref_steps = [s for s in steps if s["server"] == "reference"]
    if ref_steps:
        top = max(ref_steps, key=lambda s: s["delivered_per_s"])
        print(f"\ngenerator headroom: it read {b.si(top['delivered_per_s'])} deliveries/s from the "
              f"C reference server using {top['gen_cpu']:.0%} of its core (N={top['n']})")
    elapsed = time.monotonic() - started
    print(f"\n{elapsed:.0f} s; load average now {os.getloadavg()[0]:.2f}. Other work on this "
          "machine adds noise (cpu_share in the JSON: the share of a core a busy process got); "
          "the ratios to the baseline, measured in the same run, share it.")
    for s in summaries:
        for key in ("sustained_s", "peak_s", "peak_per_core_s"):
            s.pop(key, None)
    path = b.write_result("fanout", {
        "scenario": "fanout", "argv": sys.argv[1:], "machine": machine,
        "cores": {"server": cores.server, "generator": cores.generator},
        "rule": (f"a try passes with no copy lost or doubled, p99 <= {P99_LIMIT_MS} ms and >= 95% "
                 "of the target delivered; a step passes when more than half its tries pass and "
                 "none lost or doubled; sustained: the highest step with every step up to it "
                 "passing; figures are medians of the tries"),
        "tries": args.tries,
        "elapsed_s": round(elapsed, 1), "noise_at_start": noise, "noise_at_end": b.noise(cores),
        "summary": summaries,
        "runs": runs,
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
