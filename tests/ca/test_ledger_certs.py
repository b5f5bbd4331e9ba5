"""ca/ledger_certs.py on SQLite and PostgreSQL: a serial is reserved before signing and never
reused (RFC 5280 §4.1.2.2), the reserved row becomes issued with its audit record and device in
one commit; revocation, certificateHold and its release (RFC 5280 §5.3.1), retirement; listings by
:class:`CertState` agree with ``CertRecord.state`` row by row, notAfter inclusive (§4.1.2.5); the
CRL number only grows (§5.2.3)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ca.api import AuthMethod
from ca.errors import AuthorizationError, LedgerError
from ca.ledger import Ledger
from ca.records import CertificateQuery, CertRecord, CertState, PendingStatus, RowStatus
from tests.ca.test_ledger_base import ledger  # noqa: F401  # the fixture: a migrated ledger of its own

NOW = 1_800_000_000.0
DAY = 86400.0


async def _reserve(ledger: Ledger, serial: int, *, issuer: str = "issuing", profile: str = "gateway",
                   txn: str | None = None, channel: str = "est", refuse_retired: str | None = None) -> int | None:
    return await ledger.reserve_serial(issuer=issuer, serial=serial, profile=profile, channel=channel,
                                       requester="estuser", auth_method=AuthMethod.BASIC.value,
                                       csr_sha256=f"csr-{serial:x}", spki_sha256=f"spki-{serial:x}",
                                       transaction_id=txn, refuse_retired=refuse_retired)


async def _issue(ledger: Ledger, serial: int, *, subject: str = "CN=gw-1", not_after: float = NOW + 30 * DAY,
                 device: str | None = None, sans: Sequence[str] = (), **kw: str) -> int:
    rid = await _reserve(ledger, serial, **kw)
    assert rid is not None
    await ledger.store_issued(rid, der=b"der-%x" % serial, subject=subject, not_before=NOW - DAY,
                              not_after=not_after, device=device, device_profile=kw.get("profile", "gateway"),
                              sans=sans)
    return rid


async def _record(ledger: Ledger, serial: int, issuer: str = "issuing") -> CertRecord:
    rec = await ledger.find_by_serial(issuer, serial)
    assert rec is not None
    return rec


# --- reservation and storage --------------------------------------------------------------

async def test_a_serial_is_reserved_once_per_issuer(ledger: Ledger) -> None:
    rid = await _reserve(ledger, 0x1001)
    assert rid is not None
    assert await _reserve(ledger, 0x1001) is None
    assert await _reserve(ledger, 0x1001, issuer="other-ca") is not None
    rec = await _record(ledger, 0x1001)
    assert (rec.id, rec.status, rec.der, rec.serial, rec.csr_sha256) == (
        rid, RowStatus.RESERVED, None, 0x1001, "csr-1001")
    assert await ledger.count_certificates("reserved") == 2 and await ledger.count_certificates("issued") == 0


async def test_a_retired_device_reserves_nothing(ledger: Ledger) -> None:
    await _issue(ledger, 0x2001, device="dev-1")
    assert await ledger.retire_device("dev-1", NOW, "operator:admin", "decommissioned")
    with pytest.raises(AuthorizationError, match="retired"):
        await _reserve(ledger, 0x2002, refuse_retired="dev-1")
    assert await ledger.find_by_serial("issuing", 0x2002) is None
    assert await _reserve(ledger, 0x2003, refuse_retired="dev-2") is not None  # unknown device: a new one


async def test_store_issued_commits_row_device_audit_and_pending_together(ledger: Ledger) -> None:
    pid = await ledger.create_pending(profile="gateway", channel="est", requester="estuser", auth_method="basic",
                                      csr_der=b"\x30\x00", csr_sha256="csr-3001", spki_sha256="spki-3001")
    rid = await _reserve(ledger, 0x3001)
    assert rid is not None
    audit = dict(event="issue", ok=True, channel="est", profile="gateway", requester="basic:estuser",
                 reason="issued", csr_sha256="csr-3001", serial=0x3001, detail={"device": "dev-3"})
    await ledger.store_issued(rid, der=b"cert", subject="CN=gw-3", not_before=NOW, not_after=NOW + DAY,
                              audit=audit, pending_id=pid, device="dev-3", device_profile="gateway",
                              sans=["dns:gw-3.example"])
    rec = await _record(ledger, 0x3001)
    assert (rec.status, rec.der, rec.subject, rec.not_after, rec.device) == (
        RowStatus.ISSUED, b"cert", "CN=gw-3", NOW + DAY, "dev-3")
    assert rec.issued_at is not None and rec.state(NOW) is CertState.VALID
    device = await ledger.get_device("dev-3", now=NOW)
    assert device is not None
    assert (device.profile, device.subject, device.sans, device.certificates, device.active) == (
        "gateway", "CN=gw-3", ["dns:gw-3.example"], 1, 1)
    [written] = await ledger.audit_records(serials=[0x3001])
    assert (written.event, written.detail) == ("issue", {"device": "dev-3"})
    pending = await ledger.get_pending(pid)
    assert pending is not None and (pending.status, pending.serial, pending.issuer) == (
        PendingStatus.ISSUED, 0x3001, "issuing")
    # The row is no longer reserved: storing into it again fails and changes nothing.
    with pytest.raises(LedgerError, match="vanished"):
        await ledger.store_issued(rid, der=b"other", subject="CN=x", not_before=NOW, not_after=NOW + DAY)
    assert (await _record(ledger, 0x3001)).der == b"cert"


async def test_lookups_by_serials_any_issuer_and_transaction(ledger: Ledger) -> None:
    await _issue(ledger, 0x4001, txn="t-1")
    await _issue(ledger, 0x4002, txn="t-1")
    await _issue(ledger, 0x4001, issuer="other-ca")
    await _reserve(ledger, 0x4003, txn="t-1")  # reserved rows are no answer to a transaction
    found = await ledger.find_by_serials([("issuing", 0x4002), ("issuing", 0x9999), ("other-ca", 0x4001)])
    assert [r.serial if r else None for r in found] == [0x4002, None, 0x4001]
    assert found[2] is not None and found[2].issuer == "other-ca"
    assert sorted(r.issuer for r in await ledger.find_serial_any_issuer(0x4001)) == ["issuing", "other-ca"]
    assert [r.serial for r in await ledger.find_by_transaction("gateway", "t-1")] == [0x4001, 0x4002]
    assert await ledger.find_by_transaction("manual", "t-1") == []


async def test_list_and_count_certificates_by_status_profile_and_channel(ledger: Ledger) -> None:
    await _issue(ledger, 0x5001)
    await _issue(ledger, 0x5002, profile="manual", channel="scep")
    await _reserve(ledger, 0x5003)
    assert [r.serial for r in await ledger.list_certificates()] == [0x5002, 0x5001]
    assert [r.serial for r in await ledger.list_certificates(profile="manual")] == [0x5002]
    assert [r.serial for r in await ledger.list_certificates(status=RowStatus.RESERVED)] == [0x5003]
    assert len(await ledger.list_certificates(status=None)) == 3
    assert len(await ledger.list_certificates(limit=1)) == 1
    assert await ledger.count_certificates() == 2
    assert await ledger.count_certificates(channels=["scep"]) == 1
    assert await ledger.count_certificates("reserved", channels=["scep"]) == 0


async def test_abandoned_reservations_keep_their_serial_and_are_audited(ledger: Ledger) -> None:
    stale = await _reserve(ledger, 0x6001)
    kept = await _reserve(ledger, 0x6002)
    given_back = await _reserve(ledger, 0x6003)
    assert stale is not None and kept is not None and given_back is not None
    assert await ledger.abandon_reserved([given_back, 999_999]) == 1
    assert await ledger.abandon_reserved([]) == 0
    changed = await ledger.abandon_stale_reservations(created_before=(await _record(ledger, 0x6002)).created_at)
    assert changed == [("issuing", "6001")]
    states = {s: (await _record(ledger, s)).status for s in (0x6001, 0x6002, 0x6003)}
    assert states == {0x6001: RowStatus.ABANDONED, 0x6002: RowStatus.RESERVED, 0x6003: RowStatus.ABANDONED}
    assert {r.serial for r in await ledger.audit_records(event="abandon-reservation")} == {"6001", "6003"}
    assert await _reserve(ledger, 0x6001) is None  # never reused


# --- revocation, hold, retirement ---------------------------------------------------------

async def test_revoke_once_and_a_hold_may_become_permanent(ledger: Ledger) -> None:
    await _issue(ledger, 0x7001)
    await _issue(ledger, 0x7002)
    await _reserve(ledger, 0x7003)
    assert await ledger.revoke("issuing", 0x7001, "key_compromise", NOW)
    assert not await ledger.revoke("issuing", 0x7001, "superseded", NOW + 1)
    assert not await ledger.revoke("issuing", 0x7001, "certificate_hold", NOW + 1)
    assert not await ledger.revoke("issuing", 0x7003, "key_compromise", NOW)  # only issued rows
    assert not await ledger.revoke("issuing", 0x9999, "key_compromise", NOW)
    assert await ledger.revoke("issuing", 0x7002, "certificate_hold", NOW)
    assert not await ledger.revoke("issuing", 0x7002, "certificate_hold", NOW + 1)
    assert (await _record(ledger, 0x7002)).state(NOW) is CertState.ON_HOLD
    assert await ledger.revoke("issuing", 0x7002, "key_compromise", NOW + 2)
    held_then_revoked = await _record(ledger, 0x7002)
    assert (held_then_revoked.revoked_at, held_then_revoked.revocation_reason) == (NOW + 2, "key_compromise")
    assert not await ledger.release_hold("issuing", 0x7002)
    assert await ledger.revoked_entries("issuing") == [(0x7001, NOW, "key_compromise"),
                                                         (0x7002, NOW + 2, "key_compromise")]


async def test_release_hold_makes_a_held_certificate_valid_and_leaves_the_crl(ledger: Ledger) -> None:
    await _issue(ledger, 0x7101)
    assert not await ledger.release_hold("issuing", 0x7101)
    assert await ledger.revoke("issuing", 0x7101, "certificate_hold", NOW)
    assert await ledger.revoked_entries("issuing") == [(0x7101, NOW, "certificate_hold")]
    assert await ledger.release_hold("issuing", 0x7101)
    rec = await _record(ledger, 0x7101)
    assert rec.revoked_at is None and rec.revocation_reason is None and rec.state(NOW) is CertState.VALID
    assert await ledger.revoked_entries("issuing") == []


async def test_retire_a_certificate_once(ledger: Ledger) -> None:
    await _issue(ledger, 0x7201)
    assert await ledger.retire("issuing", 0x7201, NOW)
    assert not await ledger.retire("issuing", 0x7201, NOW + 1)
    assert not await ledger.retire("issuing", 0x9999, NOW)
    rec = await _record(ledger, 0x7201)
    assert rec.retired_at == NOW and rec.state(NOW) is CertState.RETIRED


async def test_devices_are_listed_filtered_and_retired_with_their_certificates(ledger: Ledger) -> None:
    await _issue(ledger, 0x8001, subject="CN=alpha_1", device="dev-a", sans=["dns:alpha.example"])
    await _issue(ledger, 0x8002, subject="CN=alpha_1", device="dev-a", sans=["dns:alpha.example"])
    await _issue(ledger, 0x8003, subject="CN=beta", device="dev-b", profile="manual")
    assert await ledger.revoke("issuing", 0x8001, "superseded", NOW)
    a = await ledger.get_device("dev-a", now=NOW)
    assert a is not None and (a.certificates, a.active, a.retired) == (2, 1, False)
    assert await ledger.get_device("dev-z") is None
    assert [d.device for d in await ledger.list_devices(now=NOW)] == ["dev-a", "dev-b"]
    assert [d.device for d in await ledger.list_devices(profile="manual")] == ["dev-b"]
    assert [d.device for d in await ledger.list_devices(text="ALPHA.EX")] == ["dev-a"]  # SANs, any case
    assert [d.device for d in await ledger.list_devices(text="a_1")] == ["dev-a"]
    assert await ledger.list_devices(text="a%") == []  # LIKE wildcards are literal
    assert [d.device for d in await ledger.list_devices(text="dev-b")] == ["dev-b"]  # the key itself
    assert [d.device for d in await ledger.list_devices(after="dev-a")] == ["dev-b"]
    assert len(await ledger.list_devices(limit=1)) == 1

    assert await ledger.retire_device("dev-a", NOW, "operator:admin", "sold")
    assert not await ledger.retire_device("dev-a", NOW + 1, "operator:admin", "again")
    assert not await ledger.retire_device("dev-z", NOW, "operator:admin", "unknown")
    assert await ledger.device_retired("dev-a") and not await ledger.device_retired("dev-b")
    retired = await ledger.get_device("dev-a")
    assert retired is not None and (retired.retired_at, retired.retired_by, retired.retire_reason) == (
        NOW, "operator:admin", "sold")
    assert (await _record(ledger, 0x8002)).retired_at == NOW
    assert (await _record(ledger, 0x8003)).retired_at is None
    assert [d.device for d in await ledger.list_devices(retired=True)] == ["dev-a"]
    assert [d.device for d in await ledger.list_devices(retired=False)] == ["dev-b"]


# --- listings by state: state_is agrees with CertRecord.state -----------------------------

async def _one_of_each_state(ledger: Ledger) -> None:
    """Issued rows in every state at NOW, and on both sides of the notAfter boundary."""
    await _issue(ledger, 0xA001, subject="CN=valid")
    await _issue(ledger, 0xA002, subject="CN=held")
    await ledger.revoke("issuing", 0xA002, "certificate_hold", NOW - 60)
    await _issue(ledger, 0xA003, subject="CN=revoked")
    await ledger.revoke("issuing", 0xA003, "key_compromise", NOW - 60)
    await _issue(ledger, 0xA004, subject="CN=expired", not_after=NOW - 0.5)
    await _issue(ledger, 0xA005, subject="CN=retired")
    await ledger.retire("issuing", 0xA005, NOW - 60)
    await _issue(ledger, 0xA006, subject="CN=last-second", not_after=NOW)  # notAfter inclusive
    await _issue(ledger, 0xA007, subject="CN=expired-retired", not_after=NOW - DAY)
    await ledger.retire("issuing", 0xA007, NOW - 60)
    await _issue(ledger, 0xA008, subject="CN=held-expired", not_after=NOW - DAY)
    await ledger.revoke("issuing", 0xA008, "certificate_hold", NOW - 2 * DAY)
    await _issue(ledger, 0xA009, subject="CN=manual", profile="manual", not_after=NOW + 2 * DAY)
    await _reserve(ledger, 0xA00A)  # never counted: not issued


async def test_every_state_listing_agrees_with_the_record_state(ledger: Ledger) -> None:
    await _one_of_each_state(ledger)
    rows = await ledger.list_certificates(limit=100)
    expected = {0xA001: CertState.VALID, 0xA002: CertState.ON_HOLD, 0xA003: CertState.REVOKED,
                0xA004: CertState.EXPIRED, 0xA005: CertState.RETIRED, 0xA006: CertState.VALID,
                0xA007: CertState.EXPIRED, 0xA008: CertState.ON_HOLD, 0xA009: CertState.VALID}
    assert {r.serial: r.state(NOW) for r in rows} == expected
    for state in CertState:
        listed = await ledger.query_certificates(CertificateQuery(state=state.value), now=NOW)
        assert sorted(r.serial for r in listed) == sorted(s for s, st in expected.items() if st is state), state
    # A moment later the last second's certificate is expired, in SQL as in Python.
    later = await ledger.query_certificates(CertificateQuery(state="expired"), now=NOW + 0.25)
    assert 0xA006 in {r.serial for r in later}
    assert (await _record(ledger, 0xA006)).state(NOW + 0.25) is CertState.EXPIRED


async def test_counts_by_profile_are_the_state_listings_counted(ledger: Ledger) -> None:
    await _one_of_each_state(ledger)
    counts = await ledger.counts_by_profile(NOW, horizons=(NOW + 3 * DAY, NOW + 60 * DAY))
    assert counts["gateway"] == {"valid": 2, "on_hold": 2, "revoked": 1, "expired": 2, "retired": 1,
                                 "expiring_0": 1, "expiring_1": 2}
    assert counts["manual"] == {"valid": 1, "on_hold": 0, "revoked": 0, "expired": 0, "retired": 0,
                                "expiring_0": 1, "expiring_1": 1}
    assert await ledger.counts_by_profile(NOW) == {p: {k: v for k, v in c.items() if not k.startswith("expiring")}
                                                   for p, c in counts.items()}


async def test_query_certificates_filters_and_pages(ledger: Ledger) -> None:
    await _issue(ledger, 0xB001, subject="CN=Gate_100%", device="dev-1")
    await _issue(ledger, 0xB002, subject="CN=gatex100", not_after=NOW + 5 * DAY)
    await _issue(ledger, 0xB003, subject="CN=other", profile="manual", not_after=NOW + 2 * DAY)

    async def serials(**f: object) -> list[int]:
        query = CertificateQuery(**f)  # type: ignore[arg-type]
        return [r.serial for r in await ledger.query_certificates(query, now=NOW)]

    assert await serials() == [0xB003, 0xB002, 0xB001]
    assert await serials(profile="manual") == [0xB003]
    assert await serials(device="dev-1") == [0xB001]
    assert await serials(text="gate") == [0xB002, 0xB001]  # case-insensitive substring
    assert await serials(text="e_1") == [0xB001]  # '_' is a character, not a wildcard
    assert await serials(text="100%") == [0xB001]
    # Soonest expiry first, only certificates still valid and inside the horizon.
    assert await serials(expiring_before=NOW + 10 * DAY) == [0xB003, 0xB002]
    assert await serials(expiring_before=NOW + 3 * DAY) == [0xB003]
    first = await serials(limit=2)
    assert first == [0xB003, 0xB002]
    last_id = (await _record(ledger, 0xB002)).id
    assert await serials(before_id=last_id) == [0xB001]
    with pytest.raises(ValueError, match="unknown state"):
        await serials(state="sleeping")


# --- CRL state ----------------------------------------------------------------------------

async def test_crl_numbers_only_grow_and_the_newest_crl_is_kept(ledger: Ledger) -> None:
    assert await ledger.crl_current("issuing") is None
    assert [await ledger.crl_next_number("issuing") for _ in range(3)] == [1, 2, 3]
    assert await ledger.crl_next_number("other-ca") == 1
    assert await ledger.crl_current("issuing") is None  # numbers taken, no CRL stored yet
    await ledger.crl_store("issuing", 3, NOW, NOW + DAY, b"crl-3")
    assert await ledger.crl_current("issuing") == (3, NOW, NOW + DAY, b"crl-3")
    await ledger.crl_store("issuing", 2, NOW + 1, NOW + 2 * DAY, b"crl-2")  # an older number: ignored
    assert await ledger.crl_current("issuing") == (3, NOW, NOW + DAY, b"crl-3")
    assert await ledger.crl_next_number("issuing") == 4
