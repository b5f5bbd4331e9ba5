"""ca/ledger_base.py: the ledger's engines, migrations and transactions, on SQLite and PostgreSQL.

Migrations apply each once and report the version in force; every query runs in one counted
transaction (what the unit-of-work tests read); a database error in a read or a write becomes a
:class:`ca.errors.LedgerError`, while a core refusal raised inside a write rolls it back and passes
through unchanged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from ca.errors import AuthorizationError, LedgerError
from ca.ledger import Ledger
from ca.ledger_base import audit_insert, sqlalchemy_url
from ca.ledger_schema import MIGRATIONS, challenges, schema_version


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    """A migrated ledger of its own on the test's backend (SQLite file or PostgreSQL database);
    no certificates are issued through it, so the issuer fixture's lint has nothing to read."""
    led = Ledger(ledger_url)
    await led.migrate()
    yield led
    await led.close()


async def _count(ledger: Ledger, table: sa.Table) -> int:
    return int(await ledger.run_read(lambda c: c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()))


def test_sqlalchemy_url_maps_the_config_url_to_an_async_driver() -> None:
    assert sqlalchemy_url("sqlite:////var/lib/enroll/ledger.db") == "sqlite+aiosqlite:////var/lib/enroll/ledger.db"
    assert sqlalchemy_url("postgresql://u:p@127.0.0.1:5432/db") == "postgresql+asyncpg://u:p@127.0.0.1:5432/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert sqlalchemy_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"


async def test_migrate_is_idempotent_and_returns_the_last_version(ledger: Ledger) -> None:
    last = MIGRATIONS[-1][0]
    assert await ledger.migrate() == last  # the fixture migrated once already
    assert await ledger.migrate() == last
    versions = await ledger.run_read(lambda c: c.execute(sa.select(schema_version.c.version)
                                                         .order_by(schema_version.c.version)).scalars().all())
    assert list(versions) == [v for v, _ in MIGRATIONS]


async def test_counting_counts_one_read_and_one_write_of_this_task(ledger: Ledger) -> None:
    before = ledger.transactions.copy()
    with ledger.counting() as counts:
        assert await ledger.find_by_serial("issuing", 0x1234) is None
    assert dict(counts) == {"read": 1}
    with ledger.counting() as counts:
        await ledger.add_challenge("gateway", "ab" * 32, 4_000_000_000.0)
    assert dict(counts) == {"write": 1}
    with ledger.counting() as counts:
        await ledger.run_read(lambda c: c.execute(sa.select(sa.literal(1))).scalar_one())
        await ledger.run_write(lambda c: c.execute(sa.select(sa.literal(1))).scalar_one())
    assert dict(counts) == {"read": 1, "write": 1}
    # The ledger-wide counter saw the same four transactions.
    assert ledger.transactions["read"] - before["read"] == 2
    assert ledger.transactions["write"] - before["write"] == 2


async def test_run_read_turns_a_database_error_into_a_ledger_error(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="ledger read failed"):
        await ledger.run_read(lambda c: c.execute(sa.text("SELECT * FROM no_such_table")))


async def test_run_write_turns_a_database_error_into_a_ledger_error_and_keeps_nothing(ledger: Ledger) -> None:
    def insert_then_fail(conn: sa.Connection) -> None:
        conn.execute(challenges.insert().values(profile="gateway", digest="cd" * 32, created_at=1.0, expires_at=2.0))
        conn.execute(sa.text("INSERT INTO no_such_table VALUES (1)"))

    with pytest.raises(LedgerError, match="ledger write failed"):
        await ledger.run_write(insert_then_fail)
    assert await _count(ledger, challenges) == 0


async def test_run_write_lets_a_refusal_through_and_rolls_back(ledger: Ledger) -> None:
    def insert_then_refuse(conn: sa.Connection) -> None:
        conn.execute(challenges.insert().values(profile="gateway", digest="ef" * 32, created_at=1.0, expires_at=2.0))
        raise AuthorizationError("device retired")

    with pytest.raises(AuthorizationError, match="device retired"):
        await ledger.run_write(insert_then_refuse)
    assert await _count(ledger, challenges) == 0
    # A later write on the same ledger still commits.
    await ledger.run_write(lambda c: c.execute(challenges.insert().values(
        profile="gateway", digest="01" * 32, created_at=1.0, expires_at=2.0)))
    assert await _count(ledger, challenges) == 1


async def test_a_ledger_that_cannot_reach_its_database_raises_ledger_error(ledger: Ledger) -> None:
    broken = Ledger("postgresql://nobody@127.0.0.1:1/none" if not ledger.is_sqlite
                    else "sqlite:////nonexistent-dir/ledger.db")
    try:
        with pytest.raises(LedgerError):
            await broken.find_by_serial("issuing", 1)
        with pytest.raises(LedgerError):
            await broken.migrate()
    finally:
        await broken.close()


def test_audit_insert_spells_the_serial_in_hex_and_the_detail_as_sorted_json() -> None:
    stmt = audit_insert(event="issue", ok=True, channel="est", profile="gateway", requester="basic:u",
                        reason="issued", csr_sha256=None, serial=0xABC, detail={"b": 1, "a": 2})
    params = stmt.compile().params
    assert params["serial"] == "abc"
    assert params["detail"] == json.dumps({"a": 2, "b": 1}) == '{"a": 2, "b": 1}'
    empty = audit_insert(event="x", ok=False, channel=None, profile=None, requester=None, reason="",
                         csr_sha256=None, serial=None, detail={}).compile().params
    assert empty["serial"] is None and empty["detail"] is None
