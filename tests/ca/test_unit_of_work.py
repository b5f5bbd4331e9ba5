"""The unit of work (ca/unit_of_work.py, ca/sqlite_writer.py, ca/serials.py): serials reserved in
committed blocks, one read that gates signing, one write that re-asserts it atomically, and
SQLite's group commit (one fsync for many units, each answered after its commit)."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.serialization import Encoding

from ca.errors import AuthenticationError, AuthorizationError, LedgerError
from ca.issuer import Issuer
from ca.ledger import certificates, serial_hex
from ca.serials import SerialPool
from ca.unit_of_work import GateQuery, IssueCommit, LostRace, Replay, audit_values


_DER: list[bytes] = []  # one real certificate's DER: the issuer fixture lints every issued row


@pytest.fixture(autouse=True)
async def _real_der(issuer: Issuer) -> None:
    from ca.api import Issued
    from tests.support import make_csr, request

    out = await issuer.issue(request(make_csr("uow")[0]))
    assert isinstance(out, Issued)
    _DER[:] = [out.certificate.public_bytes(Encoding.DER)]


def _unit(row_id: int, serial: int, **kw: object) -> IssueCommit:
    values = dict(profile="gateway", channel="est", requester="test", auth_method="basic", csr_sha256="0" * 64,
                  spki_sha256="1" * 64, subject="CN=x", der=_DER[0], not_before=0.0, not_after=1.0,
                  transaction_id=kw.pop("transaction_id", None))
    audit = audit_values(event="issue", ok=True, channel="est", profile="gateway", requester="test",
                         reason="issued", csr_sha256=None, serial=serial, detail=None)
    return IssueCommit(row_id=row_id, values=values, audit=audit, **kw)  # type: ignore[arg-type]


async def _status(issuer: Issuer, serial: int) -> str:
    rec = await issuer.ledger.find_by_serial("issuing", serial)
    assert rec is not None
    return rec.status


async def test_a_block_of_serials_is_reserved_in_one_committed_write(issuer: Issuer) -> None:
    before = issuer.ledger.transactions["write"]
    block = await issuer.ledger.reserve_block("issuing", 16)
    assert issuer.ledger.transactions["write"] == before + 1
    assert len({s for _, s in block}) == 16 and all(2**64 <= s < 2**159 for _, s in block)
    assert await issuer.ledger.count_certificates("reserved") >= 16


async def test_commit_reasserts_the_nonce_and_rolls_back_alone(issuer: Issuer) -> None:
    (r1, s1), (r2, s2) = await issuer.ledger.reserve_block("issuing", 2)
    await issuer.ledger.commit_issue(_unit(r1, s1, nonce=("scep:t", "ab")))
    with pytest.raises(Replay):
        await issuer.ledger.commit_issue(_unit(r2, s2, nonce=("scep:t", "ab")))
    assert await _status(issuer, s1) == "issued"
    assert await _status(issuer, s2) == "reserved"  # rolled back; the sweep will abandon it


async def test_a_one_time_challenge_is_consumed_by_exactly_one_of_two_concurrent_commits(issuer: Issuer) -> None:
    from ca.authz import challenge_digest

    await issuer.ledger.add_challenge("gateway", challenge_digest("c1"), time.time() + 60)
    block = await issuer.ledger.reserve_block("issuing", 2)
    results = await asyncio.gather(*(issuer.ledger.commit_issue(
        _unit(r, s, consume_challenge=("gateway", challenge_digest("c1")))) for r, s in block),
        return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["AuthenticationError", "NoneType"]
    assert sum(isinstance(r, AuthenticationError) for r in results) == 1


async def test_the_same_transaction_is_issued_once(issuer: Issuer) -> None:
    (r1, s1), (r2, s2) = await issuer.ledger.reserve_block("issuing", 2)
    await issuer.ledger.commit_issue(_unit(r1, s1, transaction_id="T-1"))
    with pytest.raises(LostRace):
        await issuer.ledger.commit_issue(_unit(r2, s2, transaction_id="T-1"))


async def test_a_retired_device_is_refused_at_commit(issuer: Issuer) -> None:
    (r1, s1), (r2, s2) = await issuer.ledger.reserve_block("issuing", 2)
    await issuer.ledger.commit_issue(_unit(r1, s1, device="d" * 32, device_profile="gateway"))
    await issuer.ledger.retire_device("d" * 32, time.time(), "test", "cessation_of_operation")
    with pytest.raises(AuthorizationError, match="retired"):
        await issuer.ledger.commit_issue(_unit(r2, s2, device="d" * 32, device_profile="gateway"))


async def test_a_lost_reservation_is_never_issued(issuer: Issuer) -> None:
    [(r1, s1)] = await issuer.ledger.reserve_block("issuing", 1)
    await issuer.ledger.abandon_stale_reservations(time.time() + 1)
    with pytest.raises(LedgerError, match="reservation"):
        await issuer.ledger.commit_issue(_unit(r1, s1))
    assert await _status(issuer, s1) == "abandoned"


async def test_gate_reads_every_fact_in_one_transaction(issuer: Issuer) -> None:
    [(r1, s1)] = await issuer.ledger.reserve_block("issuing", 1)
    await issuer.ledger.commit_issue(_unit(r1, s1, transaction_id="T-9", nonce=("scep:t", "cd")))
    before = issuer.ledger.transactions["read"]
    facts = await issuer.ledger.gate(GateQuery(profile="gateway", transaction_id="T-9", pending_lookup=True,
                                               certificate=("issuing", s1), nonce=("scep:t", "cd"),
                                               throttle_keys=(("client", "192.0.2.1"),)))
    assert issuer.ledger.transactions["read"] == before + 1
    assert facts.prior is not None and facts.prior.serial == s1
    assert facts.certificate is not None and facts.nonce_seen and facts.pending is None
    assert facts.throttle[("client", "192.0.2.1")] == (0, None)


async def test_serial_pool_hands_out_each_reserved_serial_once(issuer: Issuer) -> None:
    pool = SerialPool(issuer.ledger, block=8)
    taken = [await pool.take("issuing") for _ in range(20)]
    assert len({t.serial for t in taken}) == 20
    pool.give_back("issuing", taken[-1])
    assert (await pool.take("issuing")).serial == taken[-1].serial


async def test_sqlite_commits_concurrent_units_in_groups(issuer: Issuer) -> None:
    writer = issuer.ledger._writer
    if writer is None:  # PostgreSQL commits each unit in its own transaction, concurrently
        assert not issuer.ledger.is_sqlite
        return
    block = await issuer.ledger.reserve_block("issuing", 60)
    commits = writer.commits
    await asyncio.gather(*(issuer.ledger.commit_issue(_unit(r, s)) for r, s in block))
    assert writer.commits - commits < 60  # one fsync served several units
    async with issuer.ledger.engine.connect() as conn:
        issued = (await conn.execute(sa.select(sa.func.count()).select_from(certificates).where(
            certificates.c.status == "issued",
            certificates.c.serial.in_([serial_hex(s) for _, s in block])))).scalar()
    assert issued == 60
