"""The ledger: every certificate, pending request, challenge, nonce and decision, durably.

One async interface over SQLite (the embedded default: WAL, ``synchronous=FULL``,
``BEGIN IMMEDIATE`` write transactions) and PostgreSQL (asyncpg), written with SQLAlchemy Core so
both dialects run the same statements. Invariants live in constraints, never in process locks:
``UNIQUE(issuer, serial)`` makes a serial impossible to reuse across nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ca.errors import AuthorizationError, LedgerError
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
    RowStatus,
    cert_record,
    credential_record,
    pending_record,
    serial_hex,
)
from ca.sqlite_writer import SqliteWriter

__all__ = [
    "MIGRATIONS", "NONCE_PRUNE_INTERVAL_SECONDS", "NONCE_RETENTION_SECONDS", "AuditRecord", "CertRecord",
    "CertState", "CertificateQuery", "CredentialRecord", "DeviceRecord", "Ledger", "PendingRecord", "audit_log",
    "auth_failures", "cert_record", "certificates", "challenges", "credential_record", "credentials", "crl_state",
    "devices", "metadata", "nonces", "pending", "pending_record", "schema_version", "serial_hex", "sqlalchemy_url",
]

#: Transactions begun by the current task, while a test counts them (:meth:`Ledger.counting`).
_COUNTS: contextvars.ContextVar[Counter[str] | None] = contextvars.ContextVar("ledger_counts", default=None)

def _reason(exc: SQLAlchemyError | OSError) -> str:
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {str(orig).splitlines()[0] if str(orig) else ''}"[:200]


def _audit_insert(*, event: str, ok: bool, channel: str | None, profile: str | None,
                  requester: str | None, reason: str, csr_sha256: str | None, serial: int | None,
                  detail: dict[str, Any] | None) -> sa.Insert:
    return audit_log.insert().values(
        at=time.time(), event=event, ok=ok, channel=channel, profile=profile, requester=requester,
        reason=reason, csr_sha256=csr_sha256, serial=serial_hex(serial) if serial is not None else None,
        detail=json.dumps(detail, sort_keys=True) if detail else None)


def _like_pattern(text: str) -> str:
    """A case-folded ``LIKE`` pattern matching ``text`` anywhere (escape character ``\\``)."""
    return "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def sqlalchemy_url(url: str) -> str:
    """Map the config's URL (``sqlite:///path``, ``postgresql://...``) to an async driver URL."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:"):]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


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


