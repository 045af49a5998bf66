"""Shared parts of the benchmark scripts: the C load generator, servers pinned to a core, cookies,
tables and JSON results.

Nothing here is imported by revchat; the scripts run with the project's venv, e.g.
``.venv/bin/python benchmarks/fanout.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import platform
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BUILD = HERE / ".build"
BIN = Path(sys.executable).parent
SECRET = "revchat-benchmarks-secret-key-not-for-production"
SERVERS = ("revchat", "baseline", "reference")
"""revchat; the websockets+uvloop baseline; the C reference server (the generator's headroom)."""


# -- the load generator ------------------------------------------------------------------------

def build_loadgen() -> Path:
    """Compile loadgen.c with gcc (once per source version) and return the binary's path."""
    source = HERE / "loadgen.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    binary = BUILD / f"loadgen-{digest}"
    if not binary.exists():
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            sys.exit("benchmarks need a C compiler (gcc) to build the load generator")
        BUILD.mkdir(exist_ok=True)
        (BUILD / ".gitignore").write_text("*\n")
        tmp = binary.with_suffix(".tmp")
        subprocess.run([gcc, "-O2", "-Wall", "-o", str(tmp), str(source)], check=True)
        tmp.rename(binary)
        for old in BUILD.glob("loadgen-*"):
            if old != binary:
                old.unlink()
    return binary


def pin(cpu: int | None, nice: int = 0) -> Any:
    """A preexec_fn pinning a child (and every thread it starts) to one core, maybe reniced."""

    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)

    return setup


@dataclass
class Cores:
    server: int | None
    generator: int | None

    @classmethod
    def pick(cls, server: int | None = None, generator: int | None = None) -> Cores:
        """Server on the first core this process may use, the generator on the second."""
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            print("warning: one core only: server and generator share it", file=sys.stderr)
            return cls(cpus[0], cpus[0])
        return cls(cpus[0] if server is None else server, cpus[1] if generator is None else generator)


