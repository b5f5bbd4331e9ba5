"""ca/ledger.py on SQLite and PostgreSQL: pending requests (RFC 7030 §4.2.3, RFC 8894 §3.3.2)
move between :class:`PendingStatus` values and only one caller wins a transition; one-time
credentials and challenges are used once; a replayed nonce is refused (RFC 8894 §3.2.1.5) and old
ones are pruned; the throttle's failures are counted per key; the audit trail is filtered as the
admin views ask."""

from __future__ import annotations

import asyncio
from typing import Any

from ca.api import AuthMethod
from ca.ledger import Ledger
from ca.ledger_schema import NONCE_PRUNE_INTERVAL_SECONDS, NONCE_RETENTION_SECONDS
from ca.records import PendingStatus, StoredRequester
from tests.ca.test_ledger_base import ledger  # noqa: F401  # the fixture: a migrated ledger of its own

NOW = 1_800_000_000.0


async def _pending(ledger: Ledger, *, profile: str = "manual", csr: str = "c1", txn: str | None = None) -> int:
    return await ledger.create_pending(profile=profile, channel="scep", requester="challenge",
                                       auth_method=AuthMethod.CHALLENGE.value, requester_evidence=None,
                                       csr_der=b"\x30\x00", csr_sha256=csr, spki_sha256="s-" + csr,
                                       transaction_id=txn, subject="CN=dev")


# --- pending requests ---------------------------------------------------------------------

async def test_a_new_pending_request_waits_with_its_requester(ledger: Ledger) -> None:
    rid = await _pending(ledger, txn="t-1")
    rec = await ledger.get_pending(rid)
    assert rec is not None and rec.id == rid
    assert rec.status is PendingStatus.PENDING
    assert rec.requester == StoredRequester(AuthMethod.CHALLENGE, "challenge", None)
    assert (rec.profile, rec.channel, rec.csr_der, rec.transaction_id) == ("manual", "scep", b"\x30\x00", "t-1")
    assert rec.decided_at is None and rec.serial is None
    assert await ledger.get_pending(rid + 1000) is None


async def test_find_pending_by_transaction_or_csr_hash_returns_the_newest_of_its_profile(ledger: Ledger) -> None:
    first = await _pending(ledger, csr="same", txn="t-1")
    newer = await _pending(ledger, csr="same", txn="t-2")
    await _pending(ledger, profile="other", csr="same", txn="t-2")
    found = await ledger.find_pending("manual", csr_sha256="same")
    assert found is not None and found.id == newer
    found = await ledger.find_pending("manual", transaction_id="t-1")
    assert found is not None and found.id == first
    # The transaction ID decides when both are given; nothing to match on finds nothing.
    found = await ledger.find_pending("manual", csr_sha256="same", transaction_id="t-1")
    assert found is not None and found.id == first
    assert await ledger.find_pending("manual") is None
    assert await ledger.find_pending("manual", transaction_id="t-9") is None
    assert await ledger.find_pending("nobody", csr_sha256="same") is None


async def test_list_pending_filters_by_status_oldest_first(ledger: Ledger) -> None:
    a, b, c = [await _pending(ledger, csr=f"c{i}") for i in range(3)]
    assert await ledger.transition_pending(b, [PendingStatus.PENDING], PendingStatus.REJECTED,
                                           decided_at=NOW, decided_by="op", reason="no")
    assert [r.id for r in await ledger.list_pending()] == [a, c]
    assert [r.id for r in await ledger.list_pending(PendingStatus.REJECTED)] == [b]
    assert [r.id for r in await ledger.list_pending(None)] == [a, b, c]
    rejected = await ledger.get_pending(b)
    assert rejected is not None
    assert (rejected.status, rejected.decided_at, rejected.decided_by, rejected.reason) == (
        PendingStatus.REJECTED, NOW, "op", "no")


async def test_transition_happens_only_from_the_named_states(ledger: Ledger) -> None:
    rid = await _pending(ledger)
    assert not await ledger.transition_pending(rid, [PendingStatus.APPROVED], PendingStatus.ISSUING)
    assert await ledger.transition_pending(rid, [PendingStatus.PENDING], PendingStatus.APPROVED)
    assert not await ledger.transition_pending(rid, [PendingStatus.PENDING], PendingStatus.REJECTED)
    rec = await ledger.get_pending(rid)
    assert rec is not None and rec.status is PendingStatus.APPROVED
    assert not await ledger.transition_pending(rid + 1000, [PendingStatus.PENDING], PendingStatus.APPROVED)


async def test_only_one_of_concurrent_callers_moves_an_approved_request_to_issuing(ledger: Ledger) -> None:
    rid = await _pending(ledger)
    assert await ledger.transition_pending(rid, [PendingStatus.PENDING], PendingStatus.APPROVED)
    wins = await asyncio.gather(*[ledger.transition_pending(rid, [PendingStatus.APPROVED], PendingStatus.ISSUING)
                                  for _ in range(6)])
    assert sorted(wins) == [False] * 5 + [True]
    rec = await ledger.get_pending(rid)
    assert rec is not None and rec.status is PendingStatus.ISSUING


