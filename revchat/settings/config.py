"""The effective settings: :func:`load` resolves every option of :mod:`revchat.settings.options`
into one :class:`Settings`. A flag beats the environment, which beats the default.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import platformdirs

from revchat.core.engine import Limits
from revchat.settings.options import DEFAULTS, OPTIONS, Option, SettingError

Source = Literal["default", "env", "flag"]


@dataclass(frozen=True)
class Settings:
    """The effective settings: plain, picklable values (Sanic's worker processes receive them).

    Each default is :data:`OPTIONS`'s; a derived one (public URL, data dir, history, secret key,
    guests, user and frame rates) is what :func:`load` works out from the other defaults, apart
    from the machine-specific data dir and key (tests/test_settings.py checks both).
    """

    host: str = DEFAULTS["host"]
    port: int = DEFAULTS["port"]
    workers: int = DEFAULTS["workers"]
    public_url: str = "http://127.0.0.1:9000"
    data_dir: Path = Path(".")
    history: str = "memory://"
    broker: str = DEFAULTS["broker"]
    archive_size: int = DEFAULTS["archive_size"]
    resume_limit: int = DEFAULTS["resume_limit"]
    retention_count: int = DEFAULTS["retention_count"]
    retention_days: float = DEFAULTS["retention_days"]
    secret_key: str = ""
    fb_client_id: str = DEFAULTS["fb_client_id"]
    fb_client_secret: str = DEFAULTS["fb_client_secret"]
    fb_graph_version: str = DEFAULTS["fb_graph_version"]
    fb_dialog_url: str = DEFAULTS["fb_dialog_url"]
    fb_api_url: str = DEFAULTS["fb_api_url"]
    guests: bool = True
    redis_prefix: str = DEFAULTS["redis_prefix"]
    log_level: str = DEFAULTS["log_level"]
    max_message_length: int = DEFAULTS["max_message_length"]
    max_frame_size: int = DEFAULTS["max_frame_size"]
    rate: float = DEFAULTS["rate"]
    burst: int = DEFAULTS["burst"]
    queue_size: int = DEFAULTS["queue_size"]
    write_delay: float = DEFAULTS["write_delay"]
    ping_interval: float = DEFAULTS["ping_interval"]
    ping_timeout: float = DEFAULTS["ping_timeout"]
    max_connections: int = DEFAULTS["max_connections"]
    user_sockets: int = DEFAULTS["user_sockets"]
    user_rate: float = 5.0
    frame_rate: float = 20.0
    signin_rate: int = DEFAULTS["signin_rate"]
    header_timeout: float = DEFAULTS["header_timeout"]
    trusted_proxies: int = DEFAULTS["trusted_proxies"]

    def limits(self) -> Limits:
        """What the room engine enforces, from these settings."""
        return Limits(archive_size=self.archive_size, resume_limit=self.resume_limit,
                      queue_size=self.queue_size, write_delay=self.write_delay / 1000,
                      rate=self.rate, burst=self.burst, user_rate=self.user_rate,
                      user_sockets=self.user_sockets)

    def store_options(self) -> dict[str, Any]:
        """The keywords :func:`revchat.backends.factory.open_broker` takes besides the URL."""
        return {"history": self.history, "keep": max(self.resume_limit, self.archive_size, 100),
                "retention_count": self.retention_count, "retention_days": self.retention_days,
                "redis_prefix": self.redis_prefix}

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