class LoadGen:
    """The C client: connects every socket, then runs steps on command (one JSON line each)."""

    def __init__(self, port: int, conns: Sequence[tuple[str, str, str]], *, cpu: int | None,
                 server_pid: int, concurrency: int = 0, sources: int = 0,
                 connect_timeout: float = 60, nice: int = 0) -> None:
        self.dir = tempfile.mkdtemp(prefix="revchat-bench-")
        path = Path(self.dir) / "conns"
        path.write_text("".join(f"{kind} {p} {cookie}\n" for kind, p, cookie in conns))
        self.proc = subprocess.Popen(
            [str(build_loadgen()), "client", "--port", str(port), "--conns", str(path),
             "--server-pid", str(server_pid), "--concurrency", str(concurrency),
             "--sources", str(sources), "--connect-timeout", str(connect_timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            preexec_fn=pin(cpu, nice),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def event(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the load generator said nothing for {timeout:.0f} s") from None
        if line is None:
            raise RuntimeError(f"the load generator exited ({self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def command(self, text: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.event(timeout)

    def step(self, msgs_per_s: float, duration: float, drain: float, size: int) -> dict[str, Any]:
        return self.command(f"step {msgs_per_s} {duration} {drain} {size}", duration + drain + 15)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.command("quit", 10)
        with contextlib.suppress(Exception):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- servers -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    data_dir: str
    log: Path
    extra: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def metrics(self) -> dict[str, float]:
        """revchat's /metrics, as {name: value} (empty for the other servers)."""
        if self.kind != "revchat":
            return {}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_server(kind: str, cpu: int | None, *, extra: Sequence[str] = (), nice: int = 0,
                 src: str | None = None) -> Server:
    """Start one server on a free loopback port, pinned to ``cpu``, and wait until it answers.

    ``src`` (or $REVCHAT_BENCH_SRC) is a directory holding a modified ``revchat`` package to run
    instead of the installed one: how a change is tried on a scratch copy.
    """
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix=f"revchat-bench-{kind}-")
    # Every limit on what one client may cost is off: the generator is one client address, its
    # sender one user. (Variables, not flags, so a src= copy that predates them still starts.)
    limits_off = {"REVCHAT_USER_SOCKETS": "0", "REVCHAT_SIGNIN_RATE": "0",
                  "REVCHAT_USER_RATE": "0", "REVCHAT_FRAME_RATE": "0"}
    if kind == "revchat":
        cmd = [str(BIN / "revchat"), "serve", "--port", str(port), "--history", "memory://",
               "--rate", "0", "--data-dir", data_dir, "--secret-key", SECRET,
               "--max-connections", "1000000", "--log-level", "warning", *extra]
    elif kind == "baseline":
        cmd = [sys.executable, str(HERE / "baseline_server.py"), "--port", str(port), *extra]
    elif kind == "reference":
        cmd = [str(build_loadgen()), "serve", "--port", str(port)]
    else:
        raise ValueError(kind)
    log = Path(data_dir) / "server.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(limits_off if kind == "revchat" else {}))
    src = src or os.environ.get("REVCHAT_BENCH_SRC")
    if kind == "revchat" and src:
        env["PYTHONPATH"] = src
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin(cpu, nice),
                                env=env, cwd=data_dir)
    server = Server(kind, port, proc, data_dir, log, list(extra))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            time.sleep(0.05)
            continue
        if kind == "revchat":
            with contextlib.suppress(OSError, http.client.HTTPException):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    return server
            time.sleep(0.05)
            continue
        return server
    server.stop()
    raise RuntimeError(f"{kind} did not start in 30 s")


@contextlib.contextmanager
def running(kind: str, cpu: int | None, *, extra: Sequence[str] = (), nice: int = 0,
            src: str | None = None) -> Iterator[Server]:
    server = start_server(kind, cpu, extra=extra, nice=nice, src=src)
    try:
        yield server
    finally:
        server.stop()


# -- who connects ------------------------------------------------------------------------------

def guest_cookie(port: int, name: str = "sender") -> str:
    """Sign in as a guest the way a browser does (POST /auth/guest) and return the cookie."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = urllib.parse.urlencode({"name": name})
    conn.request("POST", "/auth/guest", body,
                 {"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    conn.close()
    for header, value in response.getheaders():
        if header.lower() == "set-cookie" and value.startswith("revchat_session="):
            return value.split(";", 1)[0]
    raise RuntimeError(f"guest sign-in gave no session cookie (HTTP {response.status})")


MINT = """
import json, sys
from revchat.core.events import User
from revchat.core import sessions
prefix, count, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
signer = sessions.Signer(secret, "session")
users = [User(f"guest:{prefix}{i}", f"{prefix}{i}") for i in range(count)]
if hasattr(sessions, "new_session"):
    tokens = [sessions.session_token(signer, sessions.new_session(u)) for u in users]
else:  # a revchat from before server-side sessions (a src= copy)
    tokens = [sessions.session_token(signer, u) for u in users]
print(json.dumps(tokens))
"""


def minted_cookies(count: int, prefix: str = "bench", src: str | None = None) -> list[str]:
    """Session cookies for ``count`` distinct guests, signed with the servers' secret key.

    Equivalent to ``count`` guest sign-ins, without ``count`` HTTP requests; the baseline server
    reads the user from the same cookie, so both servers see the same users. They are minted by
    the revchat package the server runs (``src``: a scratch copy), whose cookie format it is.
    """
    env = dict(os.environ, PYTHONPATH=src or os.environ.get("REVCHAT_BENCH_SRC") or str(ROOT))
    # Not from this directory: "python -c" puts the working directory first on sys.path.
    out = subprocess.run([sys.executable, "-c", MINT, prefix, str(count), SECRET], env=env,
                         check=True, capture_output=True, text=True,
                         cwd=tempfile.gettempdir()).stdout
    return [f"revchat_session={token}" for token in json.loads(out)]


def sender_cookie(server: Server) -> str:
    if server.kind == "revchat":
        return guest_cookie(server.port)
    return minted_cookies(1, "sender")[0]


# -- output ------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    versions = {}
    for module in ("sanic", "websockets", "uvloop"):
        with contextlib.suppress(Exception):
            versions[module] = __import__(module).__version__
    with contextlib.suppress(Exception):
        from importlib.metadata import version
        versions["sanic"] = version("sanic")
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "git": git_state(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_at_start": os.getloadavg(),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def git_state() -> dict[str, Any]:
    """The commit measured and whether the tree had changes (results/ aside): a figure is only
    worth quoting from a clean tree, where the commit says exactly what ran."""
    def run(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        changes = run("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
        return {"commit": run("rev-parse", "HEAD"), "dirty": bool(changes),
                "changes": changes.splitlines()}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": True, "changes": ["not a git checkout"]}


def check_clean(out: str | None) -> None:
    """Refuse to measure for ``benchmarks/results/`` from a tree with uncommitted changes (before
    spending minutes on it); ``--out`` elsewhere is for experiments."""
    if out is None and git_state()["dirty"]:
        sys.exit("refusing to write benchmarks/results/: the tree has uncommitted changes "
                 "(commit them, or write elsewhere with --out)")


def alternate(kinds: Sequence[str], tries: int, run: Any) -> dict[str, list[Any]]:
    """``run(kind, attempt)`` ``tries`` times per kind, the kinds taking turns, so a noisy moment
    on this shared machine hits them alike; every result is kept."""
    results: dict[str, list[Any]] = {kind: [] for kind in kinds}
    for attempt in range(tries):
        for kind in kinds:
            results[kind].append(run(kind, attempt))
    return results


def medians(tries: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """One row from its tries: each of ``keys`` is the median of the tries', the rest is the first
    try's, and every try is kept under ``tries``."""
    row = dict(tries[0])
    for key in keys:
        row[key] = statistics.median(t[key] for t in tries)
    row["tries"] = [{key: t[key] for key in keys} for t in tries]
    return row


def cpu_share(cpu: int | None, seconds: float = 0.5) -> float:
    """The share of one core a busy process gets on ``cpu`` right now (1.0 on an idle machine).

    A spinning child counts the CPU time it is given over wall time; other work on the machine
    (and an overcommitted host) lowers it. Recorded with every result as its noise level.
    """
    code = ("import time\nw=time.monotonic();c=time.process_time()\n"
            f"while time.monotonic()-w<{seconds}: pass\n"
            "print((time.process_time()-c)/(time.monotonic()-w))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         preexec_fn=pin(cpu), check=True).stdout
    return round(float(out), 3)


def noise(cores: Cores) -> dict[str, Any]:
    return {"load_average": os.getloadavg()[0],
            "cpu_share_server_core": cpu_share(cores.server),
            "cpu_share_generator_core": cpu_share(cores.generator)}


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table; columns are (header, key, format)."""
    cells = [[h for h, _, _ in columns]]
    for row in rows:
        line = []
        for _, key, fmt in columns:
            value = row.get(key)
            line.append("-" if value is None else format(value, fmt) if fmt else str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for n, r in enumerate(cells):
        out.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def si(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def compact_json(value: Any, indent: str = "") -> str:
    """JSON with one line per table row: dicts spread over lines, flat dicts and lists kept on one."""
    def flat(v: Any) -> bool:
        return not isinstance(v, dict | list) or (
            isinstance(v, dict | list) and all(not isinstance(x, dict | list)
                                               for x in (v.values() if isinstance(v, dict) else v)))
    if flat(value):
        return json.dumps(value, separators=(",", ":"))
    inner = indent + " "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {compact_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return "[\n" + ",\n".join(inner + compact_json(v, inner) for v in value) + "\n" + indent + "]"


def write_result(name: str, data: dict[str, Any], out: str | None = None) -> Path:
    """Write one run's results (with the machine and commit) to ``benchmarks/results/NAME.json``,
    or ``out``. Results for the repository must come from a clean tree (:func:`check_clean`)."""
    if out is None and data.get("machine", {}).get("git", {}).get("dirty", True):
        sys.exit(f"refusing to write benchmarks/results/{name}.json: the tree had uncommitted "
                 "changes when the run started (or no machine record)")
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(compact_json(data) + "\n")
    return path


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
