"""The ledger's connection and transactions: engines for SQLite (WAL, ``synchronous=FULL``,
``BEGIN IMMEDIATE`` writes through one group-commit thread, ca/sqlite_writer.py) and PostgreSQL
(asyncpg), migrations, the unit of work's entry points (docs/ARCHITECTURE.md, "The unit of work"),
and the transaction counter the tests read. The tables' queries are in ca/ledger_certs.py and
ca/ledger.py.
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
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ca.errors import LedgerError
from ca.ledger_schema import MIGRATIONS, audit_log, schema_version
from ca.records import serial_hex
from ca.sqlite_writer import SqliteReader, SqliteWriter


#: Transactions begun by the current task, while a test counts them (:meth:`Ledger.counting`).
_COUNTS: contextvars.ContextVar[Counter[str] | None] = contextvars.ContextVar("ledger_counts", default=None)


def _reason(exc: SQLAlchemyError | OSError) -> str:
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {str(orig).splitlines()[0] if str(orig) else ''}"[:200]


def audit_insert(*, event: str, ok: bool, channel: str | None, profile: str | None,
                  requester: str | None, reason: str, csr_sha256: str | None, serial: int | None,
                  detail: dict[str, Any] | None) -> sa.Insert:
    """The INSERT of one audit row (the append-only trail every decision writes)."""
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


class LedgerBase:
    """The engines, migrations and transactions every ledger query runs in."""

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
        self._reader: SqliteReader | None = None
        if self.is_sqlite:
            self._sqlite_pragmas()
            path = self.url.split(":///", 1)[1] if ":///" in self.url else ""
            if path and path != ":memory:":
                self._writer = SqliteWriter(path)
                self._reader = SqliteReader(path)

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
        """Release every pooled connection (and stop SQLite's writer and reader threads)."""
        await self._restart_threads()
        await self.engine.dispose()

    @property
    def sync_engines(self) -> list[sa.Engine]:
        """Every engine that opens connections to the database (event hooks, e.g. for tests)."""
        return [self.engine.sync_engine] + [t.engine for t in (self._writer, self._reader) if t is not None]

    async def reconnect(self) -> None:
        """Drop every open connection; the next transaction opens new ones."""
        await self._restart_threads()
        await self.engine.dispose()

    async def _restart_threads(self) -> None:
        """Stop SQLite's writer and reader threads (closing their connections); they start
        afresh on the next transaction, like the engine's pool."""
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            await loop.run_in_executor(None, self._writer.close)
            self._writer = SqliteWriter(self._writer.path)
        if self._reader is not None:
            await loop.run_in_executor(None, self._reader.close)
            self._reader = SqliteReader(self._reader.path)

    # --- the unit of work (ca/unit_of_work.py) ----------------------------------------------
    async def run_read(self, fn: Callable[[sa.Connection], Any]) -> Any:
        """Run a synchronous read function in one read transaction."""
        self._count("read")
        try:
            if self._reader is not None:
                return await self._reader.run(fn)
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
