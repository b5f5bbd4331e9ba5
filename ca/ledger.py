"""The ledger: every certificate, pending request, challenge, nonce and decision, durably.

One async interface over SQLite (the embedded default: WAL, ``synchronous=FULL``,
``BEGIN IMMEDIATE`` write transactions) and PostgreSQL (asyncpg), written with SQLAlchemy Core so
both dialects run the same statements. Invariants live in constraints, never in process locks:
``UNIQUE(issuer, serial)`` makes a serial impossible to reuse across nodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ca.errors import LedgerError

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("issuer", sa.String(200), nullable=False),
    sa.Column("serial", sa.String(48), nullable=False),  # lower-case hex, no leading zeros
    sa.Column("status", sa.String(16), nullable=False),  # reserved | issued
    sa.Column("profile", sa.String(200), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("requester", sa.Text, nullable=False),
    sa.Column("auth_method", sa.String(40), nullable=False),
    sa.Column("csr_sha256", sa.String(64), nullable=False),
    sa.Column("spki_sha256", sa.String(64), nullable=False),
    sa.Column("transaction_id", sa.String(200)),
    sa.Column("renews_serial", sa.String(48)),
    sa.Column("subject", sa.Text),
    sa.Column("not_before", sa.Float),
    sa.Column("not_after", sa.Float),
    sa.Column("der", sa.LargeBinary),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("issued_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
    sa.Column("revocation_reason", sa.String(40)),
    sa.Column("retired_at", sa.Float),
    sa.UniqueConstraint("issuer", "serial", name="uq_certificates_issuer_serial"),
    sa.Index("ix_certificates_txn", "profile", "transaction_id"),
    sa.Index("ix_certificates_spki", "spki_sha256"),
)

pending = sa.Table(
    "pending_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("profile", sa.String(200), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("requester", sa.Text, nullable=False),
    sa.Column("csr_der", sa.LargeBinary, nullable=False),
    sa.Column("csr_sha256", sa.String(64), nullable=False),
    sa.Column("spki_sha256", sa.String(64), nullable=False),
    sa.Column("transaction_id", sa.String(200)),
    sa.Column("subject", sa.Text),
    sa.Column("status", sa.String(16), nullable=False),  # pending|approved|issuing|issued|rejected
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("decided_at", sa.Float),
    sa.Column("decided_by", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("serial", sa.String(48)),
    sa.Column("issuer", sa.String(200)),
    sa.Index("ix_pending_csr", "profile", "csr_sha256"),
    sa.Index("ix_pending_txn", "profile", "transaction_id"),
)

challenges = sa.Table(
    "challenges",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("profile", sa.String(200), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),  # sha256 of the challenge
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("consumed_at", sa.Float),
)

nonces = sa.Table(
    "nonces",
    metadata,
    sa.Column("scope", sa.String(40), nullable=False),
    sa.Column("nonce", sa.String(128), nullable=False),
    sa.Column("seen_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("scope", "nonce", name="pk_nonces"),
)

crl_state = sa.Table(
    "crl_state",
    metadata,
    sa.Column("issuer", sa.String(200), primary_key=True),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("this_update", sa.Float),
    sa.Column("next_update", sa.Float),
    sa.Column("der", sa.LargeBinary),
)

audit_log = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("event", sa.String(60), nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("channel", sa.String(16)),
    sa.Column("profile", sa.String(200)),
    sa.Column("requester", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("csr_sha256", sa.String(64)),
    sa.Column("serial", sa.String(48)),
    sa.Column("detail", sa.Text),
)


def _migration_1(conn: sa.Connection) -> None:
    for table in (certificates, pending, challenges, nonces, crl_state, audit_log):
        table.create(conn, checkfirst=True)


#: Versioned schema migrations, applied in order, each once (``schema_version`` records them).
MIGRATIONS: list[tuple[int, Callable[[sa.Connection], None]]] = [(1, _migration_1)]


@dataclass(frozen=True)
class CertRecord:
    """One row of ``certificates``."""

    id: int
    issuer: str
    serial: int
    status: str
    profile: str
    channel: str
    requester: str
    auth_method: str
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
    requester: str
    csr_der: bytes
    csr_sha256: str
    spki_sha256: str
    transaction_id: str | None
    subject: str | None
    status: str
    created_at: float
    decided_at: float | None
    decided_by: str | None
    reason: str | None
    serial: int | None
    issuer: str | None


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


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {str(orig).splitlines()[0] if str(orig) else ''}"[:200]


def _cert(row: sa.Row[Any]) -> CertRecord:
    m = dict(row._mapping)
    m["serial"] = int(m["serial"], 16)
    m["renews_serial"] = int(m["renews_serial"], 16) if m["renews_serial"] else None
    return CertRecord(**m)


def _pending(row: sa.Row[Any]) -> PendingRecord:
    m = dict(row._mapping)
    m["serial"] = int(m["serial"], 16) if m["serial"] else None
    return PendingRecord(**m)


def _audit_insert(*, event: str, ok: bool, channel: str | None, profile: str | None,
                  requester: str | None, reason: str, csr_sha256: str | None, serial: int | None,
                  detail: dict[str, Any] | None) -> sa.Insert:
    return audit_log.insert().values(
        at=time.time(), event=event, ok=ok, channel=channel, profile=profile, requester=requester,
        reason=reason, csr_sha256=csr_sha256, serial=serial_hex(serial) if serial is not None else None,
        detail=json.dumps(detail, sort_keys=True) if detail else None)


def sqlalchemy_url(url: str) -> str:
    """Map the config's URL (``sqlite:///path``, ``postgresql://...``) to an async driver URL."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:"):]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


