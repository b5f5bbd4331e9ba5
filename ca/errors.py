"""Errors of the issuance core.

One root, :class:`CAError`. Each subclass carries a protocol-neutral :class:`RejectReason`
that EST maps to an HTTP status and SCEP to a ``failInfo``; only the ``http.py`` modules turn
errors into responses.
"""

from __future__ import annotations

import enum


class RejectReason(enum.Enum):
    """Why a request was refused, in terms both protocols can express.

    EST (RFC 7030 §4.2.3) turns these into 4xx statuses; SCEP (RFC 8894 §3.2.1.4.5) into a
    ``failInfo`` value.
    """

    BAD_REQUEST = "badRequest"  # malformed or not allowed by protocol (EST 400, SCEP badRequest)
    BAD_ALG = "badAlg"  # algorithm or key not allowed (EST 400, SCEP badAlg)
    BAD_MESSAGE_CHECK = "badMessageCheck"  # signature/PoP failed (EST 400, SCEP badMessageCheck)
    BAD_CERT_ID = "badCertId"  # no certificate matches (EST 404, SCEP badCertId)
    NOT_AUTHORIZED = "notAuthorized"  # authenticated but not allowed (EST 403, SCEP badRequest)
    UNAUTHENTICATED = "unauthenticated"  # credentials missing or wrong (EST 401, SCEP badRequest)
    POLICY = "policy"  # the profile forbids what was asked (EST 403, SCEP badRequest)
    REJECTED = "rejected"  # an operator rejected a pending request (EST 403, SCEP badRequest)
    UNAVAILABLE = "unavailable"  # storage or backend down (EST 503, SCEP badRequest)
    THROTTLED = "throttled"  # too many failed attempts: wait (EST 429 + Retry-After, SCEP badRequest)


class CAError(Exception):
    """Root of the issuance core's errors; ``reason`` says what the protocols should answer."""

    reason: RejectReason = RejectReason.BAD_REQUEST

    def __init__(self, detail: str, *, reason: RejectReason | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if reason is not None:
            self.reason = reason


class ParseError(CAError):
    """Untrusted bytes did not parse (the parse gate, docs/ARCHITECTURE.md issuance contract step 1)."""

    reason = RejectReason.BAD_REQUEST


class AuthenticationError(CAError):
    """Credentials were missing or wrong."""

    reason = RejectReason.UNAUTHENTICATED


class ThrottledError(CAError):
    """Too many failed attempts from this client or for this identity (ca/ratelimit.py)."""

    reason = RejectReason.THROTTLED

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class AuthorizationError(CAError):
    """The requester is known but not allowed to do this."""

    reason = RejectReason.NOT_AUTHORIZED


class PopError(CAError):
    """Proof of possession failed: the CSR or CMS signature does not verify."""

    reason = RejectReason.BAD_MESSAGE_CHECK


class PolicyError(CAError):
    """The profile forbids the request (key type, names, extensions)."""

    reason = RejectReason.POLICY


class AlgorithmError(CAError):
    """A key type, size, curve or digest the profile does not allow."""

    reason = RejectReason.BAD_ALG


class NotFoundError(CAError):
    """No certificate, request or profile matches."""

    reason = RejectReason.BAD_CERT_ID


class LedgerError(CAError):
    """The ledger could not record or read; nothing was issued."""

    reason = RejectReason.UNAVAILABLE


class ConfigError(Exception):
    """Configuration is invalid; the message names the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem
