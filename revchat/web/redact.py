"""Nothing secret in a log line: URLs lose their query strings (an OAuth ``code`` and ``state``,
a ``?since=``) in every record Sanic writes, whatever made it write one; and nothing a visitor
can make Sanic log at will fills the log with tracebacks."""

from __future__ import annotations

import logging
import re

SANIC_LOGGERS = ("sanic.root", "sanic.error", "sanic.access", "sanic.server", "sanic.websockets")
_QUERY = re.compile(r"(https?://[^\s'\"?#]*|\s/[^\s'\"?#]*)\?[^\s'\"#]*")


def redact(text: str) -> str:
    """``text`` with the query string of every URL replaced by ``?…``."""
    return _QUERY.sub(r"\1?…", text)


class RedactQueries(logging.Filter):
    """Rewrites a record's message without the query strings of the URLs in it, and drops what
    any visitor could make Sanic write at ERROR with a traceback: a static file not found (a
    404, which names the install path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name == "sanic.error" and message.startswith("File not found"):
            return False
        if "?" in message:
            record.msg, record.args = redact(message), ()
        return True


def install() -> None:
    """Add the filter to Sanic's loggers (once, however many apps a process makes)."""
    for name in SANIC_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueries) for f in logger.filters):
            logger.addFilter(RedactQueries())
