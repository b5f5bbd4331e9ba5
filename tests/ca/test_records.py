"""CertRecord.state (ca/records.py): the one state name every view shows, the first that holds of
on hold, revoked, expired, retired, valid (RFC 5280 §5.3.1 certificateHold; §4.1.2.5 notAfter)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ca.records import CertRecord, CertState

NOW = 1_800_000_000.0


def record(**facts: Any) -> CertRecord:
    """A certificate row with only the facts the state depends on (the rest is not read)."""
    row: dict[str, Any] = {f.name: None for f in dataclasses.fields(CertRecord)}
    row.update(not_after=NOW + 86400)
    row.update(facts)
    return CertRecord(**row)


@pytest.mark.parametrize(("facts", "state"), [
    ({}, CertState.VALID),
    ({"revoked_at": NOW - 60, "revocation_reason": "certificate_hold"}, CertState.ON_HOLD),
    ({"revoked_at": NOW - 60, "revocation_reason": "key_compromise"}, CertState.REVOKED),
    ({"revoked_at": NOW - 60, "revocation_reason": None}, CertState.REVOKED),
    ({"not_after": NOW - 1}, CertState.EXPIRED),
    ({"retired_at": NOW - 60}, CertState.RETIRED),
    ({"not_after": None}, CertState.VALID),
], ids=["valid", "on-hold", "revoked", "revoked-unspecified", "expired", "retired", "no-not-after"])
def test_each_state(facts: dict[str, Any], state: CertState) -> None:
    assert record(**facts).state(NOW) is state


def test_expiry_boundary() -> None:
    """A second before notAfter the certificate is valid; a moment after it, expired."""
    assert record(not_after=NOW + 1).state(NOW) is CertState.VALID
    assert record(not_after=NOW - 0.5).state(NOW) is CertState.EXPIRED
    assert record(not_after=NOW - 1).state(NOW) is CertState.EXPIRED


def test_the_not_after_second_itself_is_still_valid() -> None:
    """RFC 5280 §4.1.2.5: "from notBefore through notAfter, inclusive"."""
    assert record(not_after=NOW).state(NOW) is CertState.VALID


@pytest.mark.parametrize(("facts", "state"), [
    ({"revoked_at": NOW - 60, "revocation_reason": "certificate_hold", "not_after": NOW - 1,
      "retired_at": NOW - 30}, CertState.ON_HOLD),
    ({"revoked_at": NOW - 60, "revocation_reason": "cessation_of_operation", "not_after": NOW - 1,
      "retired_at": NOW - 30}, CertState.REVOKED),
    ({"not_after": NOW - 1, "retired_at": NOW - 30}, CertState.EXPIRED),
], ids=["hold-wins", "revoked-beats-expired-and-retired", "expired-beats-retired"])
def test_the_first_state_that_holds_wins(facts: dict[str, Any], state: CertState) -> None:
    assert record(**facts).state(NOW) is state


def test_hold_is_a_revocation_that_may_be_released() -> None:
    held = record(revoked_at=NOW - 60, revocation_reason="certificate_hold")
    assert held.on_hold and held.revoked
    gone = record(revoked_at=NOW - 60, revocation_reason="superseded")
    assert gone.revoked and not gone.on_hold
    assert not record().revoked and not record().retired


def test_state_without_a_time_uses_the_clock() -> None:
    assert record(not_after=1.0).state() is CertState.EXPIRED
    assert record(not_after=4_000_000_000.0).state() is CertState.VALID
