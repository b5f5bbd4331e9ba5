"""The ledger's records: typed rows of certificates, pending requests, devices, credentials and
audit entries, and the one state name every view uses (:class:`CertState`)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ca.api import AuthMethod


@dataclass(frozen=True)
class CredentialRecord:
    """One enrollment credential as stored (never its secret)."""

    id: str
    profile: str
    bind: str
    device: str
    uses: int
    uses_left: int
    created_at: float
    expires_at: float
    created_by: str | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        """Not revoked, not expired, a use left."""
        return self.revoked_at is None and self.uses_left > 0 and self.expires_at > now


def credential_record(row: sa.Row[Any]) -> CredentialRecord:
    m = dict(row._mapping)
    m.pop("digest", None)
    return CredentialRecord(**m)


class RowStatus(enum.StrEnum):
    """Where a ``certificates`` row is in issuance: a serial is reserved before signing and the row
    becomes issued in the commit that stores the certificate (docs/ARCHITECTURE.md, "The unit of
    work"); a reservation never signed with is abandoned, its serial never reused."""

    RESERVED = "reserved"
    ISSUED = "issued"
    ABANDONED = "abandoned"


class PendingStatus(enum.StrEnum):
    """Where a request held for manual approval is (RFC 7030 §4.2.3 202, RFC 8894 §3.3.2 PENDING):
    an operator approves or rejects it; one caller then moves it from approved to issuing, and the
    issuance commit to issued."""

    PENDING = "pending"
    APPROVED = "approved"
    ISSUING = "issuing"
    ISSUED = "issued"
    REJECTED = "rejected"


@dataclass(frozen=True)
class StoredRequester:
    """Who a ledger row was issued to or held for, as columns (never a ``method:principal`` string
    parsed back): how it authenticated, who it was, and the evidence (the SHA-256 of the
    certificate that authenticated it, when one did). ``method`` is None only on a pending row an
    older version wrote with a method this one does not know: it is authenticated again."""

    method: AuthMethod | None
    principal: str
    evidence: str | None = None

    def describe(self) -> str:
        """``method:principal``, the audit trail's spelling (display only)."""
        return f"{self.method.value if self.method else 'unknown'}:{self.principal}"


def _auth_method(value: str | None) -> AuthMethod | None:
    try:
        return AuthMethod(value) if value is not None else None
    except ValueError:
        return None


class CertState(enum.StrEnum):
    """What an issued certificate is now, as every view names it."""

    VALID = "valid"
    ON_HOLD = "on_hold"
    REVOKED = "revoked"
    EXPIRED = "expired"
    RETIRED = "retired"


@dataclass(frozen=True)
class CertRecord:
    """One row of ``certificates``."""

    id: int
    issuer: str
    serial: int
    status: RowStatus
    profile: str
    channel: str
    requester: StoredRequester
    csr_sha256: str
    spki_sha256: str
    transaction_id: str | None
    renews_serial: int | None
    subject: str | None
    not_before: float | None
    not_after: float | None
    der: bytes | None
    created_at: float
    issued_at: float | None
    revoked_at: float | None
    revocation_reason: str | None
    retired_at: float | None
    device: str | None = None

    @property
    def on_hold(self) -> bool:
        """True while suspended with certificateHold (RFC 5280 §5.3.1): it may be released."""
        return self.revoked_at is not None and self.revocation_reason == "certificate_hold"

    def state(self, now: float | None = None) -> CertState:
        """The one state name the CLI, the admin API and the page show (the first that holds:
        on hold, revoked, expired, retired, valid)."""
        if self.on_hold:
            return CertState.ON_HOLD
        if self.revoked:
            return CertState.REVOKED
        if self.not_after is not None and self.not_after < (time.time() if now is None else now):
            return CertState.EXPIRED
        return CertState.RETIRED if self.retired else CertState.VALID

    @property
    def revoked(self) -> bool:
        """True once revoked."""
        return self.revoked_at is not None

    @property
    def retired(self) -> bool:
        """True once the device was retired."""
        return self.retired_at is not None


@dataclass(frozen=True)
class PendingRecord:
    """One row of ``pending_requests``."""

    id: int
    profile: str
    channel: str
    requester: StoredRequester
    csr_der: bytes
    csr_sha256: str
    spki_sha256: str
    transaction_id: str | None
    subject: str | None
    status: PendingStatus
    created_at: float
    decided_at: float | None
    decided_by: str | None
    reason: str | None
    serial: int | None
    issuer: str | None
    renews_serial: int | None = None  # a held renewal: the serial of the certificate it renews


@dataclass(frozen=True)
class DeviceRecord:
    """One row of ``devices`` with counts over its certificates."""

    device: str
    profile: str
    subject: str
    sans: list[str]
    first_seen: float
    retired_at: float | None
    retired_by: str | None
    retire_reason: str | None
    certificates: int = 0
    active: int = 0  # issued, not revoked, not expired
    last_issued_at: float | None = None

    @property
    def retired(self) -> bool:
        """True once retired: its future enrollments and renewals are refused."""
        return self.retired_at is not None


@dataclass(frozen=True)
class CertificateQuery:
    """Filters for listing certificates (the CLI and the admin API share them)."""

    profile: str | None = None
    state: str | None = None  # valid | revoked | on_hold | retired | expired
    device: str | None = None
    text: str | None = None  # substring of the subject (case-insensitive)
    expiring_before: float | None = None  # not_after <= this (and not yet expired, not revoked)
    before_id: int | None = None  # keyset paging: rows with id < before_id
    limit: int = 100


@dataclass(frozen=True)
class AuditRecord:
    """One row of the append-only ``audit`` table."""

    id: int
    at: float
    event: str
    ok: bool
    channel: str | None
    profile: str | None
    requester: str | None
    reason: str | None
    csr_sha256: str | None
    serial: str | None
    detail: dict[str, Any] | None


def serial_hex(serial: int) -> str:
    """The ledger's spelling of a serial number."""
    return format(serial, "x")



def _requester(m: dict[str, Any]) -> StoredRequester:
    return StoredRequester(_auth_method(m.pop("auth_method")), m.pop("requester"), m.pop("requester_evidence"))


def cert_record(row: sa.Row[Any]) -> CertRecord:
    m = dict(row._mapping)
    m["requester"] = _requester(m)
    m["status"] = RowStatus(m["status"])
    m["serial"] = int(m["serial"], 16)
    m["renews_serial"] = int(m["renews_serial"], 16) if m["renews_serial"] else None
    return CertRecord(**m)


def pending_record(row: sa.Row[Any]) -> PendingRecord:
    m = dict(row._mapping)
    m["requester"] = _requester(m)
    m["status"] = PendingStatus(m["status"])
    m["serial"] = int(m["serial"], 16) if m["serial"] else None
    m["renews_serial"] = int(m["renews_serial"], 16) if m["renews_serial"] else None
    return PendingRecord(**m)


