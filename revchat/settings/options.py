"""Every setting, declared once: :data:`OPTIONS`.

Each setting is one :class:`Option`: its name, default, environment variable, help text, parser
and whether it is a secret. The CLI builds its flags from :data:`OPTIONS`, ``revchat config show``
lists them, the README's table is generated from them (a test keeps it in step), and
:class:`revchat.settings.config.Settings` takes its defaults from :data:`DEFAULTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit


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
DEFAULTS: dict[str, Any] = {o.name: o.default for o in OPTIONS if o.default is not DERIVED}
"""Each setting's default, as :data:`OPTIONS` declares it: :class:`Settings` takes its own from here."""


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
