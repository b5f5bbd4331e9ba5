"""The interop gate: a missing peer skips a test on a developer machine and fails it under CI
(ENROLL_REQUIRE_INTEROP=1, set by .ci/run), so CI can never pass by skipping."""

from __future__ import annotations

import sys

import pytest

from tests.support import missing_peer, require_tool

ABSENT = "enroll-no-such-tool-7f3a"


def test_missing_tool_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENROLL_REQUIRE_INTEROP", raising=False)
    with pytest.raises(pytest.skip.Exception, match=ABSENT):
        require_tool(ABSENT)


def test_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENROLL_REQUIRE_INTEROP", "1")
    with pytest.raises(pytest.fail.Exception, match=f"{ABSENT} is required"):
        require_tool(ABSENT)
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL"):
        missing_peer("PostgreSQL")


def test_present_tool_is_found_by_name_and_by_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENROLL_REQUIRE_INTEROP", "1")
    assert require_tool(sys.executable) == sys.executable
    assert require_tool("sh").endswith("/sh")
