"""The root of revchat's own errors, and its two branches.

Every error the core raises is a :class:`RevchatError`. :class:`Unavailable` is the server's side
(a store or broker cannot be used now; the client may retry: close code 4503, ``/healthz`` 503),
:class:`Refused` the client's (what it asked for is not allowed: an error frame or a close code
from :mod:`revchat.core.codes`). The concrete classes live beside the code that raises them.
"""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """An exception as one short line for a log or an answer (messages from stores can carry
    newlines, and a client's input: a line is at most 300 characters)."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__


class RevchatError(Exception):
    """Something revchat itself detected; the message is one line a user may read."""


class Unavailable(RevchatError):
    """A store or broker cannot be used right now; nothing was done, and a retry may work."""


class Refused(RevchatError):
    """The client asked for something it may not have; the server is fine."""


class BrokerUnavailable(Unavailable):
    """Events cannot be published right now (store or broker down); one line says why."""


NEEDS_REDIS = "--broker redis:// needs the redis extra: pip install 'revchat[redis]'"
"""What to do when a Redis URL is given without the ``redis`` package installed."""
