"""CLAUSES.md as data: every RFC 7030/8951/8894 requirement keyword with the checks that judge it
(or why none can), and its rendering with the verdicts of a run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from conformance.model import Result

CLAUSES_PATH = Path(__file__).with_name("CLAUSES.md")
HEADER = ("RFC", "§", "keyword", "requirement", 'check id or "—"', "why not")
_CHECK_ID = re.compile(r"`([a-z0-9][a-z0-9.\-]*)`")


@dataclass(frozen=True)
class Clause:
    """One row of CLAUSES.md: a requirement sentence and the checks that cover it."""

    rfc: str
    section: str
    keyword: str
    requirement: str
    checks: tuple[str, ...]
    why_not: str

    @property
    def protocol(self) -> str:
        """The protocol the row belongs to: scep for RFC 8894, est for RFC 7030 and RFC 8951."""
        return "scep" if self.rfc == "RFC 8894" else "est"


def _cells(line: str) -> list[str]:
    inner = line.strip()[1:-1]
    parts = re.split(r"(?<!\\)\|", inner)
    return [p.strip().replace("\\|", "|") for p in parts]


def parse(text: str) -> list[Clause]:
    """The rows of every table in ``text`` whose header is :data:`HEADER`."""
    out: list[Clause] = []
    in_table = False
    for line in text.splitlines():
        if not line.strip().startswith("|"):
            in_table = False
            continue
        cells = _cells(line)
        if tuple(cells) == HEADER:
            in_table = True
            continue
        if not in_table or set("".join(cells)) <= set("-: "):
            continue
        if len(cells) != len(HEADER):
            raise ValueError(f"CLAUSES.md row with {len(cells)} cells: {line}")
        rfc, section, keyword, requirement, checks, why = cells
        out.append(Clause(rfc, section, keyword, requirement, tuple(_CHECK_ID.findall(checks)), why))
    return out


def load(path: Path = CLAUSES_PATH) -> list[Clause]:
    return parse(path.read_text(encoding="utf-8"))


def render(clauses: list[Clause], results: list[Result] | None = None, protocol: str | None = None) -> str:
    """The table for a terminal: one block per requirement; with ``results`` each covering check
    carries its verdict (checks not run show "not run")."""
    verdicts = {r.id: r.verdict.value for r in results or []}
    rows = [c for c in clauses if protocol is None or c.protocol == protocol]
    lines = []
    for c in rows:
        lines.append(f"{c.rfc} §{c.section} {c.keyword}: {c.requirement}")
        if c.checks:
            for cid in c.checks:
                mark = f": {verdicts.get(cid, 'not run')}" if results is not None else ""
                lines.append(f"    {cid}{mark}")
            if c.why_not:
                lines.append(f"    ({c.why_not})")
        else:
            lines.append(f"    — {c.why_not}")
    covered = sum(1 for c in rows if c.checks)
    lines.append("")
    lines.append(f"{len(rows)} requirements, {covered} judged by a check, {len(rows) - covered} not (reason given)")
    if results is not None:
        judged = [c for c in rows if c.checks]
        failing = [c for c in judged if any(verdicts.get(i) == "fail" for i in c.checks)]
        lines.append(f"{len(failing)} requirement(s) with a failing check")
    return "\n".join(lines)