class Ledger:
    """Async access to the ledger tables. Every method is one short transaction."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = sqlalchemy_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            # No pre-ping (a round trip per transaction): a connection that died with the server
            # fails its request (503) and is discarded; the next checkout opens a fresh one.
            # asyncpg caches prepared statements per connection.
            kwargs.update(pool_size=10, max_overflow=20, pool_recycle=3600)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        self._nonces_pruned_at = 0.0  # remember_nonce() prunes old nonces now and then
        #: Transactions begun, by kind ("read" / "write"): the unit-of-work tests count them.
        self.transactions: Counter[str] = Counter()
        self._writer: SqliteWriter | None = None
        if self.is_sqlite:
            self._sqlite_pragmas()
            path = self.url.split(":///", 1)[1] if ":///" in self.url else ""
            if path and path != ":memory:":
                self._writer = SqliteWriter(path)

    def _sqlite_pragmas(self) -> None:
        sync_engine = self.engine.sync_engine

        @sa.event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy drive transactions, and take the write lock up front (BEGIN IMMEDIATE)
            # so concurrent writers queue on busy_timeout instead of failing on lock upgrade.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa.event.listens_for(sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Reads take no write lock: WAL readers never wait for writers.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("ledger_read") else "BEGIN IMMEDIATE")

    async def close(self) -> None:
        """Release every pooled connection (and stop SQLite's writer thread)."""
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.close)
            self._writer = SqliteWriter(self._writer.path)  # usable again after close, like the engine
        await self.engine.dispose()

    @property
    def sync_engines(self) -> list[sa.Engine]:
        """Every engine that opens connections to the database (event hooks, e.g. for tests)."""
        return [self.engine.sync_engine] + ([self._writer.engine] if self._writer is not None else [])

    async def reconnect(self) -> None:
        """Drop every open connection; the next transaction opens new ones."""
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.close)
            self._writer = SqliteWriter(self._writer.path)
        await self.engine.dispose()

    # --- the unit of work (ca/unit_of_work.py) ----------------------------------------------
    async def run_read(self, fn: Callable[[sa.Connection], Any]) -> Any:
        """Run a synchronous read function in one read transaction."""
        self._count("read")
        try:
            async with self.engine.connect() as conn:
                await conn.execution_options(ledger_read=True)
                return await conn.run_sync(fn)
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerError(f"ledger read failed: {_reason(exc)}") from exc

    async def run_write(self, fn: Callable[[sa.Connection], Any]) -> Any:
        """Run a synchronous write function in one durable write transaction (on SQLite, in the
        writer thread's next group commit). CAErrors raised by ``fn`` roll it back and pass through."""
        self._count("write")
        try:
            if self._writer is not None:
                return await self._writer.submit(fn)
            async with self.engine.begin() as conn:
                return await conn.run_sync(fn)
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerError(f"ledger write failed: {_reason(exc)}") from exc

    async def gate(self, query: Any) -> Any:
        """:func:`ca.unit_of_work.read_gate` in one read transaction."""
        from ca.unit_of_work import read_gate

        now = time.time()
        return await self.run_read(lambda conn: read_gate(conn, query, now))

    async def commit_issue(self, unit: Any) -> None:
        """:func:`ca.unit_of_work.apply_issue` in one write transaction."""
        from ca.unit_of_work import apply_issue

        now = time.time()
        await self.run_write(lambda conn: apply_issue(conn, unit, now))

    async def reserve_block(self, issuer: str, count: int) -> list[tuple[int, int]]:
        """Reserve ``count`` serials of one CA, committed before any of them signs."""
        from ca.unit_of_work import reserve_block

        now = time.time()
        return list(await self.run_write(lambda conn: reserve_block(conn, issuer, count, now)))

    async def record_refusal(self, keys: Sequence[tuple[str, str]], audit: dict[str, Any] | None) -> None:
        """A refusal's one write: throttle keys and (unless sampled out) its audit row."""
        from ca.unit_of_work import record_failure

        if not keys and audit is None:
            return
        now = time.time()
        await self.run_write(lambda conn: record_failure(conn, keys, audit, now))

    async def migrate(self) -> int:
        """Apply pending migrations; return the schema version now in force."""
        try:
            async with self.engine.begin() as conn:
                if not self.is_sqlite:
                    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(7030894)"))
                await conn.run_sync(lambda c: schema_version.create(c, checkfirst=True))
                done = set((await conn.execute(sa.select(schema_version.c.version))).scalars())
                for version, step in MIGRATIONS:
                    if version in done:
                        continue
                    await conn.run_sync(step)
                    await conn.execute(schema_version.insert().values(version=version, applied_at=time.time()))
                return max([v for v, _ in MIGRATIONS])
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerError(f"ledger migration failed: {exc}") from exc

    def _count(self, kind: str) -> None:
        self.transactions[kind] += 1
        mine = _COUNTS.get()
        if mine is not None:
            mine[kind] += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counter[str]]:
        """Count the transactions this task (and what it awaits) begins, by kind."""
        token = _COUNTS.set(Counter())
        try:
            counts = _COUNTS.get()
            assert counts is not None
            yield counts
        finally:
            _COUNTS.reset(token)

    async def _write(self, fn: Callable[[AsyncConnection], Any]) -> Any:
        self._count("write")
        try:
            async with self.engine.begin() as conn:
                return await fn(conn)
        except IntegrityError:
            raise
        except (SQLAlchemyError, OSError) as exc:  # OSError: asyncpg cannot connect (database down)
            raise LedgerError(f"ledger write failed: {_reason(exc)}") from exc

    async def _read(self, stmt: sa.Executable) -> list[sa.Row[Any]]:
        self._count("read")
        try:
            async with self.engine.connect() as conn:
                await conn.execution_options(ledger_read=True)
                return list((await conn.execute(stmt)).fetchall())
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerError(f"ledger read failed: {_reason(exc)}") from exc

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
                await conn.execute(_audit_insert(**audit))
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
                await conn.execute(_audit_insert(event="abandon-reservation", ok=True, channel=None, profile=None,
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
                await conn.execute(_audit_insert(event="abandon-reservation", ok=True, channel=None, profile=None,
                                                 requester=None, reason="reserved, unused at shutdown",
                                                 csr_sha256=None, serial=int(r.serial, 16),
                                                 detail={"issuer": r.issuer}))
            return len(rows)

        return int(await self._write(run))

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
        stmt = _audit_insert(event=event, ok=ok, channel=channel, profile=profile, requester=requester,
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
