"""The files revchat keeps (data dir, secret key, database) are private to the user running it:
directories 0700, files 0600, including ones an older release created more openly."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("revchat")

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) if needed; make it 0700 if it is ours and more open.

    Raises ``OSError`` when it cannot be created.
    """
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _tighten(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Create ``path`` empty (0600) if it does not exist; make it 0600 if it is ours and more
    open. Raises ``OSError`` when it cannot be created."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    os.close(fd)
    _tighten(path, FILE_MODE)


def _tighten(path: Path, mode: int) -> None:
    try:
        info = path.stat()
    except OSError:
        return
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077 == 0:
        return
    try:
        os.chmod(path, mode)
    except OSError as exc:
        log.warning("revchat: %s is readable by others and cannot be made private: %s",
                    path, exc.strerror)
    else:
        log.info("revchat: made %s private (%o)", path, mode)
