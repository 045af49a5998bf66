"""Errors nothing foresaw: counted for ``/metrics`` and logged, with a traceback only the first
time each kind is seen, so a flood of one bug is one traceback and one line per occurrence."""

from __future__ import annotations

import logging

from revchat.core.errors import one_line


class Faults:
    """One worker's tally of unexpected errors."""

    def __init__(self, log: logging.Logger) -> None:
        self.count = 0
        self._log = log
        self._seen: set[str] = set()

    def record(self, what: str, exc: BaseException) -> None:
        """Count ``exc``, which happened while doing ``what``, and log it."""
        self.count += 1
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        first = kind not in self._seen
        self._seen.add(kind)
        self._log.error("unexpected error %s: %s: %s", what, kind, one_line(exc),
                        exc_info=exc if first else None)
