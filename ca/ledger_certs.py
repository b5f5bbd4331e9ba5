"""The ledger's certificates, devices and CRL state: issuance rows, lookups, listings by state,
revocation, holds, retirement (RFC 5280 §5.3.1 certificateHold, §5 CRLs)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ca.errors import AuthorizationError, LedgerError
from ca.ledger_schema import (
    certificates,
    crl_state,
    devices,
    pending,
)
from ca.records import (
    CertificateQuery,
    CertRecord,
    CertState,
    DeviceRecord,
    PendingStatus,
    RowStatus,
    cert_record,
    serial_hex,
)
from ca.ledger_base import LedgerBase, audit_insert


def _like_pattern(text: str) -> str:
    """A case-folded ``LIKE`` pattern matching ``text`` anywhere (escape character ``\\``)."""
    return "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def state_is(state: CertState, now: float) -> sa.ColumnElement[bool]:
    """SQL true for an issued row whose ``CertRecord.state(now)`` is ``state``: the first that
    holds of on hold (RFC 5280 §5.3.1 certificateHold), revoked, expired, retired, valid; every
    listing and count by state goes through here, so each certificate has exactly one state."""
    c = certificates.c
    live = c.revoked_at.is_(None)
    current = sa.or_(c.not_after.is_(None), c.not_after >= now)  # RFC 5280 §4.1.2.5: inclusive
    held = c.revocation_reason == "certificate_hold"
    conditions = {
        CertState.ON_HOLD: sa.and_(c.revoked_at.is_not(None), held),
        CertState.REVOKED: sa.and_(c.revoked_at.is_not(None), sa.or_(c.revocation_reason.is_(None), sa.not_(held))),
        CertState.EXPIRED: sa.and_(live, c.not_after.is_not(None), c.not_after < now),
        CertState.RETIRED: sa.and_(live, current, c.retired_at.is_not(None)),
        CertState.VALID: sa.and_(live, current, c.retired_at.is_(None)),
    }
    return conditions[state]


class CertificateLedger(LedgerBase):
    """Certificates, devices and CRLs: one short transaction per method."""

    # --- certificates -----------------------------------------------------------------------
    async def reserve_serial(self, *, refuse_retired: str | None = None, **values: Any) -> int | None:
        """Insert a ``reserved`` row; None when (issuer, serial) already exists.

        With ``refuse_retired`` (a device key), the same transaction first checks that the device
        is not retired, so a retirement can never slip between the check and the reservation.
        """
        values = dict(values, serial=serial_hex(values["serial"]), status=RowStatus.RESERVED.value, created_at=time.time())
        if values.get("renews_serial") is not None:
            values["renews_serial"] = serial_hex(values["renews_serial"])

        async def run(conn: AsyncConnection) -> int:
            if refuse_retired is not None:
                retired = (await conn.execute(sa.select(devices.c.retired_at)
                                              .where(devices.c.device == refuse_retired))).first()
                if retired is not None and retired[0] is not None:
                    raise AuthorizationError(f"device {refuse_retired} is retired; it may not enroll or renew")
            res = await conn.execute(certificates.insert().values(**values))
            return int(res.inserted_primary_key[0])  # type: ignore[index]

        try:
            return int(await self._write(run))
        except IntegrityError:
            return None

    async def store_issued(self, row_id: int, *, der: bytes, subject: str, not_before: float,
                           not_after: float, audit: dict[str, Any] | None = None,
                           pending_id: int | None = None, device: str | None = None,
                           device_profile: str | None = None, sans: Sequence[str] = ()) -> None:
        """Mark a reserved row issued with its certificate; its audit record, its device (first
        certificate of a device creates it) and the pending request it completes (if any) commit
        in the same transaction."""

        async def run(conn: AsyncConnection) -> None:
            res = await conn.execute(
                certificates.update()
                .where(certificates.c.id == row_id, certificates.c.status == RowStatus.RESERVED.value)
                .values(status=RowStatus.ISSUED.value, der=der, subject=subject, not_before=not_before,
                        not_after=not_after, issued_at=time.time(), device=device)
            )
            if res.rowcount != 1:
                raise LedgerError("reserved serial row vanished")
            if device is not None:
                values = dict(device=device, profile=device_profile or "", subject=subject,
                              sans=json.dumps(list(sans)), first_seen=time.time())
                ins = (sqlite_insert(devices) if self.is_sqlite else pg_insert(devices)).values(**values)
                await conn.execute(ins.on_conflict_do_nothing(index_elements=["device"]))
            if audit is not None:
                await conn.execute(audit_insert(**audit))
            if pending_id is not None:
                row = (await conn.execute(sa.select(certificates.c.serial, certificates.c.issuer)
                                          .where(certificates.c.id == row_id))).one()
                await conn.execute(pending.update().where(pending.c.id == pending_id)
                                   .values(status=PendingStatus.ISSUED.value, serial=row.serial, issuer=row.issuer))

        await self._write(run)

    async def find_by_serial(self, issuer: str, serial: int) -> CertRecord | None:
        """The row for (issuer, serial), reserved or issued."""
        rows = await self._read(
            sa.select(certificates).where(certificates.c.issuer == issuer,
                                          certificates.c.serial == serial_hex(serial))
        )
        return cert_record(rows[0]) if rows else None

    async def find_by_serials(self, keys: Sequence[tuple[str, int]]) -> list[CertRecord | None]:
        """The rows for several (issuer, serial) pairs, in one read transaction."""

        def run(conn: sa.Connection) -> list[CertRecord | None]:
            out: list[CertRecord | None] = []
            for issuer, serial in keys:
                row = conn.execute(sa.select(certificates).where(certificates.c.issuer == issuer,
                                                                 certificates.c.serial == serial_hex(serial))).first()
                out.append(cert_record(row) if row is not None else None)
            return out

        return list(await self.run_read(run))

    async def find_serial_any_issuer(self, serial: int) -> list[CertRecord]:
        """Issued rows with this serial under any CA (admin commands)."""
        rows = await self._read(sa.select(certificates).where(certificates.c.serial == serial_hex(serial)))
        return [cert_record(r) for r in rows]

    async def find_by_transaction(self, profile: str, transaction_id: str) -> list[CertRecord]:
        """Issued rows for (profile, transaction_id), oldest first."""
        rows = await self._read(
            sa.select(certificates)
            .where(certificates.c.profile == profile, certificates.c.transaction_id == transaction_id,
                   certificates.c.status == RowStatus.ISSUED.value)
            .order_by(certificates.c.id)
        )
        return [cert_record(r) for r in rows]

    async def list_certificates(self, *, profile: str | None = None,
                                status: RowStatus | None = RowStatus.ISSUED,
                                limit: int = 1000) -> list[CertRecord]:
        """Rows newest first."""
        q = sa.select(certificates).order_by(certificates.c.id.desc()).limit(limit)
        if profile:
            q = q.where(certificates.c.profile == profile)
        if status:
            q = q.where(certificates.c.status == status.value)
        return [cert_record(r) for r in await self._read(q)]

    async def abandon_stale_reservations(self, created_before: float) -> list[tuple[str, str]]:
        """Mark ``reserved`` rows created before ``created_before`` as ``abandoned``.

        A reservation is committed before the CA key signs (docs/ARCHITECTURE.md, issuance contract step 5);
        one that never became ``issued`` belongs to a request that crashed or failed between
        reservation and storage. The row stays, so ``UNIQUE(issuer, serial)`` keeps the serial
        from ever being used again; the status says nobody holds it. Returns (issuer, serial hex)
        of each row changed, in one transaction with its audit record.
        """

        async def run(conn: AsyncConnection) -> list[tuple[str, str]]:
            c = certificates.c
            stale = (await conn.execute(sa.select(c.id, c.issuer, c.serial)
                                        .where(c.status == RowStatus.RESERVED.value, c.created_at < created_before))).fetchall()
            if not stale:
                return []
            await conn.execute(certificates.update()
                               .where(c.id.in_([r.id for r in stale]), c.status == RowStatus.RESERVED.value)
                               .values(status=RowStatus.ABANDONED.value))
            for r in stale:
                await conn.execute(audit_insert(event="abandon-reservation", ok=True, channel=None, profile=None,
                                                 requester=None, reason="reserved but never issued",
                                                 csr_sha256=None, serial=int(r.serial, 16),
                                                 detail={"issuer": r.issuer}))
            return [(r.issuer, r.serial) for r in stale]

        return list(await self._write(run))

    async def abandon_reserved(self, row_ids: Sequence[int]) -> int:
        """Mark these reservations abandoned now (a process stopping gracefully gives back the
        serials it reserved and did not use), each with its audit record; never reused."""
        if not row_ids:
            return 0

        async def run(conn: AsyncConnection) -> int:
            c = certificates.c
            rows = (await conn.execute(sa.select(c.id, c.issuer, c.serial)
                                       .where(c.id.in_(list(row_ids)), c.status == RowStatus.RESERVED.value))).fetchall()
            if rows:
                await conn.execute(certificates.update().where(c.id.in_([r.id for r in rows]),
                                                               c.status == RowStatus.RESERVED.value).values(status=RowStatus.ABANDONED.value))
            for r in rows:
                await conn.execute(audit_insert(event="abandon-reservation", ok=True, channel=None, profile=None,
                                                 requester=None, reason="reserved, unused at shutdown",
                                                 csr_sha256=None, serial=int(r.serial, 16),
                                                 detail={"issuer": r.issuer}))
            return len(rows)

        return int(await self._write(run))

    async def count_certificates(self, status: str = RowStatus.ISSUED.value, *, channels: Sequence[str] = ()) -> int:
        """How many rows have this status (only those that came in on ``channels``, when given)."""
        q = sa.select(sa.func.count()).select_from(certificates).where(certificates.c.status == status)
        if channels:
            q = q.where(certificates.c.channel.in_(list(channels)))
        rows = await self._read(q)
        return int(rows[0][0])

    async def revoke(self, issuer: str, serial: int, reason: str, at: float) -> bool:
        """Mark an issued certificate revoked; False if unknown or already revoked.

        A certificate on hold may be revoked for good (RFC 5280 §5.3.1: certificateHold is
        temporary); it keeps its hold date as the revocation date only if the reason is
        unchanged, so a permanent revocation records when it became permanent.
        """

        async def run(conn: AsyncConnection) -> bool:
            where = [certificates.c.issuer == issuer, certificates.c.serial == serial_hex(serial),
                     certificates.c.status == RowStatus.ISSUED.value]
            if reason == "certificate_hold":
                where.append(certificates.c.revoked_at.is_(None))
            else:
                where.append(sa.or_(certificates.c.revoked_at.is_(None),
                                    certificates.c.revocation_reason == "certificate_hold"))
            res = await conn.execute(certificates.update().where(*where)
                                     .values(revoked_at=at, revocation_reason=reason))
            return res.rowcount == 1

        return bool(await self._write(run))

    async def release_hold(self, issuer: str, serial: int) -> bool:
        """Lift a certificateHold: the certificate is valid again and leaves the next CRL
        (RFC 5280 §5.3.1 removeFromCRL semantics for full CRLs). False unless on hold."""

        async def run(conn: AsyncConnection) -> bool:
            res = await conn.execute(
                certificates.update()
                .where(certificates.c.issuer == issuer, certificates.c.serial == serial_hex(serial),
                       certificates.c.status == RowStatus.ISSUED.value, certificates.c.revocation_reason == "certificate_hold")
                .values(revoked_at=None, revocation_reason=None)
            )
            return res.rowcount == 1

        return bool(await self._write(run))

    def _certificate_filter(self, q: sa.Select[Any], f: CertificateQuery, now: float) -> sa.Select[Any]:
        c = certificates.c
        q = q.where(c.status == RowStatus.ISSUED.value)
        if f.profile:
            q = q.where(c.profile == f.profile)
        if f.device:
            q = q.where(c.device == f.device)
        if f.text:
            pattern = _like_pattern(f.text)
            q = q.where(sa.func.lower(c.subject).like(pattern, escape="\\"))
        if f.state:
            try:
                state = CertState(f.state)
            except ValueError:
                raise ValueError(f"unknown state {f.state!r}") from None
            q = q.where(state_is(state, now))
        if f.expiring_before is not None:
            q = q.where(state_is(CertState.VALID, now), c.not_after <= f.expiring_before)
        if f.before_id is not None:
            q = q.where(c.id < f.before_id)
        return q

    async def query_certificates(self, f: CertificateQuery, now: float | None = None) -> list[CertRecord]:
        """Issued certificates matching ``f``, newest first (page on with ``before_id``)."""
        now = time.time() if now is None else now
        q = self._certificate_filter(sa.select(certificates), f, now)
        if f.expiring_before is not None:
            q = q.order_by(certificates.c.not_after, certificates.c.id.desc())
        else:
            q = q.order_by(certificates.c.id.desc())
        return [cert_record(r) for r in await self._read(q.limit(max(1, min(f.limit, 10000))))]

    async def counts_by_profile(self, now: float, horizons: Sequence[float] = ()) -> dict[str, dict[str, int]]:
        """Per profile, the issued certificates in each :class:`CertState` (keys: its values, the
        same classification as ``CertRecord.state`` and the ``state`` filter of
        :meth:`query_certificates`), and ``expiring_<i>``: valid ones with not_after <= horizons[i].
        The one summary the CLI (``enroll certs summary``), the admin API's overview and the
        metrics show."""
        c = certificates.c
        cols: list[Any] = [c.profile]
        cols += [sa.func.sum(sa.case((state_is(s, now), 1), else_=0)) for s in CertState]
        cols += [sa.func.sum(sa.case((sa.and_(state_is(CertState.VALID, now), c.not_after <= h), 1), else_=0))
                 for h in horizons]
        rows = await self._read(sa.select(*cols).where(c.status == RowStatus.ISSUED.value).group_by(c.profile))
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            values = tuple(r)
            d = {s.value: int(v or 0) for s, v in zip(CertState, values[1:])}
            for i in range(len(horizons)):
                d[f"expiring_{i}"] = int(values[1 + len(CertState) + i] or 0)
            out[str(values[0])] = d
        return out

    # --- devices ----------------------------------------------------------------------------
    async def device_retired(self, device: str) -> bool:
        """True when the device was retired (refuse its enrollments and renewals)."""
        rows = await self._read(sa.select(devices.c.retired_at).where(devices.c.device == device))
        return bool(rows) and rows[0][0] is not None

    def _device_select(self, now: float) -> sa.Select[Any]:
        c = certificates.c
        stats = (sa.select(c.device.label("device"), sa.func.count().label("n"),
                           sa.func.sum(sa.case((sa.and_(c.revoked_at.is_(None), c.not_after >= now), 1),
                                               else_=0)).label("active"),
                           sa.func.max(c.issued_at).label("last_issued_at"))
                 .where(c.status == RowStatus.ISSUED.value).group_by(c.device).subquery())
        return (sa.select(devices, stats.c.n, stats.c.active, stats.c.last_issued_at)
                .select_from(devices.outerjoin(stats, stats.c.device == devices.c.device)))

    @staticmethod
    def _device(row: sa.Row[Any]) -> DeviceRecord:
        m = dict(row._mapping)
        return DeviceRecord(device=m["device"], profile=m["profile"], subject=m["subject"],
                            sans=json.loads(m["sans"] or "[]"), first_seen=m["first_seen"],
                            retired_at=m["retired_at"], retired_by=m["retired_by"],
                            retire_reason=m["retire_reason"], certificates=int(m["n"] or 0),
                            active=int(m["active"] or 0), last_issued_at=m["last_issued_at"])

    async def list_devices(self, *, profile: str | None = None, text: str | None = None,
                           retired: bool | None = None, after: str | None = None, limit: int = 100,
                           now: float | None = None) -> list[DeviceRecord]:
        """Devices ordered by their key (page on with ``after``)."""
        q = self._device_select(time.time() if now is None else now)
        if profile:
            q = q.where(devices.c.profile == profile)
        if text:
            pattern = _like_pattern(text)
            q = q.where(sa.or_(sa.func.lower(devices.c.subject).like(pattern, escape="\\"),
                               sa.func.lower(devices.c.sans).like(pattern, escape="\\"),
                               devices.c.device == text.lower()))
        if retired is not None:
            q = q.where(devices.c.retired_at.is_not(None) if retired else devices.c.retired_at.is_(None))
        if after:
            q = q.where(devices.c.device > after)
        q = q.order_by(devices.c.device).limit(max(1, min(limit, 10000)))
        return [self._device(r) for r in await self._read(q)]

    async def get_device(self, device: str, now: float | None = None) -> DeviceRecord | None:
        """One device by key."""
        rows = await self._read(self._device_select(time.time() if now is None else now)
                                .where(devices.c.device == device))
        return self._device(rows[0]) if rows else None

    async def retire_device(self, device: str, at: float, by: str, reason: str) -> bool:
        """Mark a device and all its certificates retired; False if already retired or unknown."""

        async def run(conn: AsyncConnection) -> bool:
            res = await conn.execute(devices.update()
                                     .where(devices.c.device == device, devices.c.retired_at.is_(None))
                                     .values(retired_at=at, retired_by=by, retire_reason=reason))
            if res.rowcount != 1:
                return False
            await conn.execute(certificates.update()
                               .where(certificates.c.device == device, certificates.c.status == RowStatus.ISSUED.value,
                                      certificates.c.retired_at.is_(None))
                               .values(retired_at=at))
            return True

        return bool(await self._write(run))

    async def retire(self, issuer: str, serial: int, at: float) -> bool:
        """Mark a device's certificate retired (no renewal); False if unknown or retired."""

        async def run(conn: AsyncConnection) -> bool:
            res = await conn.execute(
                certificates.update()
                .where(certificates.c.issuer == issuer, certificates.c.serial == serial_hex(serial),
                       certificates.c.status == RowStatus.ISSUED.value, certificates.c.retired_at.is_(None))
                .values(retired_at=at)
            )
            return res.rowcount == 1

        return bool(await self._write(run))

    async def revoked_entries(self, issuer: str) -> list[tuple[int, float, str | None]]:
        """(serial, revoked_at, reason) of one CA's revoked certificates: what a CRL lists."""
        rows = await self._read(
            sa.select(certificates.c.serial, certificates.c.revoked_at, certificates.c.revocation_reason)
            .where(certificates.c.issuer == issuer, certificates.c.revoked_at.is_not(None))
            .order_by(certificates.c.revoked_at)
        )
        return [(int(r.serial, 16), float(r.revoked_at), r.revocation_reason) for r in rows]

    # --- CRLs ------------------------------------------------------------------------------
    async def crl_current(self, issuer: str) -> tuple[int, float, float, bytes] | None:
        """(number, this_update, next_update, der) of the last CRL, if any."""
        rows = await self._read(sa.select(crl_state).where(crl_state.c.issuer == issuer))
        if not rows or rows[0].der is None:
            return None
        r = rows[0]
        return int(r.number), float(r.this_update), float(r.next_update), bytes(r.der)

    async def crl_next_number(self, issuer: str) -> int:
        """Atomically take the next CRL number (RFC 5280 §5.2.3: monotonically increasing)."""

        async def run(conn: AsyncConnection) -> int:
            res = await conn.execute(crl_state.update().where(crl_state.c.issuer == issuer)
                                     .values(number=crl_state.c.number + 1))
            if res.rowcount == 0:
                await conn.execute(crl_state.insert().values(issuer=issuer, number=1))
            return int((await conn.execute(sa.select(crl_state.c.number)
                                           .where(crl_state.c.issuer == issuer))).scalar_one())

        return int(await self._write(run))

    async def crl_store(self, issuer: str, number: int, this_update: float, next_update: float,
                        der: bytes) -> None:
        """Keep the newest CRL (an older number never overwrites a newer one)."""

        async def run(conn: AsyncConnection) -> None:
            await conn.execute(
                crl_state.update()
                .where(crl_state.c.issuer == issuer, crl_state.c.number == number)
                .values(this_update=this_update, next_update=next_update, der=der)
            )

        await self._write(run)
