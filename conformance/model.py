"""The vocabulary of the suite: requirements, verdicts, results and the check registry.

A *check* is one RFC requirement judged on the wire. It passes (returns a short detail), fails
(raises :class:`Fail` with evidence: status, headers, the offending bytes), is skipped (raises
:class:`Skip` saying why: the server does not offer it, or no credentials were given) or warns
(raises :class:`Interop`: the RFC allows what the server does, but a named deployed client breaks
on it, and the other choice breaks another client).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


class Level(str, enum.Enum):
    """How strong the requirement is. INTEROP: not RFC text, but what deployed clients need
    (each such check names the client that breaks in its description)."""

    MUST = "MUST"
    SHOULD = "SHOULD"
    MAY = "MAY"
    INTEROP = "INTEROP"


class Verdict(str, enum.Enum):
    """The outcome of one check."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    INTEROP = "interop"  # allowed by the RFCs, but a named client breaks on it: a warning, not a failure


@dataclass(frozen=True)
class Requirement:
    """Where the requirement is written: ``RFC 8894 §3.2.1.5 MUST``."""

    rfc: str
    section: str
    level: Level
    text: str

    def cite(self) -> str:
        sec = f" §{self.section}" if self.section else ""
        return f"{self.rfc}{sec} {self.level.value}"


class Fail(Exception):
    """The server does not meet the requirement; ``evidence`` shows the bytes that prove it."""

    def __init__(self, detail: str, evidence: list[str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.evidence = list(evidence or [])


class Interop(Exception):
    """The server's choice is allowed, but ``breaks`` (deployed clients, with version) cannot read
    it, while ``works`` can: an integrator's warning, never a failure."""

    def __init__(self, detail: str, *, breaks: list[str], works: list[str] | None = None,
                 evidence: list[str] | None = None) -> None:
        super().__init__(detail)
        self.breaks = list(breaks)
        self.works = list(works or [])
        self.detail = detail + " -- breaks " + ", ".join(self.breaks) + (
            "; fine for " + ", ".join(self.works) if self.works else "")
        self.evidence = list(evidence or [])


class Skip(Exception):
    """The check could not be judged: not offered by the server, or no credentials given."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Result:
    """One judged check."""

    id: str
    title: str
    requirement: Requirement
    verdict: Verdict
    detail: str
    evidence: list[str] = field(default_factory=list)
    duration_ms: int = 0
    breaks: list[str] = field(default_factory=list)  # INTEROP: the clients that cannot read the reply
    works: list[str] = field(default_factory=list)  # INTEROP: the clients that can

    def as_dict(self) -> dict[str, Any]:
        out = {
            "id": self.id, "title": self.title, "verdict": self.verdict.value,
            "rfc": self.requirement.rfc, "section": self.requirement.section,
            "level": self.requirement.level.value, "requirement": self.requirement.text,
            "detail": self.detail, "evidence": self.evidence, "duration_ms": self.duration_ms,
        }
        if self.verdict is Verdict.INTEROP:
            out |= {"breaks": self.breaks, "works": self.works}
        return out


CheckFn = Callable[[Any], Awaitable[str | None]]


@dataclass(frozen=True)
class Check:
    """A registered check: its id, what it asserts and where that is required."""

    id: str
    title: str
    requirement: Requirement
    fn: CheckFn


class Suite:
    """An ordered list of checks for one protocol (or one group of them), filled by the
    :meth:`check` decorator."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.checks: list[Check] = []

    def check(self, id: str, title: str, rfc: str, section: str, level: Level | str,
              text: str) -> Callable[[CheckFn], CheckFn]:
        """Register ``fn`` as the check ``id`` for requirement ``rfc section level: text``."""
        req = Requirement(rfc, section, Level(level), text)

        def deco(fn: CheckFn) -> CheckFn:
            if any(c.id == id for c in self.checks):
                raise ValueError(f"duplicate check id {id}")
            self.checks.append(Check(id, title, req, fn))
            return fn

        return deco

    @classmethod
    def of(cls, name: str, *groups: Suite) -> Suite:
        """One suite from check groups (one module each, by RFC section), in the given order."""
        whole = cls(name)
        for group in groups:
            for chk in group.checks:
                if any(c.id == chk.id for c in whole.checks):
                    raise ValueError(f"duplicate check id {chk.id}")
                whole.checks.append(chk)
        return whole
