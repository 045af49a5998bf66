"""The README stays true: its settings table is the one the settings declare."""

from __future__ import annotations

from pathlib import Path

from revchat.config import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_settings_table_matches_the_declarations() -> None:
    """Between the settings markers the README holds exactly the generated table."""
    text = README.read_text()
    start = text.index("<!-- settings -->") + len("<!-- settings -->")
    end = text.index("<!-- /settings -->")
    assert text[start:end].strip() == markdown_table(), (
        "README settings table is stale: paste the output of "
        "`python -c 'from revchat.config import markdown_table; print(markdown_table())'`"
    )


def test_readme_names_the_two_commands() -> None:
    """The README gives the install-and-serve command and the test command."""
    text = README.read_text()
    assert "pip install . && .venv/bin/revchat serve" in text
    assert "scripts/test" in text
