"""Close and error codes are defined once (revchat/core/codes.py): the page's codes.js is generated
from them and docs/protocol.md lists each one."""

from __future__ import annotations

import re
from pathlib import Path

from revchat.core import codes

ROOT = Path(__file__).resolve().parent.parent
PAGE_CODES = ROOT / "revchat" / "web" / "static" / "js" / "codes.js"
PROTOCOL = ROOT / "docs" / "protocol.md"


def test_the_pages_codes_are_the_servers() -> None:
    """static/js/codes.js is exactly what codes.javascript() generates."""
    assert PAGE_CODES.read_text() == codes.javascript(), (
        "regenerate: python -c 'from revchat.core.codes import javascript; "
        "open(\"revchat/web/static/js/codes.js\", \"w\").write(javascript())'")


def test_each_close_code_has_one_meaning() -> None:
    """No two closes share a code, so a client can tell them apart by the code alone."""
    numbers = [close.code for close in codes.CLOSES]
    assert len(numbers) == len(set(numbers))
    assert all(close.advice in ("reconnect", "sign_in", "wait") for close in codes.CLOSES)


def test_protocol_doc_lists_every_close_and_error_code() -> None:
    """docs/protocol.md's close table has each code with its reason and advice, and its error
    table each error code."""
    text = PROTOCOL.read_text()
    for close in codes.CLOSES:
        row = re.search(rf"^\| {close.code} \| `([^`]*)` \| (\w+) \|", text, re.M)
        assert row is not None, f"{close.code} is not in docs/protocol.md"
        assert (row[1], row[2]) == (close.reason, close.advice)
    for code in codes.ERRORS:
        assert re.search(rf"^\| `{code}` \|", text, re.M), f"error {code} is not documented"
