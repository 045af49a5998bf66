"""Settings from flags and the environment (revchat/settings/config.py and the CLI): any value gives
settings or a SettingError of one line per bad value naming the flag or variable, never a traceback."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from revchat.cli.main import cli
from revchat.settings.config import Loaded, Settings, load
from revchat.settings.options import OPTIONS, OPTIONS_BY_NAME, Option, SettingError

runner = CliRunner()

FIELD_TYPES = {f.name: f.type for f in fields(Settings)}
FLOAT_OPTIONS = [o for o in OPTIONS if FIELD_TYPES[o.name] == "float"]
INT_OPTIONS = [o for o in OPTIONS if FIELD_TYPES[o.name] == "int"]

# Beginnings that steer values into each parser's corners (URLs, IPv6 brackets, home dirs, numbers).
PREFIXES = st.sampled_from(["", " ", "~", "http://", "https://", "http://[", "https://[::1]:", "redis://",
                            "rediss://[", "sqlite:///", "memory://", "-", "+", "0x", "1e", "inf", "nan",
                            "http://localhost:", "\u0661", "²", "\u3000"])
VALUES = st.text() | st.builds(lambda head, tail: head + tail, PREFIXES, st.text(max_size=12))


def check_load(option: Option, value: str, *, env: bool) -> Loaded | SettingError:
    """Load one option's value from a flag or its variable; a SettingError must be one line naming
    where the value came from, and anything else propagates and fails the test."""
    where = option.env if env else option.flag
    try:
        loaded = load({} if env else {option.name: value}, environ={option.env: value} if env else {})
    except SettingError as exc:
        message = str(exc)
        assert message.splitlines() == message.split("\n") == [message], f"not one line: {message!r}"
        assert message.startswith(f"{where}: ")
        return exc
    got = getattr(loaded.settings, option.name)
    if isinstance(got, float):
        assert math.isfinite(got), f"{where} {value!r} gave {got!r}"
    return loaded


@settings(max_examples=400)
@given(option=st.sampled_from(OPTIONS), value=VALUES)
@example(option=OPTIONS_BY_NAME["broker"], value="redis://[")
@example(option=OPTIONS_BY_NAME["public_url"], value="http://[::1")
@example(option=OPTIONS_BY_NAME["fb_api_url"], value="https://graph\uff03x")
@example(option=OPTIONS_BY_NAME["data_dir"], value="~no-such-user-here")
def test_any_flag_value_loads_or_names_the_flag(option: Option, value: str) -> None:
    """Any text as any option's flag gives settings or a one-line SettingError starting "--flag: "."""
    result = check_load(option, value, env=False)
    if isinstance(result, Loaded):
        assert result.sources[option.name] == "flag"


@settings(max_examples=400)
@given(option=st.sampled_from(OPTIONS), value=VALUES)
@example(option=OPTIONS_BY_NAME["history"], value="sqlite://[x")
@example(option=OPTIONS_BY_NAME["data_dir"], value="~no-such-user-here")
def test_any_environment_value_loads_or_names_the_variable(option: Option, value: str) -> None:
    """Any text in any option's REVCHAT_ variable gives settings or a one-line SettingError naming it."""
    result = check_load(option, value, env=True)
    if isinstance(result, Loaded):
        assert result.sources[option.name] == ("env" if value else "default")  # "" counts as unset


NON_FINITE = ["inf", "-inf", "+inf", "Infinity", "INF", " inf ", "nan", "NaN", "-nan", "1e309", "-1e309",
              "9" * 400]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("option", FLOAT_OPTIONS, ids=lambda o: o.name)
def test_float_options_refuse_infinity_and_nan(option: Option, value: str) -> None:
    """No number option takes inf, nan or a number too big for a float."""
    result = check_load(option, value, env=False)
    assert isinstance(result, SettingError)


@pytest.mark.parametrize("value", ["inf", "nan", "1e309", "-0", "1e3", "0x10", "1_0"])
@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_no_option_ends_up_non_finite(option: Option, value: str) -> None:
    """Whatever option takes inf, nan, 1e309 or -0, the value it keeps is never an infinite or NaN float."""
    check_load(option, value, env=False)


