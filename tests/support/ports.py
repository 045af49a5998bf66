"""Loopback ports for the servers the tests start: one picker for all of them."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A loopback port nobody uses right now, below Linux's ephemeral range (32768-60999): no
    outgoing connection takes it as its local port while a killed server waits to restart on it."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port in 20000-32000")


def free_socket(port: int = 0) -> socket.socket:
    """A listening loopback socket on ``port`` (0: a free one, see :func:`free_port`), reusable
    right after a stop, and inheritable by a server's worker."""
    for _ in range(50):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port or free_port()))
        except OSError:
            sock.close()
            if port:
                raise
            continue
        sock.listen(1024)
        sock.set_inheritable(True)
        return sock
    raise RuntimeError("no free loopback port")
