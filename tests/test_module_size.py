"""Modules are one thing each (docs/ARCHITECTURE.md, "Layers"): a module of the product over
~450 lines is either split along its seams or says, in a docstring sentence starting
``One cohesive thing:``, why it is one thing."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ca", "est", "scep", "enroll", "conformance")
LIMIT = 450


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_long_module_is_split_or_says_why_it_is_one_thing() -> None:
    offenders = []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines <= LIMIT:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "One cohesive thing:" not in doc:
            offenders.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not offenders, "split these, or say in the module docstring 'One cohesive thing: ...': " + ", ".join(
        offenders)


def test_the_rule_sees_the_product() -> None:
    assert len(_modules()) > 50
