"""The README stays true: its settings table is the one the settings declare, and its benchmark
figures are the ones the results files hold."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from revchat.settings.options import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
BENCHMARKS = README.parent / "benchmarks"


def test_readme_settings_table_matches_the_declarations() -> None:
    """Between the settings markers the README holds exactly the generated table."""
    text = README.read_text()
    start = text.index("<!-- settings -->") + len("<!-- settings -->")
    end = text.index("<!-- /settings -->")
    assert text[start:end].strip() == markdown_table(), (
        "README settings table is stale: paste the output of "
        "`python -c 'from revchat.settings.config import markdown_table; print(markdown_table())'`"
    )


def test_readme_names_the_two_commands() -> None:
    """The README gives the install-and-serve command and the test command."""
    text = README.read_text()
    assert "pip install . && .venv/bin/revchat serve" in text
    assert "scripts/test" in text


def load_report() -> ModuleType:
    """benchmarks/report.py, which is a script, not a package module."""
    spec = importlib.util.spec_from_file_location("report", BENCHMARKS / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_tables_match_their_results() -> None:
    """Every figure in README.md's and benchmarks/README.md's tables is what the results files
    say, and each file was measured on a clean tree with at least three tries."""
    report = load_report()
    assert report.stale() == [], "run .venv/bin/python benchmarks/report.py"


def test_report_refuses_a_dirty_or_single_try_result(tmp_path: Path) -> None:
    """A results file measured on a tree with changes, or with fewer than three tries, is
    refused rather than quoted."""
    report = load_report()
    for name in ("fanout", "idle", "joinstorm", "history", "broker"):
        data = json.loads((BENCHMARKS / "results" / f"{name}.json").read_text())
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    report.readme_table(tmp_path)  # as committed: fine
    data = json.loads((tmp_path / "idle.json").read_text())
    for change in ({"tries": 1}, {"machine": {**data["machine"], "git": {"commit": "x", "dirty": True}}}):
        (tmp_path / "idle.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(report.ReportError):
            report.readme_table(tmp_path)
