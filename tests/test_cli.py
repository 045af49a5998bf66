"""The command line (the README): through Typer's runner, and as the installed console script."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from typer.testing import CliRunner
from websockets.exceptions import ConnectionClosed, InvalidStatus

from revchat import __version__
from revchat.cli.main import cli
from revchat.settings.config import Settings, load
from revchat.settings.options import OPTIONS
from revchat.settings.startup import ensure_secret_key
from tests.support.live import connect, frame, frame_of, say, sign_in
from tests.support.ports import free_port, free_socket
from tests.support.process import SCRIPT, serve

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for option in OPTIONS:
        for var in option.envs:
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("REVCHAT_DATA_DIR", str(tmp_path / "data"))


def test_version() -> None:
    """--version prints the package version."""
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"revchat {__version__}"


def test_help_names_every_environment_variable() -> None:
    """serve --help names each option's REVCHAT_ variable (and the seed's FB_ ones)."""
    result = runner.invoke(cli, ["serve", "--help"], terminal_width=400)
    assert result.exit_code == 0
    for option in OPTIONS:
        assert option.flag in result.output
        for var in option.envs:
            assert var in result.output


def test_flag_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """config show reports each value's source: flag over env over default."""
    monkeypatch.setenv("REVCHAT_PORT", "9100")
    monkeypatch.setenv("REVCHAT_ARCHIVE_SIZE", "20")
    key = "s3cret-" + "k" * 32
    result = runner.invoke(cli, ["config", "show", "--port", "9200", "--secret-key", key])
    assert result.exit_code == 0
    lines = {line.split()[0]: line.split() for line in result.output.splitlines()}
    assert lines["port"][1:] == ["9200", "flag"]
    assert lines["archive_size"][1:] == ["20", "env"]
    assert lines["host"][1:] == ["127.0.0.1", "default"]
    assert lines["secret_key"][1:] == ["********", "flag"]
    assert key not in result.output


