"""Settings, declared once.

Every setting is one :class:`Option`: its name, default, environment variable, help text and
whether it is a secret. The CLI builds its flags from :data:`OPTIONS`, ``revchat config show``
lists them, the README table is checked against them by a test, and the app reads the resulting
:class:`Settings`. A flag beats the environment, which beats the default.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

import platformdirs

Source = Literal["default", "env", "flag"]


class SettingError(ValueError):
    """A setting has a value revchat cannot use; the message is one line for the terminal."""


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise SettingError(f"{raw!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise SettingError(f"{value} is out of range (must be {bound})")
        return value

    return parse


def _float(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise SettingError(f"{raw!r} is not a number") from None
        if not value >= 0:
            raise SettingError(f"{raw!r} must be zero or more")
        if not low <= value <= high:  # also inf
            raise SettingError(f"{raw.strip()!r} is out of range (must be from {low:g} to {high:g})")
        return value

    return parse


def _text(raw: str) -> str:
    return raw.strip()


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingError(f"{raw!r} is not true or false")


def _split(value: str) -> SplitResult:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise SettingError(f"{value!r} is not a URL: {exc}") from None
    return parts


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        scheme = _split(value).scheme
        if scheme not in schemes:
            wanted = " or ".join(f"{s}://" for s in schemes)
            raise SettingError(f"{value!r} has an unknown scheme (expected {wanted})")
        return value

    return parse


def _public_url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = _split(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise SettingError(f"{value!r} is not an http:// or https:// URL")
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        raise SettingError(f"{value!r} must be an origin only (no path), e.g. https://chat.example.org")
    # As browsers send it in Origin: scheme and host in lower case.
    return f"{parts.scheme}://{parts.netloc.lower()}"


MIN_SECRET_KEY = 32
"""Shortest secret key accepted, in characters: a short key can be guessed offline from one cookie."""


def _secret_key(raw: str) -> str:
    value = raw.strip()
    if len(value) < MIN_SECRET_KEY:
        # Never echo the key itself.
        raise SettingError(f"the key is {len(value)} characters; at least {MIN_SECRET_KEY} are "
                           "needed (python3 -c 'import secrets; print(secrets.token_urlsafe(48))')")
    return value


def _path(raw: str) -> Path:
    try:
        return Path(raw.strip()).expanduser().absolute()
    except RuntimeError as exc:  # "~nobody": no such user's home
        raise SettingError(f"{raw.strip()!r}: {exc}") from None


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise SettingError(f"{raw!r} is not one of {', '.join(choices)}")
        return value

    return parse


@dataclass(frozen=True)
class Option:
    """One setting: the single declaration the CLI, ``config show``, the README and the app use."""

    name: str
    default: Any
    help: str
    parse: Callable[[str], Any]
    metavar: str = "VALUE"
    secret: bool = False
    switch: bool = False
    """A ``--name/--no-name`` pair instead of a flag taking a value."""
    extra_env: tuple[str, ...] = ()
    """Other environment variables honoured after ``REVCHAT_<NAME>`` (the seed's ``FB_*``)."""

    @property
    def env(self) -> str:
        return "REVCHAT_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def envs(self) -> tuple[str, ...]:
        return (self.env, *self.extra_env)


DERIVED = None
"""A default of ``None`` is worked out from other settings (see :func:`load`)."""

OPTIONS: tuple[Option, ...] = (
    Option("host", "127.0.0.1", "Address to listen on.", _text, "HOST"),
    Option("port", 9000, "Port to listen on.", _int(1, 65535), "PORT"),
    Option("workers", 1, "Worker processes; more than 1 needs --broker redis://...", _int(1, 64), "N"),
    Option(
        "public_url", DERIVED, "The origin browsers use, e.g. https://chat.example.org "
        "[default: http://HOST:PORT].", _public_url, "URL",
    ),
    Option(
        "data_dir", DERIVED, "Where the secret key and the SQLite history live "
        "[default: the platform's user data dir].", _path, "DIR",
    ),
    Option(
        "history", DERIVED, "History store: sqlite:///PATH or memory:// "
        "[default: sqlite:///DATA_DIR/revchat.db].", _url("sqlite", "memory"), "URL",
    ),
    Option("broker", "memory://", "Broker: memory:// (one process) or redis://HOST:PORT/DB.",
           _url("memory", "redis", "rediss"), "URL"),
    Option("archive_size", 50, "Events a joiner receives as the room's recent history.",
           _int(0, 10000), "N"),
    Option("resume_limit", 1000, "Most missed events replayed by ?since= before falling back "
           "to the plain archive.", _int(0, 100000), "N"),
    Option("retention_count", 0, "Events kept per room (0 keeps all).", _int(0), "N"),
    Option("retention_days", 0.0, "Days an event is kept (0 keeps it forever).", _float(0, 100_000), "DAYS"),
    Option("secret_key", DERIVED, "Key that signs sessions; shared by servers that share a broker "
           "[default: generated once, kept in DATA_DIR/secret_key]; at least 32 characters.",
           _secret_key, "KEY", secret=True),
    Option("fb_client_id", "", "Facebook app id (also read from FB_CLIENT_ID).", _text, "ID",
           extra_env=("FB_CLIENT_ID",)),
    Option("fb_client_secret", "", "Facebook app secret (also read from FB_CLIENT_SECRET).",
           _text, "SECRET", secret=True, extra_env=("FB_CLIENT_SECRET",)),
    Option("fb_graph_version", "v26.0", "Facebook Graph API version.", _text, "VERSION"),
    Option("fb_dialog_url", "https://www.facebook.com", "Base URL of Facebook's login dialog.",
           _url("http", "https"), "URL"),
    Option("fb_api_url", "https://graph.facebook.com", "Base URL of the Graph API (token and /me).",
           _url("http", "https"), "URL"),
    Option("guests", DERIVED, "Allow nickname sign-in [default: on unless Facebook is configured].",
           _bool, switch=True),
    Option("redis_prefix", "revchat", "Prefix of every Redis key, so deployments can share one Redis.",
           _text, "PREFIX"),
    Option("log_level", "info", "Log level: debug, info, warning or error.",
           _choice("debug", "info", "warning", "error"), "LEVEL"),
    Option("max_message_length", 2000, "Longest message, in characters.", _int(1, 100000), "N"),
    Option("max_frame_size", 65536, "Largest WebSocket frame a client may send, in bytes "
           "(bigger closes with 1009).", _int(1024, 16 * 1024 * 1024), "BYTES"),
    Option("rate", 2.0, "Messages per second a user may say in a room (0 turns limiting off).",
           _float(0, 1e6), "PER_SECOND"),
    Option("burst", 10, "Messages a user may say at once before the rate applies.", _int(1), "N"),
    Option("queue_size", 1024 * 1024, "Bytes that may wait to be sent to one client before it is "
           "closed with 1013 (slow consumer).", _int(4096), "BYTES"),
    Option("write_delay", 3.0, "Milliseconds between two writes to a client while messages keep "
           "coming (they are sent together); after a quiet spell a message goes out at once.",
           _float(0, 1000), "MS"),
    Option("ping_interval", 20.0, "Seconds between pings (0 turns pings off).", _float(0, 86400),
           "SECONDS"),
    Option("ping_timeout", 20.0, "Seconds a peer has to answer a ping.", _float(0, 86400), "SECONDS"),
    Option("max_connections", 100000, "Open sockets one worker accepts.", _int(1), "N"),
    Option("user_sockets", 20, "Open sockets one user may have on a worker, and new ones per "
           "minute (0 turns both limits off).", _int(0, 100000), "N"),
    Option("user_rate", DERIVED, "Messages per second a user may say across all rooms, in bursts "
           "of twice --burst; 0 turns this limit off [default: 2.5 x --rate].", _float(0, 1e6),
           "PER_SECOND"),
    Option("frame_rate", DERIVED, "Frames per second a socket may send, in bursts of twice that; "
           "beyond it the server reads it more slowly; 0 turns pacing off [default: 20, or 10 x --rate "
           "if more; 0 when --rate is 0].",
           _float(0, 1e6), "PER_SECOND"),
    Option("signin_rate", 60, "Sign-ins (guest or Facebook) per client address (an IPv6 /64) per "
           "minute, per worker; over it: 429 (0 turns it off).", _int(0, 1000000), "N"),
    Option("header_timeout", 5.0, "Seconds a request's headers and body have from its first byte, "
           "and an idle connection is kept open (slowloris).", _float(0.5, 600), "SECONDS"),
    Option("trusted_proxies", 0, "Reverse proxies in front of revchat whose X-Forwarded-For is "
           "believed for the client address (0: none, use the peer's address).", _int(0, 16), "N"),
)

OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """The effective settings: plain, picklable values (Sanic's worker processes receive them)."""

    host: str = "127.0.0.1"
    port: int = 9000
    workers: int = 1
    public_url: str = "http://127.0.0.1:9000"
    data_dir: Path = Path(".")
    history: str = "memory://"
    broker: str = "memory://"
    archive_size: int = 50
    resume_limit: int = 1000
    retention_count: int = 0
    retention_days: float = 0.0
    secret_key: str = ""
    fb_client_id: str = ""
    fb_client_secret: str = ""
    fb_graph_version: str = "v26.0"
    fb_dialog_url: str = "https://www.facebook.com"
    fb_api_url: str = "https://graph.facebook.com"
    guests: bool = True
    redis_prefix: str = "revchat"
    log_level: str = "info"
    max_message_length: int = 2000
    max_frame_size: int = 65536
    rate: float = 2.0
    burst: int = 10
    queue_size: int = 1024 * 1024
    write_delay: float = 3.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    max_connections: int = 100000
    user_sockets: int = 20
    user_rate: float = 5.0
    frame_rate: float = 20.0
    signin_rate: int = 60
    header_timeout: float = 5.0
    trusted_proxies: int = 0

    @property
    def facebook(self) -> bool:
        """True when Facebook sign-in is configured (both id and secret)."""
        return bool(self.fb_client_id and self.fb_client_secret)

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def allowed_origins(self) -> frozenset[str]:
        """Origins accepted on POSTs and the socket: the public URL's, plus its loopback aliases."""
        parts = urlsplit(self.public_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if not is_loopback(parts.hostname or ""):
            return frozenset({origin})
        port = f":{parts.port}" if parts.port else ""
        return frozenset(
            {origin} | {f"{parts.scheme}://{h}{port}" for h in ("localhost", "127.0.0.1", "[::1]")}
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Loaded:
    """Settings together with where each value came from (for ``config show``)."""

    settings: Settings
    sources: Mapping[str, Source]
    problems: tuple[str, ...] = ()
    """Values that did not parse, one line each; their defaults stand in (``lenient`` only)."""


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("revchat", appauthor=False))


def load(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
         *, lenient: bool = False) -> Loaded:
    """Resolve every option: flag (already parsed or raw text), then environment, then default.

    Raises :class:`SettingError` naming the flag or variable at fault; every value that does
    not parse is one line of its message. With ``lenient``, such values are listed in
    :attr:`Loaded.problems` and their defaults stand in (``config check``).
    """
    flags = flags or {}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    errors: list[str] = []
    for option in OPTIONS:
        raw, where, source = flags.get(option.name), option.flag, "flag"
        if raw is None:
            where = next((v for v in option.envs if environ.get(v, "") != ""), "")
            raw, source = (environ[where], "env") if where else (None, "default")
        sources[option.name] = source  # type: ignore[assignment]
        values[option.name] = option.default
        if raw is not None:
            try:
                values[option.name] = _parse(option, raw, where)
            except SettingError as exc:
                errors.append(str(exc))
    if errors and not lenient:
        raise SettingError("\n".join(errors))
    _derive(values)
    known = {f.name for f in fields(Settings)}
    return Loaded(Settings(**{k: v for k, v in values.items() if k in known}), sources,
                  tuple(errors))


def _parse(option: Option, raw: Any, where: str) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return option.parse(raw)
    except SettingError as exc:
        raise SettingError(f"{where}: {exc}") from None


def _derive(values: dict[str, Any]) -> None:
    if values["data_dir"] is None:
        values["data_dir"] = default_data_dir()
    if values["history"] is None:
        values["history"] = f"sqlite:///{values['data_dir'] / 'revchat.db'}"
    if values["public_url"] is None:
        host = values["host"]
        if host in {"0.0.0.0", "::", ""}:
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        values["public_url"] = f"http://{host}:{values['port']}"
    if values["guests"] is None:
        values["guests"] = not (values["fb_client_id"] and values["fb_client_secret"])
    if values["secret_key"] is None:
        values["secret_key"] = ""
    # --rate 0 (benchmarks) means "do not limit what clients say" unless these are set too.
    if values["user_rate"] is None:
        values["user_rate"] = 2.5 * values["rate"]
    if values["frame_rate"] is None:
        values["frame_rate"] = max(20.0, 10 * values["rate"]) if values["rate"] else 0.0


def shown(option: Option, value: Any) -> str:
    """A setting's value as ``config show`` prints it: secrets masked."""
    if option.secret:
        return "********" if value else "(not set)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def markdown_table() -> str:
    """The README's settings table, generated from :data:`OPTIONS` (a test keeps them in step)."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        flag = f"`{option.flag}/--no-{option.flag[2:]}`" if option.switch else f"`{option.flag}`"
        envs = ", ".join(f"`{e}`" for e in option.envs)
        default = "derived" if option.default is None else f"`{shown(option, option.default)}`"
        rows.append(f"| {flag} | {envs} | {default} | {option.help.replace('|', '/')} |")
    return "\n".join(rows)
