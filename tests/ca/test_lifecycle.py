"""The lifecycle after issuance (ca/lifecycle.py) where tests/ca/test_ocsp.py does not already go:
CRL reuse and numbering, entries read back with cryptography's CRL parser, refused revocations that
change nothing, retiring one certificate, publishing audited (RFC 5280 §5, §5.2.3, §5.3.1)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from ca.api import AuthMethod, Issued, Requester
from ca.errors import CAError, NotFoundError
from ca.issuer import Issuer
from ca.records import CertState
from enroll.pki import DevPKI
from tests.support import make_csr, request

ADMIN = Requester(AuthMethod.OPERATOR, "token:lifecycle-test")


async def _issue(issuer: Issuer, cn: str) -> Issued:
    out = await issuer.issue(request(make_csr(cn)[0]))
    assert isinstance(out, Issued)
    return out


def _number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


async def test_the_crl_is_reused_until_half_its_lifetime_and_numbered_up_when_forced(issuer: Issuer,
                                                                                      dev_pki: DevPKI) -> None:
    """RFC 5280 §5.2.3: every new CRL of a CA carries a larger cRLNumber."""
    first = await issuer.crl_for_ca("issuing")
    again = await issuer.crl_for_ca("issuing")
    assert _number(again) == _number(first) and again.signature == first.signature
    forced = await issuer.crl_for_ca("issuing", force=True)
    assert _number(forced) == _number(first) + 1
    assert forced.next_update_utc is not None and forced.last_update_utc < forced.next_update_utc
    assert forced.is_signature_valid(dev_pki.issuing.cert.public_key())  # type: ignore[arg-type]
    assert forced.issuer == dev_pki.issuing.cert.subject


async def test_crl_entries_carry_serial_date_and_reason_only_when_not_unspecified(issuer: Issuer) -> None:
    """RFC 5280 §5.3.1: reasonCode unspecified SHOULD be absent; other reasons are written."""
    plain, compromised = await _issue(issuer, "plain"), await _issue(issuer, "compromised")
    rec = await issuer.revoke(plain.serial, by=ADMIN)
    await issuer.revoke(compromised.serial, "key_compromise", by=ADMIN)
    crl = await issuer.crl("gateway")
    entry = crl.get_revoked_certificate_by_serial_number(plain.serial)
    assert entry is not None and len(entry.extensions) == 0
    assert rec.revoked_at is not None
    assert entry.revocation_date_utc == dt.datetime.fromtimestamp(int(rec.revoked_at), dt.timezone.utc)
    bad = crl.get_revoked_certificate_by_serial_number(compromised.serial)
    assert bad is not None
    assert bad.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    assert {r.serial_number for r in crl} == {plain.serial, compromised.serial}


async def test_an_unknown_reason_revokes_nothing_and_publishes_nothing(issuer: Issuer) -> None:
    out = await _issue(issuer, "kept")
    before = _number(await issuer.crl_for_ca("issuing"))
    with pytest.raises(CAError, match="unknown reason"):
        await issuer.revoke(out.serial, "because")
    assert not (await issuer.get_certificate(out.serial)).revoked
    assert _number(await issuer.crl_for_ca("issuing")) == before
    assert await issuer.ledger.audit_records(event="revoke") == []


async def test_retiring_one_certificate_stops_renewal_but_leaves_it_off_the_crl(issuer: Issuer) -> None:
    out = await _issue(issuer, "retiring")
    rec = await issuer.retire(out.serial, by=ADMIN)
    assert rec.retired and not rec.revoked and rec.state() is CertState.RETIRED
    crl = await issuer.crl_for_ca("issuing", force=True)
    assert crl.get_revoked_certificate_by_serial_number(out.serial) is None
    assert [a.event for a in await issuer.ledger.audit_records(serials=[out.serial])][0] == "retire"


async def test_publish_crl_is_audited_and_names_only_our_cas(issuer: Issuer) -> None:
    out = await _issue(issuer, "listed")
    await issuer.revoke(out.serial, "superseded", by=ADMIN)
    crl = await issuer.publish_crl("issuing", by=ADMIN)
    [audit] = await issuer.ledger.audit_records(event="crl-publish")
    assert audit.ok and audit.detail == {"ca": "issuing", "crl_number": _number(crl), "entries": 1}
    with pytest.raises(NotFoundError):
        await issuer.publish_crl("nobody", by=ADMIN)
    assert len(await issuer.ledger.audit_records(event="crl-publish")) == 1