def test_seed_facebook_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """FB_CLIENT_ID and FB_CLIENT_SECRET configure Facebook, which turns guests off."""
    monkeypatch.setenv("FB_CLIENT_ID", "123")
    monkeypatch.setenv("FB_CLIENT_SECRET", "shh")
    settings = load({}).settings
    assert settings.facebook and not settings.guests
    assert load({"guests": True}).settings.guests


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port: 70000 is out of range"),
        (["--port", "abc"], "--port: 'abc' is not a whole number"),
        (["--history", "mysql://x"], "--history: 'mysql://x' has an unknown scheme"),
        (["--broker", "kafka://x"], "--broker: 'kafka://x' has an unknown scheme"),
        (["--workers", "2"], "--workers 2 needs a shared broker: add --broker redis://"),
        (["--public-url", "ftp://x"], "--public-url: 'ftp://x' is not an http:// or https:// URL"),
        (["--log-level", "loud"], "--log-level: 'loud' is not one of"),
        (["--rate", "-1"], "--rate: '-1' must be zero or more"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    """Every bad value ends with exit 2 and one line naming the flag, no traceback."""
    result = runner.invoke(cli, ["serve", *args])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and message in result.output
    assert "Traceback" not in result.output


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad REVCHAT_ value is reported with the variable's name."""
    monkeypatch.setenv("REVCHAT_PORT", "0")
    result = runner.invoke(cli, ["config", "show"])
    assert result.exit_code == 2 and "REVCHAT_PORT: 0 is out of range" in result.output


def test_config_check(tmp_path: Path) -> None:
    """config check prints one line per problem and exits 1; a good config exits 0."""
    result = runner.invoke(cli, ["config", "check", "--history", "memory://"])
    assert result.exit_code == 0 and "configuration ok" in result.output
    result = runner.invoke(cli, ["config", "check", "--fb-client-id", "1",
                                 "--public-url", "http://chat.example.org",
                                 "--workers", "3"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert any("--workers 3 needs a shared broker" in line for line in lines)
    assert any("half configured: FB_CLIENT_SECRET is missing" in line for line in lines)
    result = runner.invoke(cli, ["config", "check", "--fb-client-id", "1",
                                 "--fb-client-secret", "2",
                                 "--public-url", "http://chat.example.org"])
    assert result.exit_code == 1 and "use an https:// --public-url" in result.output


def test_unwritable_data_dir_is_reported(tmp_path: Path) -> None:
    """A data dir that cannot be written is one line from config check."""
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    result = runner.invoke(cli, ["config", "check", "--data-dir", str(blocker / "sub")])
    assert result.exit_code == 1 and "is not writable" in result.output


def test_secret_key_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    """Without a key, one is generated in the data dir (0600) and reused afterwards."""
    settings = Settings(data_dir=tmp_path / "d")
    first = ensure_secret_key(settings)
    path = tmp_path / "d" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.secret_key) >= 32
    assert ensure_secret_key(settings).secret_key == first.secret_key


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60,
                          env=env or dict(os.environ))


def test_console_script_version_and_bad_value() -> None:
    """The installed `revchat` prints its version, and a bad value as one line, exit 2."""
    result = run_script("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"revchat {__version__}"
    result = run_script("serve", "--port", "99999")
    assert result.returncode == 2
    assert result.stderr.strip() == "revchat: --port: 99999 is out of range (must be from 1 to 65535)"


def test_console_script_port_in_use_is_one_line(tmp_path: Path) -> None:
    """A port that is taken ends `revchat serve` with one line and exit 1."""
    taken = free_socket()
    port = taken.getsockname()[1]
    result = run_script("serve", "--port", str(port), "--data-dir", str(tmp_path))
    taken.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == \
        f"revchat: port {port} on 127.0.0.1 is already in use"
    assert "Traceback" not in result.stderr


def test_console_script_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`revchat serve` serves the page and the socket; SIGTERM closes sockets with 1001, exit 0."""
    with serve("--data-dir", str(tmp_path / "data"), log=tmp_path / "log") as served:
        assert 'action="/auth/guest"' in httpx.get(served.url).text
        assert (tmp_path / "data" / "secret_key").exists()

        async def scenario() -> tuple[int | None, str | None]:
            cookie = await sign_in(served.url, "Ann")
            async with connect(served.port, "lobby", cookie) as ws:
                assert (await frame(ws))["type"] == "welcome"
                served.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await frame(ws, timeout=10)
                return ws.close_code, ws.close_reason

        assert asyncio.run(scenario()) == (1001, "server shutting down")
        assert served.proc.wait(15) == 0
    output = served.output()
    assert "guest sign-in is on" in output
    assert "Traceback" not in output, output


def test_the_data_dir_and_its_files_are_private(tmp_path: Path) -> None:
    """`revchat serve` keeps the data dir 0700 and the database, its WAL files and the secret
    key 0600 — also when an older release had left the dir 0755 and the database 0644."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "revchat.db").touch(mode=0o644)
    (data / "revchat.db").chmod(0o644)
    with serve("--data-dir", str(data), log=tmp_path / "log") as served:

        async def scenario() -> None:
            cookie = await sign_in(served.url, "Ann")
            async with connect(served.port, "lobby", cookie) as ws:
                await frame(ws)
                await say(ws, "written")
                await frame_of(ws, "message")

        asyncio.run(scenario())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert {"revchat.db", "revchat.db-wal", "secret_key"} <= set(modes)
    assert all(mode == 0o600 for mode in modes.values()), modes


def test_a_short_secret_key_is_refused(tmp_path: Path) -> None:
    """A secret key under 32 characters is one line at start, exit 2, and the key is not shown."""
    result = run_script("serve", "--data-dir", str(tmp_path), env=dict(
        os.environ, REVCHAT_SECRET_KEY="short-key-1234"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "revchat: REVCHAT_SECRET_KEY: the key is 14 characters; at least 32 are needed "
        "(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"]
    assert "short-key-1234" not in result.stderr + result.stdout


def test_console_script_stops_on_sigint_like_sigterm(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) closes the sockets with 1001 "server shutting down" and exits 0, with the
    history kept: a restart on the same data dir still has the message."""
    data = tmp_path / "data"
    with serve("--data-dir", str(data), log=tmp_path / "log") as served:

        async def scenario() -> tuple[int | None, str | None]:
            cookie = await sign_in(served.url, "Ann")
            async with connect(served.port, "lobby", cookie) as ws:
                await frame(ws)
                await say(ws, "before ctrl-c")
                await frame_of(ws, "message")
                served.proc.send_signal(signal.SIGINT)
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await frame(ws, timeout=10)
                return ws.close_code, ws.close_reason

        assert asyncio.run(scenario()) == (1001, "server shutting down")
        assert served.proc.wait(15) == 0
    assert "Traceback" not in served.output()
    result = runner.invoke(cli, ["history", "export", "lobby", "--data-dir", str(data)])
    assert '"text":"before ctrl-c"' in result.stdout


async def ipv6_socket(port: int, cookie: str, origin: str) -> dict[str, Any]:
    """The welcome of a socket opened to [::1]."""
    async with websockets.connect(
            f"ws://[::1]:{port}/rooms/lobby/socket", origin=origin,  # type: ignore[arg-type]
            additional_headers={"Cookie": f"revchat_session={cookie}"}, open_timeout=5) as ws:
        return await frame(ws)


def test_console_script_serves_on_ipv6_loopback(tmp_path: Path) -> None:
    """`revchat serve --host ::1` listens on [::1] only; the page, the sign-in form and the socket
    work there, with [::1] (and its loopback aliases) as the origin and others refused."""
    with serve("--data-dir", str(tmp_path / "data"), host="::1", log=tmp_path / "log") as served:
        assert served.url == f"http://[::1]:{served.port}"
        assert 'action="/auth/guest"' in httpx.get(served.url).text
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{served.port}/healthz")
        origin = f"http://[::1]:{served.port}"
        signed_in = httpx.post(f"{served.url}/auth/guest", data={"name": "Ann"},
                               headers={"origin": origin})
        assert signed_in.status_code == 302
        cookie = signed_in.cookies["revchat_session"]
        alias = httpx.post(f"{served.url}/auth/guest", data={"name": "Bob"},
                           headers={"origin": f"http://localhost:{served.port}"})
        assert alias.status_code == 302
        foreign = httpx.post(f"{served.url}/auth/guest", data={"name": "Eve"},
                             headers={"origin": "http://evil.example"})
        assert foreign.status_code == 403
        welcome = asyncio.run(ipv6_socket(served.port, cookie, origin))
        assert welcome["type"] == "welcome" and welcome["you"]["name"] == "Ann"
        with pytest.raises(InvalidStatus) as err:
            asyncio.run(ipv6_socket(served.port, cookie, "http://evil.example"))
        assert err.value.response.status_code == 403
    assert f"serving http://[::1]:{served.port}" in served.output()


def test_a_session_survives_a_restart(tmp_path: Path) -> None:
    """Without --secret-key the key generated at the first start is used again at the next, so a
    cookie from before a restart still opens the room page and the socket, as the same user."""
    data, port = tmp_path / "data", free_port()
    with serve("--data-dir", str(data), port=port, log=tmp_path / "log") as served:
        cookie = asyncio.run(sign_in(served.url, "Ann"))
        before = asyncio.run(welcome_of(served.port, cookie))
        assert served.stop() == 0
    with serve("--data-dir", str(data), port=port, log=tmp_path / "log") as served:
        page = httpx.get(f"{served.url}/rooms/lobby", cookies={"revchat_session": cookie})
        assert page.status_code == 200 and 'data-room="lobby"' in page.text
        after = asyncio.run(welcome_of(served.port, cookie))
    assert after["you"] == before["you"]


async def welcome_of(port: int, cookie: str) -> dict[str, Any]:
    async with connect(port, "lobby", cookie) as ws:
        return await frame(ws)


def test_log_level_warning_hides_the_start_lines(tmp_path: Path) -> None:
    """--log-level warning: `revchat serve` runs without its info lines (which info shows)."""
    with serve("--data-dir", str(tmp_path / "data"), "--log-level", "warning",
               log=tmp_path / "log") as served:
        assert served.stop() == 0
    assert "revchat: serving" not in served.output()
    assert "guest sign-in is on" not in served.output()
