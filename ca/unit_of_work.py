"""One unit of work per request: one read that gates signing, one write that commits it.

docs/ARCHITECTURE.md, "The unit of work". The issuer asks the ledger everything a decision needs
in one read transaction (:func:`read_gate`: a prior transaction or pending request, the device's
retirement, the authenticating certificate's record, a one-time challenge's validity, throttle
state, a nonce), signs, then commits in one write transaction (:func:`apply_issue`) that
re-asserts every fact it relied on: the nonce is inserted (a replay loses on the primary key),
the challenge is consumed only if still unused, the device is still not retired, no other
request issued under the same transaction meanwhile, and the serial's reservation is still held.
Any failed assertion rolls back that unit alone; its serial stays reserved and is later swept to
``abandoned`` (never reused).

Serials are reserved in blocks (:func:`reserve_block`, one committed transaction for many),
before any of them signs (issuance contract step 5).

The functions here take a *synchronous* SQLAlchemy connection, so the same statements serve
PostgreSQL (through ``AsyncConnection.run_sync``) and SQLite's group-commit writer thread.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ca.errors import AuthenticationError, AuthorizationError, CAError, LedgerError, RejectReason
from ca.records import PendingStatus, RowStatus
from ca.ledger import (
    CertRecord,
    CredentialRecord,
    PendingRecord,
    cert_record,
    credential_record,
    pending_record,
    audit_log,
    auth_failures,
    certificates,
    challenges,
    credentials,
    devices,
    nonces,
    pending,
    serial_hex,
)

#: Serial numbers: 159 random bits, at least 2^64 (RFC 5280 §4.1.2.2: positive, <= 20 octets).
SERIAL_BITS = 159
SERIAL_MIN = 2**64


def random_serial() -> int:
    """A positive serial from the CSPRNG with at least 64 bits of entropy."""
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial >= SERIAL_MIN:
            return serial


class Replay(CAError):
    """The nonce was seen before (RFC 8894 §3.2.1.5)."""

    reason = RejectReason.BAD_REQUEST


class LostRace(CAError):
    """Another request committed the same transaction first; answer with its certificate."""

    reason = RejectReason.BAD_REQUEST


@dataclass(frozen=True)
class GateQuery:
    """What one request needs to know before signing."""

    profile: str
    transaction_id: str | None = None
    pending_csr_sha256: str | None = None  # look a pending request up by CSR (EST re-POST)
    pending_lookup: bool = False
    device: str | None = None
    certificate: tuple[str, int] | None = None  # (CA name, serial) of the authenticating cert
    challenge_digest: str | None = None  # a one-time challenge of this profile
    throttle_keys: tuple[tuple[str, str], ...] = ()
    throttle_since: float = 0.0
    nonce: tuple[str, str] | None = None  # (scope, hex)
    credential_digest: str | None = None  # a one-time enrollment credential of this profile


@dataclass(frozen=True)
class GateFacts:
    """The answers of :func:`read_gate`, read in one transaction."""

    prior: CertRecord | None = None
    pending: PendingRecord | None = None
    device_retired: bool = False
    certificate: CertRecord | None = None
    challenge_valid: bool | None = None
    throttle: Mapping[tuple[str, str], tuple[int, float | None]] = field(default_factory=dict)
    nonce_seen: bool = False
    #: The credential of ``credential_digest`` when it is usable now on this profile, else None.
    credential: CredentialRecord | None = None


def _gate_statements() -> dict[str, sa.Select[Any]]:
    """The gate's statements, built once with bound parameters: a request pays for executing
    them, not for building and hashing them again."""
    b = sa.bindparam
    c, p, ch, f, n, k = certificates.c, pending.c, challenges.c, auth_failures.c, nonces.c, credentials.c
    return {
        "prior": sa.select(certificates).where(c.profile == b("profile"), c.transaction_id == b("txid"),
                                               c.status == RowStatus.ISSUED.value).order_by(c.id).limit(1),
        "pending_txid": sa.select(pending).where(p.profile == b("profile"), p.transaction_id == b("txid"))
        .order_by(p.id.desc()).limit(1),
        "pending_csr": sa.select(pending).where(p.profile == b("profile"), p.csr_sha256 == b("csr"))
        .order_by(p.id.desc()).limit(1),
        "device": sa.select(devices.c.retired_at).where(devices.c.device == b("device")),
        "certificate": sa.select(certificates).where(c.issuer == b("issuer"), c.serial == b("serial")),
        "challenge": sa.select(ch.id).where(ch.profile == b("profile"), ch.digest == b("digest"),
                                            ch.consumed_at.is_(None), ch.expires_at > b("now")),
        "throttle": sa.select(sa.func.count(), sa.func.max(f.at)).where(f.scope == b("scope"), f.key == b("key"),
                                                                         f.at >= b("since")),
        "nonce": sa.select(n.nonce).where(n.scope == b("scope"), n.nonce == b("nonce")),
        "credential": sa.select(credentials).where(k.digest == b("digest"), k.profile == b("profile"),
                                                   k.revoked_at.is_(None), k.uses_left > 0, k.expires_at > b("now")),
    }


_GATE = _gate_statements()


def read_gate(conn: sa.Connection, q: GateQuery, now: float) -> GateFacts:
    """Every fact a decision needs, from one read transaction."""
    prior = None
    if q.transaction_id is not None:
        row = conn.execute(_GATE["prior"], {"profile": q.profile, "txid": q.transaction_id}).first()
        prior = cert_record(row) if row is not None else None
    found_pending = None
    if q.pending_lookup:
        if q.transaction_id is not None:
            row = conn.execute(_GATE["pending_txid"], {"profile": q.profile, "txid": q.transaction_id}).first()
        else:
            row = conn.execute(_GATE["pending_csr"], {"profile": q.profile, "csr": q.pending_csr_sha256}).first()
        found_pending = pending_record(row) if row is not None else None
    retired = False
    if q.device is not None:
        row = conn.execute(_GATE["device"], {"device": q.device}).first()
        retired = row is not None and row[0] is not None
    cert = None
    if q.certificate is not None:
        row = conn.execute(_GATE["certificate"], {"issuer": q.certificate[0],
                                                  "serial": serial_hex(q.certificate[1])}).first()
        cert = cert_record(row) if row is not None else None
    challenge_valid = None
    if q.challenge_digest is not None:
        row = conn.execute(_GATE["challenge"], {"profile": q.profile, "digest": q.challenge_digest,
                                                "now": now}).first()
        challenge_valid = row is not None
    throttle: dict[tuple[str, str], tuple[int, float | None]] = {}
    for scope, key in q.throttle_keys:
        row = conn.execute(_GATE["throttle"], {"scope": scope, "key": key[:200], "since": q.throttle_since}).one()
        throttle[(scope, key)] = (int(row[0]), None if row[1] is None else float(row[1]))
    seen = False
    if q.nonce is not None:
        seen = conn.execute(_GATE["nonce"], {"scope": q.nonce[0], "nonce": q.nonce[1]}).first() is not None
    credential = None
    if q.credential_digest is not None:
        row = conn.execute(_GATE["credential"], {"digest": q.credential_digest, "profile": q.profile,
                                                 "now": now}).first()
        credential = credential_record(row) if row is not None else None
    return GateFacts(prior, found_pending, retired, cert, challenge_valid, throttle, seen, credential)


@dataclass(frozen=True)
class IssueCommit:
    """Everything one issuance writes, and every fact the write re-asserts."""

    row_id: int  # the reserved serial's row
    values: Mapping[str, Any]  # certificate columns: profile, channel, requester, der, ...
    audit: Mapping[str, Any]
    device: str | None = None
    device_profile: str | None = None
    sans: Sequence[str] = ()
    pending_id: int | None = None
    nonce: tuple[str, str] | None = None
    consume_challenge: tuple[str, str] | None = None  # (profile, digest)
    consume_credential: tuple[str, str] | None = None  # (profile, digest): one use
    refuse_retired: bool = True
    unique_transaction: bool = True


def audit_values(*, event: str, ok: bool, channel: str | None, profile: str | None, requester: str | None,
                 reason: str, csr_sha256: str | None, serial: int | None,
                 detail: Mapping[str, Any] | None, at: float | None = None) -> dict[str, Any]:
    """One audit row's column values."""
    return dict(at=at or time.time(), event=event, ok=ok, channel=channel, profile=profile, requester=requester,
                reason=reason, csr_sha256=csr_sha256, serial=serial_hex(serial) if serial is not None else None,
                detail=json.dumps(dict(detail), sort_keys=True) if detail else None)