# --- one-time credentials -----------------------------------------------------------------

def _credential(cid: str, **kw: Any) -> dict[str, Any]:
    row = dict(id=cid, digest="d-" + cid, profile="gateway", bind="serialNumber", device="dev-" + cid, uses=1,
               uses_left=1, created_at=NOW, created_by="operator:admin", expires_at=NOW + 3600)
    row.update(kw)
    return row


async def test_credentials_are_listed_newest_first_and_filtered_by_profile_and_usability(ledger: Ledger) -> None:
    await ledger.add_credentials([
        _credential("a", created_at=NOW), _credential("b", created_at=NOW + 1),
        _credential("spent", created_at=NOW + 2, uses_left=0),
        _credential("expired", created_at=NOW + 3, expires_at=NOW + 10),
        _credential("other", created_at=NOW + 4, profile="manual"),
    ])
    await ledger.add_credentials([])  # nothing to store is not an error
    assert [r.id for r in await ledger.list_credentials()] == ["other", "expired", "spent", "b", "a"]
    assert [r.id for r in await ledger.list_credentials(profile="gateway", usable_at=NOW + 100)] == ["b", "a"]
    assert [r.id for r in await ledger.list_credentials(usable_at=NOW + 5)] == ["other", "expired", "b", "a"]
    assert [r.id for r in await ledger.list_credentials(limit=2)] == ["other", "expired"]
    rec = await ledger.get_credential("a")
    assert rec is not None and (rec.device, rec.uses_left, rec.created_by) == ("dev-a", 1, "operator:admin")
    assert not hasattr(rec, "digest")
    assert await ledger.get_credential("nobody") is None


async def test_a_credential_is_revoked_once_and_is_then_unusable(ledger: Ledger) -> None:
    await ledger.add_credentials([_credential("a")])
    assert await ledger.revoke_credential("a", NOW + 5)
    assert not await ledger.revoke_credential("a", NOW + 6)
    assert not await ledger.revoke_credential("nobody", NOW)
    rec = await ledger.get_credential("a")
    assert rec is not None and rec.revoked_at == NOW + 5 and not rec.usable(NOW + 10)
    assert await ledger.list_credentials(usable_at=NOW + 10) == []


# --- challenges and nonces ----------------------------------------------------------------

async def test_a_one_time_challenge_is_consumed_once_before_it_expires_for_its_profile(ledger: Ledger) -> None:
    await ledger.add_challenge("gateway", "11" * 32, NOW + 60)
    await ledger.add_challenge("gateway", "22" * 32, NOW + 60)
    assert not await ledger.consume_challenge("manual", "11" * 32, NOW)  # another profile's
    assert not await ledger.consume_challenge("gateway", "33" * 32, NOW)  # unknown
    assert not await ledger.consume_challenge("gateway", "22" * 32, NOW + 60)  # expired at its deadline
    assert await ledger.consume_challenge("gateway", "11" * 32, NOW)
    assert not await ledger.consume_challenge("gateway", "11" * 32, NOW + 1)


async def test_concurrent_consumers_of_one_challenge_have_one_winner(ledger: Ledger) -> None:
    await ledger.add_challenge("gateway", "44" * 32, NOW + 60)
    wins = await asyncio.gather(*[ledger.consume_challenge("gateway", "44" * 32, NOW) for _ in range(6)])
    assert sorted(wins) == [False] * 5 + [True]


async def test_a_replayed_nonce_is_refused_within_its_scope(ledger: Ledger) -> None:
    assert not await ledger.nonce_seen("scep", "ab")
    assert await ledger.remember_nonce("scep", "ab", NOW)
    assert await ledger.nonce_seen("scep", "ab")
    assert not await ledger.remember_nonce("scep", "ab", NOW + 1)
    assert await ledger.remember_nonce("other", "ab", NOW + 1)  # scopes are separate
    assert not await ledger.nonce_seen("scep", "cd")


async def test_prune_nonces_forgets_only_those_seen_before(ledger: Ledger) -> None:
    assert await ledger.remember_nonce("scep", "old", NOW - 100)
    assert await ledger.remember_nonce("scep", "new", NOW)
    assert await ledger.prune_nonces(NOW - 50) == 1
    assert not await ledger.nonce_seen("scep", "old") and await ledger.nonce_seen("scep", "new")
    assert await ledger.prune_nonces(NOW - 50) == 0


