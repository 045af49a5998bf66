"""The shape of the house: the layers (import-linter's contracts in pyproject.toml, run by
scripts/test, check every import statically), the core loading without Sanic, small modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "revchat"
LOWER = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    for layer in ("core", "backends", "settings") for path in (PACKAGE / layer).glob("*.py")
    if path.name != "__init__.py"
)
LAYERS = {"core", "backends", "settings", "web", "cli"}


@pytest.mark.parametrize("module", LOWER)
def test_lower_layers_load_without_sanic(module: str) -> None:
    """Each module of the core, the backends and the settings loads without Sanic being imported
    (the import-linter contracts check the imports written; this checks what loading does)."""
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'sanic', 'sanic_ext', 'sanic_routing'}); print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == ""


def test_every_module_is_in_a_layer() -> None:
    """A folder is a layer: no module sits at the top of the package but the entry points."""
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == {"__init__.py", "__main__.py"}, top
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == LAYERS, folders


def test_no_module_is_huge() -> None:
    """One noun per module: none over ~300 lines."""
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 320} == {}


def test_the_architecture_page_names_every_module() -> None:
    """docs/architecture.md stays a map of the code: every module of every layer is named there
    (as `file.py` or `layer/file.py`), so a new module comes with its line on the page."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = [f"{layer}/{path.name}" for layer in sorted(LAYERS)
               for path in sorted((PACKAGE / layer).glob("*.py")) if path.name != "__init__.py"
               and f"`{path.name}`" not in page and f"`{layer}/{path.name}`" not in page
               and f"{path.name}`" not in page]
    assert missing == [], f"docs/architecture.md does not name {missing}"
