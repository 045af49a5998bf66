"""The benchmark tables of README.md and benchmarks/README.md, generated from benchmarks/results/.

    .venv/bin/python benchmarks/report.py           # rewrite the tables between their markers
    .venv/bin/python benchmarks/report.py --check   # exit 1 if a table is not what the JSON says

Every figure comes from one results file, one run, measured on a clean tree (the file records
the commit), with at least three tries, of which the figure is the median; a file that breaks
these rules is refused. A test (tests/test_docs.py) runs the check, as it does for the settings
table, so no figure in the docs can drift from its JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
# Written as escapes: the tables use an en dash and a multiplication sign, which ruff would flag as
# look-alikes of "-" and "x" in the source.
DASH = "\u2013"
TIMES = "\u00d7"
MIN_TRIES = 3


class ReportError(Exception):
    """A results file that may not be quoted (dirty tree, too few tries, missing figures)."""


def load(name: str, results: Path = RESULTS) -> dict[str, Any]:
    path = results / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path.name} is missing: run benchmarks/run-all") from None
    git = data.get("machine", {}).get("git", {})
    if git.get("dirty", True) or not git.get("commit"):
        raise ReportError(f"{path.name} was measured on a tree with uncommitted changes")
    if int(data.get("tries", 0)) < MIN_TRIES:
        raise ReportError(f"{path.name} has {data.get('tries', 0)} tries per figure; "
                          f"at least {MIN_TRIES} are needed")
    return data


def si(value: float | None) -> str:
    if value is None:
        return DASH
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.0f}k" if value >= 1e5 else f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def ms(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def ratio(a: float | None, b: float | None) -> str:
    return DASH if not a or not b else f"{a / b:.1f}{TIMES}" if a / b < 10 else f"{a / b:.0f}{TIMES}"


def fanout_row(data: dict[str, Any], server: str, n: int) -> dict[str, Any]:
    for row in data["summary"]:
        if row["server"] == server and row["n"] == n:
            return dict(row)
    raise ReportError(f"fanout.json has no {server} at N = {n}")


def sustained(row: dict[str, Any]) -> str:
    """The sustained rate, "≥" when it is the generator's own ceiling in that run."""
    text = si(row["sustained"])
    return f"≥ {text}" if row.get("at_ceiling") else text


def commits(*data: dict[str, Any]) -> str:
    return ", ".join(sorted({d["machine"]["git"]["commit"][:7] for d in data}))