def _commit_statements() -> dict[str, Any]:
    """The write's statements, built once (see :func:`_gate_statements`). The certificate UPDATE
    takes its SET columns from the parameters it is executed with."""
    b = sa.bindparam
    c, ch, k, n, d = certificates.c, challenges.c, credentials.c, nonces.c, devices.c
    return {
        "nonce_seen": sa.select(n.nonce).where(n.scope == b("scope"), n.nonce == b("nonce")),
        "nonce_insert": nonces.insert(),
        "consume_challenge": challenges.update().where(
            ch.profile == b("c_profile"), ch.digest == b("c_digest"), ch.consumed_at.is_(None),
            ch.expires_at > b("now")).values(consumed_at=b("at")),
        "consume_credential": credentials.update().where(
            k.profile == b("c_profile"), k.digest == b("c_digest"), k.revoked_at.is_(None), k.uses_left > 0,
            k.expires_at > b("now")).values(uses_left=k.uses_left - 1, last_used_at=b("at")),
        "device_retired": sa.select(d.retired_at).where(d.device == b("c_device")),
        "transaction_won": sa.select(c.id).where(c.profile == b("c_profile"), c.transaction_id == b("txid"),
                                                 c.status == RowStatus.ISSUED.value).limit(1),
        "issue": certificates.update().where(c.id == b("row_id"), c.status == RowStatus.RESERVED.value),
        "device_insert": devices.insert(),
        "audit_insert": audit_log.insert(),
    }


