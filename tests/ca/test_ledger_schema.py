"""ca/ledger_schema.py: migrations bring an older ledger up to the current schema, keeping every row.

Migration 6 turns the ``method:principal`` requester strings of versions 1-5 into columns
(ca.records.StoredRequester); a pending row whose prefix names no method this version knows keeps
no method, and a retransmission of it is authenticated again instead of trusted.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import sqlalchemy as sa

from ca.api import AuthMethod
from ca.authentication import stored_requester
from ca.errors import AuthenticationError
from ca.ledger import Ledger
from ca.ledger_schema import MIGRATIONS, certificates, pending, schema_version
from ca.records import PendingStatus, RowStatus, StoredRequester
from enroll.config import Config


async def _as_version_5(ledger: Ledger) -> None:
    """Rewind a fresh ledger to the version-5 shape: no requester columns, no migrations 6 and 7."""

    def rewind(conn: sa.Connection) -> None:
        conn.execute(sa.text("ALTER TABLE certificates DROP COLUMN requester_evidence"))
        conn.execute(sa.text("ALTER TABLE pending_requests DROP COLUMN requester_evidence"))
        conn.execute(sa.text("ALTER TABLE pending_requests DROP COLUMN auth_method"))
        conn.execute(sa.text("ALTER TABLE pending_requests DROP COLUMN renews_serial"))
        conn.execute(schema_version.delete().where(schema_version.c.version >= 6))
        now = time.time()
        conn.execute(sa.text(
            "INSERT INTO certificates (issuer, serial, status, profile, channel, requester, auth_method, "
            "csr_sha256, spki_sha256, created_at) VALUES "
            "('issuing', '1f', 'issued', 'gateway', 'est', 'basic:estuser', 'basic', 'a', 'b', :now), "
            "('issuing', '2f', 'issued', 'gateway', 'est', 'tls-client-cert:CN=gw-1,O=Acme', "
            "'tls-client-cert', 'c', 'd', :now)"), {"now": now})
        conn.execute(sa.text(
            "INSERT INTO pending_requests (profile, channel, requester, csr_der, csr_sha256, spki_sha256, "
            "status, created_at) VALUES "
            "('manual', 'scep', 'challenge:challenge', :der, 'e', 'f', 'pending', :now), "
            "('manual', 'est', 'sorcery:someone', :der, 'g', 'h', 'pending', :now)"), {"now": now, "der": b"\x30\x00"})

    async with ledger.engine.begin() as conn:
        await conn.run_sync(rewind)


async def test_migration_6_splits_the_stored_requester_into_columns(config: Config, ledger_url: str) -> None:
    ledger = Ledger(dataclasses.replace(config, ledger_url=ledger_url).ledger_url)
    try:
        assert await ledger.migrate() == MIGRATIONS[-1][0]
        await _as_version_5(ledger)
        assert await ledger.migrate() == MIGRATIONS[-1][0]
        certs = {r.serial: r for r in await ledger.list_certificates(limit=10)}
        assert certs[0x1F].requester == StoredRequester(AuthMethod.BASIC, "estuser", None)
        assert certs[0x2F].requester == StoredRequester(AuthMethod.TLS_CLIENT_CERT, "CN=gw-1,O=Acme", None)
        assert certs[0x1F].status is RowStatus.ISSUED
        rows = {r.csr_sha256: r for r in await ledger.list_pending(None)}
        assert rows["e"].requester == StoredRequester(AuthMethod.CHALLENGE, "challenge", None)
        assert rows["e"].status is PendingStatus.PENDING
        # An unknown method is kept as written and never guessed.
        assert rows["g"].requester == StoredRequester(None, "sorcery:someone", None)
        with pytest.raises(AuthenticationError):
            stored_requester(rows["g"].requester, "127.0.0.1")
        assert stored_requester(rows["e"].requester, "127.0.0.1").method is AuthMethod.CHALLENGE
        # Migrating again changes nothing.
        assert await ledger.migrate() == MIGRATIONS[-1][0]
        again = await ledger.list_pending(None)
        assert [r.requester for r in again] == [rows["e"].requester, rows["g"].requester]
    finally:
        await ledger.close()


async def test_new_rows_store_method_principal_and_certificate_evidence(config: Config, ledger_url: str) -> None:
    ledger = Ledger(dataclasses.replace(config, ledger_url=ledger_url).ledger_url)
    try:
        await ledger.migrate()
        rid = await ledger.create_pending(profile="manual", channel="est", requester="CN=dev-7",
                                          auth_method="tls-client-cert", requester_evidence="ab" * 32,
                                          csr_der=b"\x30\x00", csr_sha256="x", spki_sha256="y")
        rec = await ledger.get_pending(rid)
        assert rec is not None
        assert rec.requester == StoredRequester(AuthMethod.TLS_CLIENT_CERT, "CN=dev-7", "ab" * 32)
        assert rec.requester.describe() == "tls-client-cert:CN=dev-7"
        async with ledger.engine.connect() as conn:
            stored = (await conn.execute(sa.select(pending.c.requester, pending.c.auth_method)
                                         .where(pending.c.id == rid))).one()
            assert tuple(stored) == ("CN=dev-7", "tls-client-cert")
            assert (await conn.execute(sa.select(sa.func.count()).select_from(certificates))).scalar() == 0
    finally:
        await ledger.close()
