"""revchat: a self-hosted real-time chat-room server."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("revchat")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
