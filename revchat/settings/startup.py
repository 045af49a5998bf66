"""Start-up checks and the files a server keeps: the secret key, the data dir, and everything
``revchat config check`` and ``revchat serve`` report before anything starts."""

from __future__ import annotations

import os
import secrets
from dataclasses import replace
from urllib.parse import urlsplit

from revchat.core.errors import NEEDS_REDIS
from revchat.core.files import FILE_MODE, private_dir, private_file
from revchat.settings.config import Settings, is_loopback
from revchat.settings.options import MIN_SECRET_KEY, SettingError

SECRET_KEY_FILE = "secret_key"


def ensure_secret_key(settings: Settings) -> Settings:
    """Return settings with a secret key: the configured one, or one kept in the data dir (0600).

    The key is generated on first use and reused afterwards, so sessions survive a restart.
    Raises :class:`SettingError` when the data dir cannot hold it.
    """
    if settings.secret_key:
        return settings
    path = settings.data_dir / SECRET_KEY_FILE
    try:
        private_dir(settings.data_dir)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            private_file(path)
            key = path.read_text().strip()
        else:
            key = secrets.token_urlsafe(48)
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
        if not key:
            raise SettingError(f"the secret key file {path} is empty; delete it to make a new one")
        if len(key) < MIN_SECRET_KEY:
            raise SettingError(f"the secret key in {path} is shorter than {MIN_SECRET_KEY} "
                               "characters; delete the file to make a new one")
    except OSError as exc:
        raise SettingError(f"cannot keep the secret key in {settings.data_dir}: {exc.strerror}") from None
    return replace(settings, secret_key=key)


def problems(settings: Settings) -> list[str]:
    """Everything wrong with a configuration, one line each (``config check`` and ``serve``)."""
    found: list[str] = []
    if settings.workers > 1 and settings.broker.startswith("memory:"):
        found.append(
            f"--workers {settings.workers} needs a shared broker: add --broker redis://HOST:PORT/DB "
            "(memory:// keeps rooms inside one process)"
        )
    if bool(settings.fb_client_id) != bool(settings.fb_client_secret):
        missing = "FB_CLIENT_SECRET" if settings.fb_client_id else "FB_CLIENT_ID"
        found.append(f"Facebook sign-in is half configured: {missing} is missing")
    parts = urlsplit(settings.public_url)
    if settings.facebook and parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        found.append(
            f"Facebook refuses the redirect URI {settings.public_url}/auth/facebook/callback: "
            "use an https:// --public-url (plain http is allowed only on localhost)"
        )
    if not settings.facebook and not settings.guests:
        found.append("nobody can sign in: guests are off and Facebook is not configured")
    if settings.broker.startswith(("redis:", "rediss:")):
        try:
            import redis  # noqa: F401
        except ImportError:
            found.append(NEEDS_REDIS)
    found.extend(_data_dir_problems(settings))
    return found


def uses_data_dir(settings: Settings) -> bool:
    """True when the data dir holds something: the generated secret key or the SQLite history."""
    return not settings.secret_key or settings.history.startswith("sqlite:")


def _data_dir_problems(settings: Settings) -> list[str]:
    if not uses_data_dir(settings):
        return []
    directory = settings.data_dir
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        return [f"the data dir {directory} is not writable"]
    return []