@pytest.mark.parametrize("option", FLOAT_OPTIONS, ids=lambda o: o.name)
def test_minus_zero_is_zero(option: Option) -> None:
    """"-0" is read as 0: accepted as 0.0 wherever "0" is, refused wherever "0" is."""
    minus, plain = check_load(option, "-0", env=False), check_load(option, "0", env=False)
    assert isinstance(minus, Loaded) == isinstance(plain, Loaded)
    if isinstance(minus, Loaded):
        assert getattr(minus.settings, option.name) == 0.0


@pytest.mark.parametrize("option", INT_OPTIONS, ids=lambda o: o.name)
@pytest.mark.parametrize("value", ["1.5", "1e3", "inf", "nan", "x", "", "9" * 5000, "²", "0x10"])
def test_whole_number_options_refuse_other_numbers(option: Option, value: str) -> None:
    """A whole-number option refuses fractions, exponents, inf, nan, words and 5000-digit numbers."""
    assert isinstance(check_load(option, value, env=False), SettingError)


@settings(max_examples=200)
@given(value=VALUES)
@example(value="http://localhost:99999")
@example(value="http://127.0.0.1:x")
def test_an_accepted_public_url_gives_usable_origins(value: str) -> None:
    """A --public-url that loads can be used: allowed_origins works, and cookies are Secure for https."""
    result = check_load(OPTIONS_BY_NAME["public_url"], value, env=False)
    if isinstance(result, Loaded):
        assert result.settings.allowed_origins
        assert result.settings.secure_cookies == (urlsplit(result.settings.public_url).scheme == "https")


@pytest.mark.parametrize("value", ["https://chat.example.org", "HTTPS://chat.example.org", "Https://x:8443"])
def test_https_public_url_gives_secure_cookies(value: str) -> None:
    """Any https:// public URL (the scheme is case-insensitive) makes the session cookie Secure."""
    assert load({"public_url": value}, environ={}).settings.secure_cookies


BAD_VALUES = st.sampled_from(["x", "-5", "99999", "inf", "maybe", "ftp://x", "short", "loud", "1.5", ""])
SAFE_TEXT = st.text(alphabet=st.characters(codec="ascii", exclude_characters="[]~"), max_size=10)
NAMES = [o.name for o in OPTIONS]


@given(raw=st.dictionaries(st.sampled_from(NAMES), BAD_VALUES | SAFE_TEXT, max_size=8))
def test_lenient_load_lists_each_bad_value_in_option_order(raw: dict[str, str]) -> None:
    """lenient=True gives one problem line per bad value, in OPTIONS order, with defaults standing in;
    a strict load raises exactly those lines."""
    expected: list[str] = []
    for option in OPTIONS:
        if option.name in raw:
            try:
                load({option.name: raw[option.name]}, environ={})
            except SettingError as exc:
                expected.append(str(exc))
    loaded = load(raw, environ={}, lenient=True)
    assert list(loaded.problems) == expected
    bad = {line.split(":", 1)[0] for line in expected}
    for option in OPTIONS:
        if option.flag in bad and option.default is not None:
            assert getattr(loaded.settings, option.name) == option.default
    if expected:
        with pytest.raises(SettingError) as caught:
            load(raw, environ={})
        assert str(caught.value) == "\n".join(expected)
    else:
        assert load(raw, environ={}).problems == ()


def test_lenient_load_example() -> None:
    """Three bad values give three lines in OPTIONS order (port, archive_size, rate) and the defaults."""
    loaded = load({"rate": "x", "port": "99999", "archive_size": "-5"}, environ={}, lenient=True)
    assert loaded.problems == (
        "--port: 99999 is out of range (must be from 1 to 65535)",
        "--archive-size: -5 is out of range (must be from 0 to 10000)",
        "--rate: 'x' is not a number",
    )
    assert (loaded.settings.port, loaded.settings.archive_size, loaded.settings.rate) == (9000, 50, 2.0)


SHORT_KEYS = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ23456789", min_size=8, max_size=31)


