"""The errors the core raises to the web layer."""

from __future__ import annotations


class BrokerUnavailable(Exception):
    """Events cannot be published right now (store or broker down); one line says why."""
