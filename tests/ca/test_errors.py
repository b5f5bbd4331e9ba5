"""ca/errors.py: every core refusal carries the protocol-neutral reason EST and SCEP answer with
(docs/ARCHITECTURE.md, conventions 5), with the detail for the audit trail."""

from __future__ import annotations

import pytest

from ca.errors import (
    AlgorithmError,
    AuthenticationError,
    AuthorizationError,
    CAError,
    LedgerError,
    NotFoundError,
    ParseError,
    PolicyError,
    PopError,
    RejectReason,
    ThrottledError,
)


@pytest.mark.parametrize(("error", "reason"), [
    (CAError, RejectReason.BAD_REQUEST),
    (ParseError, RejectReason.BAD_REQUEST),
    (AuthenticationError, RejectReason.UNAUTHENTICATED),
    (AuthorizationError, RejectReason.NOT_AUTHORIZED),
    (PopError, RejectReason.BAD_MESSAGE_CHECK),
    (PolicyError, RejectReason.POLICY),
    (AlgorithmError, RejectReason.BAD_ALG),
    (NotFoundError, RejectReason.BAD_CERT_ID),
    (LedgerError, RejectReason.UNAVAILABLE),
])
def test_each_error_carries_its_reason_and_detail(error: type[CAError], reason: RejectReason) -> None:
    exc = error("what happened")
    assert exc.reason is reason and exc.detail == "what happened" and str(exc) == "what happened"
    assert isinstance(exc, CAError)


def test_a_reason_given_at_the_raise_wins_over_the_class_default() -> None:
    exc = PolicyError("transactionID reused with another key", reason=RejectReason.BAD_REQUEST)
    assert exc.reason is RejectReason.BAD_REQUEST
    assert PolicyError("x").reason is RejectReason.POLICY  # the class default is untouched


def test_throttled_says_when_to_retry() -> None:
    exc = ThrottledError("too many failures", retry_after=17)
    assert exc.reason is RejectReason.THROTTLED and exc.retry_after == 17

