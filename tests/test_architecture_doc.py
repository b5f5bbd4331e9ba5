"""docs/ARCHITECTURE.md's clause table leads to code in one hop: every module it names exists and
every function, class or constant it names is defined there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def _rows() -> list[tuple[str, str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("RFC "):
            rows.append((cells[0], cells[2]))
    return rows


def test_the_clause_table_is_there() -> None:
    clauses = {c for c, _ in _rows()}
    assert {"RFC 7030 §4.2.1", "RFC 8894 §3.3.1", "RFC 5280 §6.1"} <= clauses


def test_every_reference_in_the_clause_table_exists() -> None:
    for clause, code in _rows():
        for ref in re.findall(r"`([^`]+)`", code):
            path, _, names = ref.partition(" ")
            source = ROOT / path
            assert source.is_file(), f"{clause}: {path} does not exist"
            text = source.read_text()
            for name in filter(None, re.split(r"[/, ]+", names)):
                name = name.rsplit(".", 1)[-1]  # Class.method: the method
                defined = re.search(rf"^\s*(async def|def|class) {re.escape(name)}\b|^{re.escape(name)}\s*[:=]",
                                    text, re.M)
                assert defined, f"{clause}: {path} defines no {name}"