def readme_table(results: Path = RESULTS) -> str:
    """The README's Performance table."""
    fan, idle, storm = load("fanout", results), load("idle", results), load("joinstorm", results)
    hist, broker = load("history", results), load("broker", results)
    r1, b1, c1 = (fanout_row(fan, s, 1000) for s in ("revchat", "baseline", "reference"))
    r100, b100 = fanout_row(fan, "revchat", 100), fanout_row(fan, "baseline", 100)
    idle_r = next(r for r in idle["results"] if r["server"] == "revchat" and r["count"] == 10000)
    idle_b = next(r for r in idle["results"] if r["server"] == "baseline" and r["count"] == 10000)
    storm_r = next(r for r in storm["results"] if r["server"] == "revchat" and r["rooms"] == 50)
    storm_b = next(r for r in storm["results"] if r["server"] == "baseline" and r["rooms"] == 50)
    sqlite = next(r for r in hist["results"] if r["backend"] == "sqlite")
    mem, red = broker["results"]

    def welcomed(row: dict[str, Any]) -> str:
        if row["failed"]:
            return f"{row['ok']:.0f} of {row['ok'] + row['failed']:.0f} in {row['all_welcomed_s']:.1f} s"
        return f"{row['all_welcomed_s']:.2f} s"

    rows = [
        ("fan-out, N = 1,000: sustained deliveries/s (p99 ≤ 50 ms)",
         f"**{sustained(r1)}** (p99 {ms(r1['sustained_p99_ms'])})",
         f"{sustained(b1)} (p99 {ms(b1['sustained_p99_ms'])})", ratio(r1["sustained"], b1["sustained"])),
        ("fan-out, N = 1,000: the generator's ceiling (C reference server)", si(c1["sustained"]),
         "", ""),
        ("fan-out, N = 100: sustained deliveries/s (p99 ≤ 50 ms)",
         f"**{sustained(r100)}** (p99 {ms(r100['sustained_p99_ms'])})",
         f"{sustained(b100)} (p99 {ms(b100['sustained_p99_ms'])})",
         ratio(r100["sustained"], b100["sustained"])),
        ("fan-out, N = 100: p50 / p99 at 10k deliveries/s",
         f"{ms(r100['light_p50_ms'])} / {ms(r100['light_p99_ms'])}",
         f"{ms(b100['light_p50_ms'])} / {ms(b100['light_p99_ms'])}", ""),
        ("memory per idle socket (10,000 sockets)", f"{idle_r['kb_per_socket']:.1f} KB",
         f"{idle_b['kb_per_socket']:.1f} KB", f"{idle_r['kb_per_socket'] / idle_b['kb_per_socket']:.2f}"),
        (f"{storm_r['ok'] + storm_r['failed']:,.0f} clients joining at once over 50 rooms",
         welcomed(storm_r), welcomed(storm_b), ""),
        ("events persisted per second (SQLite, group commit, no sockets)",
         f"{sqlite['events_per_second']:,.0f}", "", ""),
        ("Redis broker vs `memory://`: p50 / p99 added, throughput kept",
         f"+{red['p50_ms'] - mem['p50_ms']:.2f} ms / +{red['p99_ms'] - mem['p99_ms']:.1f} ms / "
         f"{red['events_per_s'] / mem['events_per_s']:.0%}", "", ""),
    ]
    lines = ["| | revchat | baseline | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    tries = min(d["tries"] for d in (fan, idle, storm, hist, broker))
    lines.append("")
    lines.append(f"Medians of at least {tries} tries each; measured at commit "
                 f"{commits(fan, idle, storm, hist, broker)} (`benchmarks/results/*.json`; "
                 "regenerate with `benchmarks/run-all`). \"≥\": the load generator, not revchat, "
                 "was the limit.")
    return "\n".join(lines)


def fanout_table(results: Path = RESULTS) -> str:
    """benchmarks/README.md: every server and N of the fan-out run."""
    fan = load("fanout", results)
    lines = ["| server | N | sustained (p99 there) | first step that failed | peak "
             "| p50 / p99 at 10k del/s | deliveries per server CPU-second at peak |",
             "|---|---|---|---|---|---|---|"]
    for row in fan["summary"]:
        lines.append(
            f"| {row['server']} | {row['n']:,} | {sustained(row)} ({ms(row['sustained_p99_ms'])}) | "
            f"{si(row.get('first_failed'))} | {si(row['peak'])} | {ms(row['light_p50_ms'])} / "
            f"{ms(row['light_p99_ms'])} | {si(row['peak_per_core'])} |")
    lines.append("")
    lines.append(f"`results/fanout.json`, commit {commits(fan)}, {fan['tries']} tries per step; "
                 f"{fan['rule']}.")
    return "\n".join(lines)


def idle_table(results: Path = RESULTS) -> str:
    idle = load("idle", results)
    lines = ["| server | sockets | KB per socket (tries) | connect s |", "|---|---|---|---|"]
    for row in idle["results"]:
        each = ", ".join(f"{t['kb_per_socket']:.1f}" for t in row["tries"])
        lines.append(f"| {row['server']} | {row['count']:,} | {row['kb_per_socket']:.1f} ({each}) | "
                     f"{row['all_welcomed_s']:.1f} |")
    for skip in idle.get("skipped", []):
        lines.append(f"| | {skip['count']:,} | skipped: {skip['reason']} | |")
    lines.append("")
    lines.append(f"`results/idle.json`, commit {commits(idle)}, medians of {idle['tries']} tries.")
    return "\n".join(lines)


def joinstorm_table(results: Path = RESULTS) -> str:
    storm = load("joinstorm", results)
    lines = ["| server | clients | rooms | welcomed | all welcomed in (tries) | server CPU ms per join |",
             "|---|---|---|---|---|---|"]
    for row in storm["results"]:
        each = ", ".join(f"{t['all_welcomed_s']:.2f}" for t in row["tries"])
        lines.append(f"| {row['server']} | {row['ok'] + row['failed']:,.0f} | {row['rooms']} | "
                     f"{row['ok']:,.0f} | {row['all_welcomed_s']:.2f} s ({each}) | "
                     f"{row['cpu_ms_per_join']:.2f} |")
    lines.append("")
    lines.append(f"`results/joinstorm.json`, commit {commits(storm)}, medians of {storm['tries']} "
                 "tries; both servers listen with the same backlog.")
    return "\n".join(lines)


def history_table(results: Path = RESULTS) -> str:
    hist = load("history", results)
    lines = [f"| history | events | publishers | events/s (min{DASH}max) | mean batch |",
             "|---|---|---|---|---|"]
    for row in hist["results"]:
        lines.append(f"| {row['backend']} | {row['events']:,} | {row['publishers']:,} | "
                     f"{row['events_per_second']:,.0f} ({row['min_eps']:,}{DASH}{row['max_eps']:,}) | "
                     f"{row['mean_batch']:.0f} |")
    lines.append("")
    lines.append(f"`results/history.json`, commit {commits(hist)}, medians of {hist['tries']} runs.")
    return "\n".join(lines)


def broker_table(results: Path = RESULTS) -> str:
    broker = load("broker", results)
    lines = ["| broker | p50 | p99 | events/s |", "|---|---|---|---|"]
    for row in broker["results"]:
        lines.append(f"| {row['broker']} | {ms(row['p50_ms'])} | {ms(row['p99_ms'])} | "
                     f"{row['events_per_s']:,.0f} |")
    lines.append("")
    lines.append(f"`results/broker.json`, commit {commits(broker)}, medians of {broker['tries']} tries.")
    return "\n".join(lines)


SECTIONS: dict[Path, dict[str, Callable[..., str]]] = {
    ROOT / "README.md": {"readme": readme_table},
    HERE / "README.md": {"fanout": fanout_table, "idle": idle_table, "joinstorm": joinstorm_table,
                         "history": history_table, "broker": broker_table},
}


def render(text: str, sections: dict[str, Callable[..., str]], results: Path = RESULTS) -> str:
    """``text`` with every ``<!-- bench:NAME -->``…``<!-- /bench:NAME -->`` block regenerated."""
    for name, make in sections.items():
        start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
        if start not in text or end not in text:
            raise ReportError(f"the markers {start} … {end} are missing")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{make(results)}\n{end}{tail}"
    return text


def stale(results: Path = RESULTS) -> list[str]:
    """The documents whose tables differ from what the results files say."""
    return [str(path.relative_to(ROOT)) for path, sections in SECTIONS.items()
            if render(path.read_text(), sections, results) != path.read_text()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a table is stale")
    args = parser.parse_args()
    try:
        if args.check:
            found = stale()
            if found:
                sys.exit(f"stale benchmark tables in {', '.join(found)}: run benchmarks/report.py")
            print("benchmark tables match benchmarks/results/")
            return
        for path, sections in SECTIONS.items():
            path.write_text(render(path.read_text(), sections))
            print(f"wrote the tables of {path.relative_to(ROOT)}")
    except ReportError as exc:
        sys.exit(f"report: {exc}")


if __name__ == "__main__":
    main()