class Ledger:
    """Async access to the ledger tables. Every method is one short transaction."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = sqlalchemy_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            self._sqlite_pragmas()

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
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    async def close(self) -> None:
        """Release every pooled connection."""
        await self.engine.dispose()

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
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger migration failed: {exc}") from exc

    async def _write(self, fn: Callable[[AsyncConnection], Any]) -> Any:
        try:
            async with self.engine.begin() as conn:
                return await fn(conn)
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger write failed: {_reason(exc)}") from exc

    async def _read(self, stmt: sa.Executable) -> list[sa.Row[Any]]:
        try:
            async with self.engine.connect() as conn:
                return list((await conn.execute(stmt)).fetchall())
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger read failed: {_reason(exc)}") from exc

    # --- certificates -----------------------------------------------------------------------
    async def reserve_serial(self, **values: Any) -> int | None:
        """Insert a ``reserved`` row; None when (issuer, serial) already exists."""
        values = dict(values, serial=serial_hex(values["serial"]), status="reserved", created_at=time.time())
        if values.get("renews_serial") is not None:
            values["renews_serial"] = serial_hex(values["renews_serial"])

        async def run(conn: AsyncConnection) -> int:
            res = await conn.execute(certificates.insert().values(**values))
            return int(res.inserted_primary_key[0])  # type: ignore[index]

        try:
            return int(await self._write(run))
        except IntegrityError:
            return None

    async def store_issued(self, row_id: int, *, der: bytes, subject: str, not_before: float,
                           not_after: float, audit: dict[str, Any] | None = None,
                           pending_id: int | None = None) -> None:
        """Mark a reserved row issued with its certificate; its audit record and the pending
        request it completes (if any) commit in the same transaction."""

        async def run(conn: AsyncConnection) -> None:
            res = await conn.execute(
                certificates.update()
                .where(certificates.c.id == row_id, certificates.c.status == "reserved")
                .values(status="issued", der=der, subject=subject, not_before=not_before,
                        not_after=not_after, issued_at=time.time())
            )
            if res.rowcount != 1:
                raise LedgerError("reserved serial row vanished")
            if audit is not None:
                await conn.execute(_audit_insert(**audit))
            if pending_id is not None:
                row = (await conn.execute(sa.select(certificates.c.serial, certificates.c.issuer)
                                          .where(certificates.c.id == row_id))).one()
                await conn.execute(pending.update().where(pending.c.id == pending_id)
                                   .values(status="issued", serial=row.serial, issuer=row.issuer))

        await self._write(run)

    async def find_by_serial(self, issuer: str, serial: int) -> CertRecord | None:
        """The row for (issuer, serial), reserved or issued."""
        rows = await self._read(
            sa.select(certificates).where(certificates.c.issuer == issuer,
                                          certificates.c.serial == serial_hex(serial))
        )
        return _cert(rows[0]) if rows else None

    async def find_serial_any_issuer(self, serial: int) -> list[CertRecord]:
        """Issued rows with this serial under any CA (admin commands)."""
        rows = await self._read(sa.select(certificates).where(certificates.c.serial == serial_hex(serial)))
        return [_cert(r) for r in rows]

    async def find_by_transaction(self, profile: str, transaction_id: str) -> list[CertRecord]:
        """Issued rows for (profile, transaction_id), oldest first."""
        rows = await self._read(
            sa.select(certificates)
            .where(certificates.c.profile == profile, certificates.c.transaction_id == transaction_id,
                   certificates.c.status == "issued")
            .order_by(certificates.c.id)
        )
        return [_cert(r) for r in rows]

    async def list_certificates(self, *, profile: str | None = None, status: str | None = "issued",
                                limit: int = 1000) -> list[CertRecord]:
        """Rows newest first."""
        q = sa.select(certificates).order_by(certificates.c.id.desc()).limit(limit)
        if profile:
            q = q.where(certificates.c.profile == profile)
        if status:
            q = q.where(certificates.c.status == status)
        return [_cert(r) for r in await self._read(q)]

    async def count_certificates(self, status: str = "issued") -> int:
        """How many rows have this status."""
        rows = await self._read(sa.select(sa.func.count()).select_from(certificates)
                                .where(certificates.c.status == status))
        return int(rows[0][0])

    async def revoke(self, issuer: str, serial: int, reason: str, at: float) -> bool:
        """Mark an issued certificate revoked; False if unknown or already revoked."""

        async def run(conn: AsyncConnection) -> bool:
            res = await conn.execute(
                certificates.update()
                .where(certificates.c.issuer == issuer, certificates.c.serial == serial_hex(serial),
                       certificates.c.status == "issued", certificates.c.revoked_at.is_(None))
                .values(revoked_at=at, revocation_reason=reason)
            )
            return res.rowcount == 1

        return bool(await self._write(run))

    async def retire(self, issuer: str, serial: int, at: float) -> bool:
        """Mark a device's certificate retired (no renewal); False if unknown or retired."""

        async def run(conn: AsyncConnection) -> bool:
            res = await conn.execute(
                certificates.update()
                .where(certificates.c.issuer == issuer, certificates.c.serial == serial_hex(serial),
                       certificates.c.status == "issued", certificates.c.retired_at.is_(None))
                .values(retired_at=at)
            )
            return res.rowcount == 1

        return bool(await self._write(run))

    async def revoked(self, issuer: str) -> list[CertRecord]:
        """Revoked rows of one CA, oldest revocation first."""
        rows = await self._read(
            sa.select(certificates)
            .where(certificates.c.issuer == issuer, certificates.c.revoked_at.is_not(None))
            .order_by(certificates.c.revoked_at)
        )
        return [_cert(r) for r in rows]

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
        values = dict(values, status="pending", created_at=time.time())

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
        return _pending(rows[0]) if rows else None

    async def get_pending(self, request_id: int) -> PendingRecord | None:
        """One pending-table row by id."""
        rows = await self._read(sa.select(pending).where(pending.c.id == request_id))
        return _pending(rows[0]) if rows else None

    async def list_pending(self, status: str | None = "pending") -> list[PendingRecord]:
        """Rows with this status, oldest first."""
        q = sa.select(pending).order_by(pending.c.id)
        if status:
            q = q.where(pending.c.status == status)
        return [_pending(r) for r in await self._read(q)]

    async def transition_pending(self, request_id: int, old: Sequence[str], new: str, **values: Any) -> bool:
        """Move a request from one of ``old`` to ``new``; False if it was not in ``old``."""

        async def run(conn: AsyncConnection) -> bool:
            res = await conn.execute(
                pending.update().where(pending.c.id == request_id, pending.c.status.in_(list(old)))
                .values(status=new, **values)
            )
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
        """Record a nonce; False when it was seen before (a replay)."""
        try:
            await self._write(lambda conn: conn.execute(nonces.insert().values(scope=scope, nonce=nonce,
                                                                                 seen_at=now)))
            return True
        except IntegrityError:
            return False

    # --- audit ------------------------------------------------------------------------------
    async def audit(self, *, event: str, ok: bool, channel: str | None, profile: str | None,
                    requester: str | None, reason: str, csr_sha256: str | None, serial: int | None,
                    detail: dict[str, Any] | None) -> None:
        """Append one audit record."""
        stmt = _audit_insert(event=event, ok=ok, channel=channel, profile=profile, requester=requester,
                             reason=reason, csr_sha256=csr_sha256, serial=serial, detail=detail)
        await self._write(lambda conn: conn.execute(stmt))

    async def audit_records(self, limit: int = 1000) -> list[AuditRecord]:
        """Newest audit records first."""
        rows = await self._read(sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit))
        out = []
        for r in rows:
            m = dict(r._mapping)
            m["detail"] = json.loads(m["detail"]) if m["detail"] else None
            m["ok"] = bool(m["ok"])
            out.append(AuditRecord(**m))
        return out
