"""docs/ARCHITECTURE.md convention 9: the packages are typed, checked with mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_packages_pass_mypy_strict() -> None:
    res = subprocess.run([sys.executable, "-m", "mypy", "ca", "est", "scep", "enroll", "conformance"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