_COMMIT = _commit_statements()


def apply_issue(conn: sa.Connection, u: IssueCommit, now: float) -> None:
    """The one write of an issuance (run inside a transaction or savepoint).

    Raises :class:`Replay`, :class:`AuthenticationError` (challenge already spent or expired),
    :class:`AuthorizationError` (device retired meanwhile), :class:`LostRace` (the transaction
    was issued by another request) or :class:`LedgerError` (the reservation is gone); the
    caller rolls the unit back.
    """
    c = certificates.c
    if u.nonce is not None:
        if conn.execute(_COMMIT["nonce_seen"], {"scope": u.nonce[0], "nonce": u.nonce[1]}).first():
            raise Replay("replayed senderNonce")
        conn.execute(_COMMIT["nonce_insert"], {"scope": u.nonce[0], "nonce": u.nonce[1], "seen_at": now})
    if u.consume_challenge is not None:
        res = conn.execute(_COMMIT["consume_challenge"], {"c_profile": u.consume_challenge[0],
                                                          "c_digest": u.consume_challenge[1], "now": now, "at": now})
        if res.rowcount != 1:
            raise AuthenticationError("one-time challenge already used or expired")
    if u.consume_credential is not None:
        res = conn.execute(_COMMIT["consume_credential"], {"c_profile": u.consume_credential[0],
                                                           "c_digest": u.consume_credential[1], "now": now, "at": now})
        if res.rowcount != 1:
            raise AuthenticationError("one-time credential already used, revoked or expired")
    if u.refuse_retired and u.device is not None:
        row = conn.execute(_COMMIT["device_retired"], {"c_device": u.device}).first()
        if row is not None and row[0] is not None:
            raise AuthorizationError(f"device {u.device} is retired; it may not enroll or renew")
    txn = u.values.get("transaction_id")
    if u.unique_transaction and txn is not None:
        won = conn.execute(_COMMIT["transaction_won"], {"c_profile": u.values["profile"], "txid": txn}).first()
        if won is not None:
            raise LostRace("transaction already issued by a concurrent request")
    res = conn.execute(_COMMIT["issue"], {**u.values, "status": RowStatus.ISSUED.value, "issued_at": now,
                                          "row_id": u.row_id})
    if res.rowcount != 1:
        raise LedgerError("the serial's reservation was lost (swept as abandoned)")
    if u.device is not None:
        if conn.execute(_COMMIT["device_retired"], {"c_device": u.device}).first() is None:
            conn.execute(_COMMIT["device_insert"], {"device": u.device, "profile": u.device_profile or "",
                                                    "subject": u.values.get("subject") or "",
                                                    "sans": json.dumps(list(u.sans)), "first_seen": now})
    conn.execute(_COMMIT["audit_insert"], dict(u.audit))
    if u.pending_id is not None:
        row = conn.execute(sa.select(c.serial, c.issuer).where(c.id == u.row_id)).one()
        conn.execute(pending.update().where(pending.c.id == u.pending_id).values(
            status=PendingStatus.ISSUED.value, serial=row.serial, issuer=row.issuer))


def reserve_block(conn: sa.Connection, issuer: str, count: int, now: float) -> list[tuple[int, int]]:
    """Reserve ``count`` fresh serials of one CA in one transaction: ``[(row id, serial)]``.

    A collision with an existing serial (astronomically unlikely at 159 bits) is skipped by the
    ``UNIQUE(issuer, serial)`` constraint inside a savepoint, never reused.
    """
    out: list[tuple[int, int]] = []
    attempts = 0
    while len(out) < count and attempts < count * 4:
        attempts += 1
        serial = random_serial()
        try:
            with conn.begin_nested():
                res = conn.execute(certificates.insert().values(
                    issuer=issuer, serial=serial_hex(serial), status=RowStatus.RESERVED.value, profile="", channel="",
                    requester="", auth_method="", csr_sha256="", spki_sha256="", created_at=now))
        except sa.exc.IntegrityError:
            continue
        out.append((int(res.inserted_primary_key[0]), serial))  # type: ignore[index]
    return out


def record_failure(conn: sa.Connection, keys: Sequence[tuple[str, str]], audit: Mapping[str, Any] | None,
                   now: float) -> None:
    """A refusal's one write: failed-authentication keys for the throttle and its audit row."""
    if keys:
        conn.execute(auth_failures.insert(), [{"scope": s, "key": k[:200], "at": now} for s, k in keys])
    if audit is not None:
        conn.execute(audit_log.insert().values(**audit))
