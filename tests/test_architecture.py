"""The shape of the house: the core imports no Sanic, and modules stay small."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "revchat"
CORE = ["revchat.engine", "revchat.fanout", "revchat.quota", "revchat.codes", "revchat.room",
        "revchat.broker", "revchat.history", "revchat.events", "revchat.protocol",
        "revchat.sessions", "revchat.config", "revchat.sqlite", "revchat.redis_broker",
        "revchat.redis_history", "revchat.redis_presence", "revchat.faults", "revchat.files",
        "revchat.commit", "revchat.errors"]


@pytest.mark.parametrize("module", CORE)
def test_core_imports_no_sanic(module: str) -> None:
    """The engine, broker, history and event types load without Sanic being imported."""
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'sanic', 'sanic_ext', 'sanic_routing'}); print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == ""


def test_no_module_is_huge() -> None:
    """One concept per module: none over ~400 lines."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 420} == {}
