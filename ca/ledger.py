"""The ledger: every certificate, pending request, challenge, nonce and decision, durably.

One async interface over SQLite (the embedded default: WAL, ``synchronous=FULL``,
``BEGIN IMMEDIATE`` write transactions) and PostgreSQL (asyncpg), written with SQLAlchemy Core so
both dialects run the same statements. Invariants live in constraints, never in process locks:
``UNIQUE(issuer, serial)`` makes a serial impossible to reuse across nodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ca.ledger_schema import (
    MIGRATIONS,
    NONCE_PRUNE_INTERVAL_SECONDS,
    NONCE_RETENTION_SECONDS,
    audit_log,
    auth_failures,
    certificates,
    challenges,
    credentials,
    crl_state,
    devices,
    metadata,
    nonces,
    pending,
    schema_version,
)
from ca.records import (
    AuditRecord,
    CertificateQuery,
    CertRecord,
    CertState,
    CredentialRecord,
    DeviceRecord,
    PendingRecord,
    PendingStatus,
    cert_record,
    credential_record,
    pending_record,
    serial_hex,
)
from ca.ledger_base import audit_insert, sqlalchemy_url
from ca.ledger_certs import CertificateLedger, state_is

__all__ = [
    "MIGRATIONS", "NONCE_PRUNE_INTERVAL_SECONDS", "NONCE_RETENTION_SECONDS", "AuditRecord", "CertRecord",
    "CertState", "CertificateQuery", "CredentialRecord", "DeviceRecord", "Ledger", "PendingRecord", "audit_log",
    "auth_failures", "cert_record", "certificates", "challenges", "credential_record", "credentials", "crl_state",
    "devices", "metadata", "nonces", "pending", "pending_record", "schema_version", "serial_hex", "sqlalchemy_url",
    "state_is",
]


class Ledger(CertificateLedger):
    """Async access to the ledger tables. Every method is one short transaction: certificates,
    devices and CRLs (:class:`ca.ledger_certs.CertificateLedger`), and here pending requests,
    credentials, challenges, nonces, the throttle's failures and the audit trail."""

    async def record_auth_failure(self, keys: Sequence[tuple[str, str]], at: float) -> None:
        """Remember one failed authentication under each (scope, key)."""
        if keys:
            await self._write(lambda conn: conn.execute(auth_failures.insert(), [
                {"scope": scope, "key": key[:200], "at": at} for scope, key in keys]))

    async def count_auth_failures(self, scope: str, key: str, since: float) -> int:
        """Failed authentications under (scope, key) at or after ``since``."""
        f = auth_failures.c
        rows = await self._read(sa.select(sa.func.count()).select_from(auth_failures)
                                .where(f.scope == scope, f.key == key[:200], f.at >= since))
        return int(rows[0][0])

    async def auth_failure_stats(self, scope: str, key: str, since: float) -> tuple[int, float | None]:
        """(how many, latest time) of the failed authentications under (scope, key) since ``since``."""
        f = auth_failures.c
        rows = await self._read(sa.select(sa.func.count().label("n"), sa.func.max(f.at).label("last"))
                                .select_from(auth_failures)
                                .where(f.scope == scope, f.key == key[:200], f.at >= since))
        last = rows[0]._mapping["last"]
        return int(rows[0]._mapping["n"]), None if last is None else float(last)

    async def prune_auth_failures(self, before: float) -> None:
        """Forget failures older than every throttle window."""
        await self._write(lambda conn: conn.execute(auth_failures.delete().where(auth_failures.c.at < before)))

    # --- pending requests --------------------------------------------------------------------
    async def create_pending(self, **values: Any) -> int:
        """Record a request that waits for an operator."""
        values = dict(values, status=PendingStatus.PENDING.value, created_at=time.time())

        async def run(conn: AsyncConnection) -> int:
            res = await conn.execute(pending.insert().values(**values))
            return int(res.inserted_primary_key[0])  # type: ignore[index]

        return int(await self._write(run))

    async def find_pending(self, profile: str, *, csr_sha256: str | None = None,
                           transaction_id: str | None = None) -> PendingRecord | None:
        """The newest pending-table row matching the CSR hash or the transaction ID."""
        q = sa.select(pending).where(pending.c.profile == profile).order_by(pending.c.id.desc()).limit(1)
        if transaction_id is not None:
            q = q.where(pending.c.transaction_id == transaction_id)
        elif csr_sha256 is not None:
            q = q.where(pending.c.csr_sha256 == csr_sha256)
        else:
            return None
        rows = await self._read(q)
        return pending_record(rows[0]) if rows else None

    async def get_pending(self, request_id: int) -> PendingRecord | None:
        """One pending-table row by id."""
        rows = await self._read(sa.select(pending).where(pending.c.id == request_id))
        return pending_record(rows[0]) if rows else None

    async def list_pending(self, status: PendingStatus | None = PendingStatus.PENDING) -> list[PendingRecord]:
        """Rows with this status (all with None), oldest first."""
        q = sa.select(pending).order_by(pending.c.id)
        if status:
            q = q.where(pending.c.status == status.value)
        return [pending_record(r) for r in await self._read(q)]

    async def transition_pending(self, request_id: int, old: Sequence[PendingStatus], new: PendingStatus,
                                 **values: Any) -> bool:
        """Move a request from one of ``old`` to ``new``; False if it was not in ``old``."""

        async def run(conn: AsyncConnection) -> bool:
            res = await conn.execute(
                pending.update().where(pending.c.id == request_id, pending.c.status.in_([o.value for o in old]))
                .values(status=new.value, **values)
            )
            return res.rowcount == 1

        return bool(await self._write(run))

    # --- enrollment credentials --------------------------------------------------------------
    async def add_credentials(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store new credentials (by digest) in one transaction."""
        if rows:
            await self._write(lambda conn: conn.execute(credentials.insert(), list(rows)))

    async def list_credentials(self, *, profile: str | None = None, usable_at: float | None = None,
                               limit: int = 10000) -> list[CredentialRecord]:
        """Credentials, newest first; with ``usable_at`` only those still usable then."""
        k = credentials.c
        q = sa.select(credentials)
        if profile is not None:
            q = q.where(k.profile == profile)
        if usable_at is not None:
            q = q.where(k.revoked_at.is_(None), k.uses_left > 0, k.expires_at > usable_at)
        return [credential_record(r) for r in await self._read(q.order_by(k.created_at.desc(), k.id).limit(limit))]

    async def get_credential(self, cred_id: str) -> CredentialRecord | None:
        """One credential by its public id (user name)."""
        rows = await self._read(sa.select(credentials).where(credentials.c.id == cred_id))
        return credential_record(rows[0]) if rows else None

    async def revoke_credential(self, cred_id: str, at: float) -> bool:
        """Revoke a credential that is not revoked yet; True when this call revoked it."""

        async def run(conn: AsyncConnection) -> bool:
            res = await conn.execute(credentials.update().where(
                credentials.c.id == cred_id, credentials.c.revoked_at.is_(None)).values(revoked_at=at))
            return res.rowcount == 1

        return bool(await self._write(run))

    # --- challenges and nonces ---------------------------------------------------------------
    async def add_challenge(self, profile: str, digest: str, expires_at: float) -> None:
        """Store a one-time challenge by its digest."""
        await self._write(lambda conn: conn.execute(challenges.insert().values(
            profile=profile, digest=digest, created_at=time.time(), expires_at=expires_at)))

    async def consume_challenge(self, profile: str, digest: str, now: float) -> bool:
        """Atomically use a one-time challenge; True exactly once, before it expires."""

        async def run(conn: AsyncConnection) -> bool:
            res = await conn.execute(
                challenges.update()
                .where(challenges.c.profile == profile, challenges.c.digest == digest,
                       challenges.c.consumed_at.is_(None), challenges.c.expires_at > now)
                .values(consumed_at=now)
            )
            return res.rowcount == 1

        return bool(await self._write(run))

    async def remember_nonce(self, scope: str, nonce: str, now: float) -> bool:
        """Record a nonce; False when it was seen before (a replay).

        About once an hour per process, the same transaction forgets nonces older than
        :data:`NONCE_RETENTION_SECONDS` (:meth:`prune_nonces`), so the table stays bounded.
        """
        prune = now - self._nonces_pruned_at >= NONCE_PRUNE_INTERVAL_SECONDS

        async def run(conn: AsyncConnection) -> None:
            if prune:
                await conn.execute(nonces.delete().where(nonces.c.seen_at < now - NONCE_RETENTION_SECONDS))
            await conn.execute(nonces.insert().values(scope=scope, nonce=nonce, seen_at=now))

        try:
            await self._write(run)
        except IntegrityError:
            return False
        if prune:
            self._nonces_pruned_at = now
        return True

    async def nonce_seen(self, scope: str, nonce: str) -> bool:
        """True when the nonce was recorded before (a read-only replay check)."""
        n = nonces.c
        return bool(await self._read(sa.select(n.nonce).where(n.scope == scope, n.nonce == nonce)))

    async def prune_nonces(self, before: float) -> int:
        """Forget nonces first seen before ``before``; returns how many."""

        async def run(conn: AsyncConnection) -> int:
            return int((await conn.execute(nonces.delete().where(nonces.c.seen_at < before))).rowcount or 0)

        return int(await self._write(run))

    # --- audit ------------------------------------------------------------------------------
    async def audit(self, *, event: str, ok: bool, channel: str | None, profile: str | None,
                    requester: str | None, reason: str, csr_sha256: str | None, serial: int | None,
                    detail: dict[str, Any] | None) -> None:
        """Append one audit record."""
        stmt = audit_insert(event=event, ok=ok, channel=channel, profile=profile, requester=requester,
                             reason=reason, csr_sha256=csr_sha256, serial=serial, detail=detail)
        await self._write(lambda conn: conn.execute(stmt))

    async def audit_records(self, limit: int = 1000, *, serials: Sequence[int] | None = None,
                            since: float | None = None, until: float | None = None,
                            event: str | None = None, device: str | None = None,
                            before_id: int | None = None) -> list[AuditRecord]:
        """Newest audit records first, optionally only those about ``serials`` or ``device``
        (its certificates' records and the device's own), in ``[since, until)``, of one event."""
        a = audit_log.c
        q = sa.select(audit_log)
        who = []
        if serials is not None:
            who.append(a.serial.in_([serial_hex(s) for s in serials]))
        if device is not None:
            who.append(a.detail.like(f'%"device": "{device}"%'))
        if who:
            q = q.where(sa.or_(*who))
        if since is not None:
            q = q.where(a.at >= since)
        if until is not None:
            q = q.where(a.at < until)
        if event:
            q = q.where(a.event == event)
        if before_id is not None:
            q = q.where(a.id < before_id)
        rows = await self._read(q.order_by(a.id.desc()).limit(limit))
        out = []
        for r in rows:
            m = dict(r._mapping)
            m["detail"] = json.loads(m["detail"]) if m["detail"] else None
            m["ok"] = bool(m["ok"])
            out.append(AuditRecord(**m))
        return out