async def test_remember_nonce_prunes_expired_nonces_at_most_once_an_interval(ledger: Ledger) -> None:
    expired = NOW - NONCE_RETENTION_SECONDS - 10
    assert await ledger.remember_nonce("scep", "old", expired)
    assert await ledger.remember_nonce("scep", "a", NOW)  # prunes: "old" is past its retention
    assert not await ledger.nonce_seen("scep", "old")
    assert await ledger.remember_nonce("scep", "stale", expired)
    assert await ledger.remember_nonce("scep", "b", NOW + 60)  # less than an interval since the last prune
    assert await ledger.nonce_seen("scep", "stale")
    assert await ledger.remember_nonce("scep", "c", NOW + NONCE_PRUNE_INTERVAL_SECONDS)
    assert not await ledger.nonce_seen("scep", "stale")
    assert all([await ledger.nonce_seen("scep", n) for n in ("a", "b", "c")])


# --- the throttle's failures --------------------------------------------------------------

async def test_auth_failures_are_counted_per_scope_and_key_since_a_time(ledger: Ledger) -> None:
    await ledger.record_auth_failure([("client", "192.0.2.1"), ("identity", "gw-1")], NOW)
    await ledger.record_auth_failure([("client", "192.0.2.1")], NOW + 10)
    await ledger.record_auth_failure([], NOW + 20)  # nothing to record is not an error
    assert await ledger.count_auth_failures("client", "192.0.2.1", NOW) == 2
    assert await ledger.count_auth_failures("client", "192.0.2.1", NOW + 5) == 1
    assert await ledger.count_auth_failures("identity", "192.0.2.1", NOW) == 0
    assert await ledger.auth_failure_stats("client", "192.0.2.1", NOW) == (2, NOW + 10)
    assert await ledger.auth_failure_stats("client", "198.51.100.1", NOW) == (0, None)
    await ledger.prune_auth_failures(NOW + 5)
    assert await ledger.count_auth_failures("client", "192.0.2.1", 0) == 1
    assert await ledger.count_auth_failures("identity", "gw-1", 0) == 0


async def test_an_overlong_failure_key_is_counted_under_its_first_200_characters(ledger: Ledger) -> None:
    long_key = "x" * 500
    await ledger.record_auth_failure([("identity", long_key)], NOW)
    assert await ledger.count_auth_failures("identity", long_key, NOW) == 1
    assert await ledger.count_auth_failures("identity", "x" * 200 + "y", NOW) == 1
    assert await ledger.count_auth_failures("identity", "x" * 199, NOW) == 0


# --- the audit trail ----------------------------------------------------------------------

async def _audit(ledger: Ledger, event: str, *, ok: bool = True, serial: int | None = None,
                 detail: dict[str, Any] | None = None) -> None:
    await ledger.audit(event=event, ok=ok, channel="est", profile="gateway", requester="basic:u",
                       reason="why", csr_sha256=None, serial=serial, detail=detail)


async def test_audit_records_come_back_newest_first_with_their_values(ledger: Ledger) -> None:
    await _audit(ledger, "issue", serial=0xABC, detail={"device": "d1", "n": 1})
    await _audit(ledger, "reject", ok=False)
    records = await ledger.audit_records()
    assert [r.event for r in records] == ["reject", "issue"]
    assert records[0].ok is False and records[0].detail is None and records[0].serial is None
    issue = records[1]
    assert (issue.ok, issue.serial, issue.detail, issue.channel, issue.requester, issue.reason) == (
        True, "abc", {"device": "d1", "n": 1}, "est", "basic:u", "why")
    assert records[0].id > issue.id and records[0].at >= issue.at


async def test_audit_records_filter_by_serial_device_event_time_and_page(ledger: Ledger) -> None:
    await _audit(ledger, "issue", serial=1, detail={"device": "d1"})
    await _audit(ledger, "issue", serial=2, detail={"device": "d2"})
    await _audit(ledger, "revoke", serial=1)
    await _audit(ledger, "device-retire", detail={"device": "d1"})
    everything = await ledger.audit_records()
    assert [r.event for r in everything] == ["device-retire", "revoke", "issue", "issue"]
    assert [r.serial for r in await ledger.audit_records(serials=[1])] == ["1", "1"]
    assert [r.serial for r in await ledger.audit_records(serials=[1, 2])] == ["1", "2", "1"]
    assert await ledger.audit_records(serials=[]) == []
    assert [(r.event, r.serial) for r in await ledger.audit_records(device="d1")] == [
        ("device-retire", None), ("issue", "1")]
    # Serials and device together: the device's own records or its certificates'.
    assert len(await ledger.audit_records(serials=[1], device="d1")) == 3
    assert [r.serial for r in await ledger.audit_records(event="issue")] == ["2", "1"]
    assert len(await ledger.audit_records(limit=2)) == 2
    page = await ledger.audit_records(before_id=everything[1].id)
    assert [r.id for r in page] == [r.id for r in everything[2:]]
    start = everything[-1].at
    assert len(await ledger.audit_records(since=start)) == 4
    assert await ledger.audit_records(until=start) == []
    assert len(await ledger.audit_records(since=everything[0].at + 1)) == 0