@given(key=SHORT_KEYS, env=st.booleans())
def test_short_secret_key_is_refused_without_echoing_it(key: str, env: bool) -> None:
    """A secret key under 32 characters is refused with a line about 32 characters that never holds it."""
    result = check_load(OPTIONS_BY_NAME["secret_key"], key, env=env)
    assert isinstance(result, SettingError)
    assert "at least 32" in str(result) and key not in str(result)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No REVCHAT_ or FB_ variable from the machine; the data dir in a temp dir."""
    for option in OPTIONS:
        for var in option.envs:
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("REVCHAT_DATA_DIR", str(tmp_path / "data"))


def output_lines(result: Any) -> list[str]:
    """The lines a command printed (stdout and stderr together), checked to hold no traceback."""
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.usefixtures("clean_env")
def test_config_check_prints_every_problem_on_its_own_line() -> None:
    """config check with three bad values exits 1 and prints each problem as one line."""
    result = runner.invoke(cli, ["config", "check", "--port", "99999", "--rate", "x", "--archive-size", "-5"])
    assert result.exit_code == 1
    assert output_lines(result) == [
        "--port: 99999 is out of range (must be from 1 to 65535)",
        "--archive-size: -5 is out of range (must be from 0 to 10000)",
        "--rate: 'x' is not a number",
    ]


@pytest.mark.usefixtures("clean_env")
def test_serve_with_two_bad_values_exits_2_with_both_lines() -> None:
    """serve with two bad values exits 2 with one line for each and no traceback (nothing starts)."""
    result = runner.invoke(cli, ["serve", "--rate", "x", "--port", "99999"])
    assert result.exit_code == 2
    assert output_lines(result) == [
        "revchat: --port: 99999 is out of range (must be from 1 to 65535)",
        "revchat: --rate: 'x' is not a number",
    ]


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("command", [["serve"], ["config", "show"]])
def test_short_secret_key_flag_exits_2_without_the_key(command: list[str]) -> None:
    """--secret-key with a short key exits 2 with one line about 32 characters, not showing the key."""
    key = "Hunter2Zq9"
    result = runner.invoke(cli, [*command, "--secret-key", key])
    assert result.exit_code == 2
    lines = output_lines(result)
    assert len(lines) == 1 and lines[0].startswith("revchat: --secret-key: ") and "at least 32" in lines[0]
    assert key not in result.output


@pytest.mark.usefixtures("clean_env")
def test_short_secret_key_variable_exits_2_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short REVCHAT_SECRET_KEY exits 2 naming the variable, not showing the key."""
    key = "Hunter2Zq9"
    monkeypatch.setenv("REVCHAT_SECRET_KEY", key)
    result = runner.invoke(cli, ["config", "show"])
    assert result.exit_code == 2
    lines = output_lines(result)
    assert len(lines) == 1 and lines[0].startswith("revchat: REVCHAT_SECRET_KEY: ")
    assert key not in result.output


def test_settings_defaults_are_the_options_defaults() -> None:
    """A bare Settings() holds what load() gives with no flag and no variable, every derived
    value included, apart from the two that depend on the machine (data dir, secret key) and
    the history URL that names the data dir."""
    loaded = load({}, {}).settings
    machine = {"data_dir", "history", "secret_key"}
    bare = Settings()
    different = {f.name: (getattr(bare, f.name), getattr(loaded, f.name)) for f in fields(Settings)
                 if f.name not in machine and getattr(bare, f.name) != getattr(loaded, f.name)}
    assert different == {}
    assert {f.name for f in fields(Settings)} == {o.name for o in OPTIONS}


def test_limits_carry_the_settings() -> None:
    """The engine's limits come from the settings, --write-delay turned into seconds."""
    settings = Settings(archive_size=7, resume_limit=8, queue_size=9000, write_delay=4.0, rate=3.0,
                        burst=5, user_rate=6.0, user_sockets=2)
    limits = settings.limits()
    assert (limits.archive_size, limits.resume_limit, limits.queue_size, limits.write_delay,
            limits.rate, limits.burst, limits.user_rate, limits.user_sockets) == \
        (7, 8, 9000, 0.004, 3.0, 5, 6.0, 2)
