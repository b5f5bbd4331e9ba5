"""The issuance contract (docs/ARCHITECTURE.md) on the real local CA and a real SQLite ledger."""

from __future__ import annotations

import asyncio
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.api import AuthMethod, Channel, Claims, EnrollRequest, Issued, Pending, Rejected, Requester
from ca.errors import RejectReason
from ca.issuer import Issuer
from tests.lint import pkix_errors
from tests.support import make_csr, request, resign_csr, rsa_key


async def issued_count(issuer: Issuer) -> int:
    return await issuer.ledger.count_certificates("issued")


async def test_issue_signs_stores_and_audits(issuer: Issuer) -> None:
    csr, key = make_csr("gw-1", sans=[x509.DNSName("gw-1.example.net"),
                                      x509.IPAddress(ipaddress.ip_address("192.0.2.7"))])
    out = await issuer.issue(request(csr))
    assert isinstance(out, Issued)
    cert = out.certificate
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(out.chain[0])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-1"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.serial_number >= 2**64 and cert.serial_number < 2**159
    assert cert.not_valid_after_utc <= out.chain[0].not_valid_after_utc
    rec = await issuer.certificate_status(cert)
    assert rec is not None and rec.status == "issued" and rec.der == cert.public_bytes(serialization.Encoding.DER)
    audit = await issuer.ledger.audit_records()
    assert audit[0].event == "issue" and audit[0].ok and audit[0].serial == format(out.serial, "x")
    assert pkix_errors(rec.der) == []


async def test_two_hundred_concurrent_issuances_get_distinct_serials(issuer: Issuer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csrs = [make_csr(f"dev-{i}", key)[0] for i in range(200)]
    outs = await asyncio.gather(*(issuer.issue(request(c)) for c in csrs))
    assert all(isinstance(o, Issued) for o in outs)
    serials = {o.serial for o in outs if isinstance(o, Issued)}
    assert len(serials) == 200
    assert await issued_count(issuer) == 200


async def test_rejects_csr_with_broken_signature(issuer: Issuer) -> None:
    csr, _ = make_csr("x")
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01
    broken = x509.load_der_x509_csr(bytes(der))
    out = await issuer.issue(request(broken))
    assert isinstance(out, Rejected) and out.reason is RejectReason.BAD_MESSAGE_CHECK
    assert await issued_count(issuer) == 0
    assert (await issuer.ledger.audit_records())[0].ok is False


async def test_never_issues_ca_true(issuer: Issuer) -> None:
    csr, _ = make_csr("evil", extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)])
    out = await issuer.issue(request(csr))
    assert isinstance(out, Rejected) and out.reason is RejectReason.POLICY
    assert await issued_count(issuer) == 0


async def test_never_issues_key_cert_sign(issuer: Issuer) -> None:
    ku = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    csr, _ = make_csr("evil", extensions=[(ku, True)])
    out = await issuer.issue(request(csr))
    assert isinstance(out, Rejected) and out.reason is RejectReason.POLICY
    assert await issued_count(issuer) == 0


async def test_refuses_san_type_the_profile_does_not_allow(issuer: Issuer) -> None:
    csr, _ = make_csr("gw", sans=[x509.DNSName("gw.example"), x509.RFC822Name("boss@example.com")])
    out = await issuer.issue(request(csr))
    assert isinstance(out, Rejected) and "SAN" in out.detail
    assert await issued_count(issuer) == 0


async def test_refuses_eku_beyond_the_profile(issuer: Issuer) -> None:
    csr, _ = make_csr("s", extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)])
    out = await issuer.issue(request(csr, "sensor"))
    assert isinstance(out, Rejected)
    assert await issued_count(issuer) == 0


async def test_refuses_subject_attribute_not_allowed(issuer: Issuer) -> None:
    csr, _ = make_csr("s", extra_attrs=[x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Admins")])
    out = await issuer.issue(request(csr, "sensor"))
    assert isinstance(out, Rejected) and out.reason is RejectReason.POLICY
    assert await issued_count(issuer) == 0


async def test_forced_subject_attributes_win(issuer: Issuer) -> None:
    csr, _ = make_csr("sensor-9")
    out = await issuer.issue(request(csr, "sensor"))
    assert isinstance(out, Issued)
    assert out.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Example Devices"


async def test_refuses_key_type_outside_profile(issuer: Issuer) -> None:
    csr, _ = make_csr("s", rsa_key(2048))
    out = await issuer.issue(request(csr, "sensor"))
    assert isinstance(out, Rejected) and out.reason is RejectReason.BAD_ALG
    assert await issued_count(issuer) == 0


async def test_refuses_sha1_signed_csr_unless_legacy(issuer: Issuer) -> None:
    key = rsa_key(2048)
    csr = resign_csr(make_csr("r", key)[0], key, hashes.SHA1())
    out = await issuer.issue(request(csr, "gateway"))
    assert isinstance(out, Rejected) and out.reason is RejectReason.BAD_ALG
    assert isinstance(await issuer.issue(request(csr, "router")), Issued)


async def test_unauthenticated_requests_are_refused(issuer: Issuer) -> None:
    csr, _ = make_csr("x")
    out = await issuer.issue(request(csr, requester=Requester(AuthMethod.NONE, "anonymous")))
    assert isinstance(out, Rejected) and out.reason is RejectReason.UNAUTHENTICATED
    assert await issued_count(issuer) == 0


async def test_same_transaction_and_key_returns_the_same_certificate(issuer: Issuer) -> None:
    key = rsa_key()
    csr, _ = make_csr("r1", key)
    first = await issuer.issue(request(csr, "router", transaction_id="T1"))
    again = await issuer.issue(request(csr, "router", transaction_id="T1"))
    assert isinstance(first, Issued) and isinstance(again, Issued)
    assert again.serial == first.serial and again.replayed
    other, _ = make_csr("r1", rsa_key())
    refused = await issuer.issue(request(other, "router", transaction_id="T1"))
    assert isinstance(refused, Rejected) and refused.reason is RejectReason.BAD_REQUEST
    assert await issued_count(issuer) == 1


async def test_manual_profile_waits_then_issues_once_approved(issuer: Issuer) -> None:
    csr, _ = make_csr("m1")
    first = await issuer.issue(request(csr, "manual"))
    assert isinstance(first, Pending) and first.retry_after == 5
    assert isinstance(await issuer.issue(request(csr, "manual")), Pending)
    assert await issued_count(issuer) == 0
    assert await issuer.approve(first.request_id, "test")
    done = await issuer.issue(request(csr, "manual"))
    assert isinstance(done, Issued)
    again = await issuer.issue(request(csr, "manual"))
    assert isinstance(again, Issued) and again.serial == done.serial
    assert await issued_count(issuer) == 1
    assert (await issuer.ledger.get_pending(first.request_id)).status == "issued"  # type: ignore[union-attr]


async def test_manual_profile_rejection_is_final(issuer: Issuer) -> None:
    csr, _ = make_csr("m2")
    first = await issuer.issue(request(csr, "manual"))
    assert isinstance(first, Pending)
    assert await issuer.reject(first.request_id, "test", "unknown device")
    out = await issuer.issue(request(csr, "manual"))
    assert isinstance(out, Rejected) and out.reason is RejectReason.REJECTED
    assert not await issuer.approve(first.request_id, "test")
    assert await issued_count(issuer) == 0


async def test_policy_violations_are_not_queued_for_approval(issuer: Issuer) -> None:
    csr, _ = make_csr("m3", sans=[x509.DNSName("x.example")])  # manual profile allows no SAN
    assert isinstance(await issuer.issue(request(csr, "manual")), Rejected)
    assert await issuer.list_pending() == []


async def test_revoke_publishes_a_crl_with_reason(issuer: Issuer) -> None:
    csr, _ = make_csr("gone")
    out = await issuer.issue(request(csr))
    assert isinstance(out, Issued)
    await issuer.revoke(out.serial, "key_compromise")
    crl = await issuer.crl("gateway")
    assert crl.is_signature_valid(out.chain[0].public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(out.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    newer = await issuer.crl_for_ca("issuing", force=True)
    assert newer.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    rec = await issuer.certificate_status(out.certificate)
    assert rec is not None and rec.revoked


async def test_certificate_status_ignores_lookalikes(issuer: Issuer, dev_pki) -> None:  # type: ignore[no-untyped-def]
    from enroll.pki import make_cert

    csr, key = make_csr("real")
    out = await issuer.issue(request(csr))
    assert isinstance(out, Issued)
    # a self-signed copy with the victim's subject and serial is not ours
    fake = (x509.CertificateBuilder().subject_name(out.certificate.subject).issuer_name(out.certificate.issuer)
            .public_key(key.public_key()).serial_number(out.serial)
            .not_valid_before(out.certificate.not_valid_before_utc)
            .not_valid_after(out.certificate.not_valid_after_utc).sign(key, hashes.SHA256()))
    assert await issuer.certificate_status(fake) is None
    assert await issuer.certificate_status(dev_pki.client.cert) is None
    assert make_cert  # the dev PKI's own certificates are not in the ledger


async def test_one_time_challenge_is_single_use_and_profile_bound(issuer: Issuer) -> None:
    ch = await issuer.create_one_time_challenge("mdm", 60)
    assert ch.isalnum() and ch.isascii()
    assert not await issuer.consume_one_time_challenge("router", ch)
    assert await issuer.consume_one_time_challenge("mdm", ch)
    assert not await issuer.consume_one_time_challenge("mdm", ch)


async def test_expired_one_time_challenge_is_refused(issuer: Issuer) -> None:
    import time

    from ca.authz import challenge_digest

    await issuer.ledger.add_challenge("mdm", challenge_digest("old"), time.time() - 1)
    assert not await issuer.consume_one_time_challenge("mdm", "old")


async def test_concurrent_consumers_use_a_challenge_once(issuer: Issuer) -> None:
    ch = await issuer.create_one_time_challenge("mdm", 60)
    results = await asyncio.gather(*(issuer.consume_one_time_challenge("mdm", ch) for _ in range(20)))
    assert results.count(True) == 1


async def test_basic_passwords_and_static_challenges(issuer: Issuer, embedded) -> None:  # type: ignore[no-untyped-def]
    assert await issuer.verify_password("estuser", embedded.est_password)
    assert not await issuer.verify_password("estuser", "wrong")
    assert not await issuer.verify_password("nobody", embedded.est_password)
    assert await issuer.check_static_challenge("router", embedded.scep_challenge)
    assert not await issuer.check_static_challenge("router", "wrong")
    assert not await issuer.check_static_challenge("mdm", embedded.scep_challenge)  # no static challenge there


async def test_nonces_detect_replay(issuer: Issuer) -> None:
    assert await issuer.remember_nonce("scep", b"\x01" * 16)
    assert not await issuer.remember_nonce("scep", b"\x01" * 16)


async def test_client_chain_per_trust_store(issuer: Issuer, dev_pki) -> None:  # type: ignore[no-untyped-def]
    assert issuer.verify_client_chain(dev_pki.client.cert, ["enroll"])
    assert not issuer.verify_client_chain(dev_pki.client.cert, ["manufacturer"])
    assert issuer.verify_client_chain(dev_pki.idevid.cert, ["manufacturer"])
    assert not issuer.verify_client_chain(dev_pki.idevid.cert, ["enroll"])
    assert not issuer.verify_client_chain(dev_pki.idevid.cert, ["nonexistent"])


async def test_renewable_only_for_our_valid_certificate_in_its_profile_and_window(issuer: Issuer, dev_pki) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from ca.errors import AuthorizationError

    out = await issuer.issue(request(make_csr("renew-me")[0]))
    assert isinstance(out, Issued)
    assert (await issuer.renewable(out.certificate, "gateway")) is not None
    with pytest.raises(AuthorizationError, match="not in the ledger"):  # our CA's, unknown: an anomaly
        await issuer.renewable(dev_pki.client.cert, "gateway")
    with pytest.raises(AuthorizationError, match="profile"):
        await issuer.renewable(out.certificate, "sensor")
    mdm = await issuer.issue(request(make_csr("phone", rsa_key())[0], "mdm"))
    assert isinstance(mdm, Issued)
    with pytest.raises(AuthorizationError, match="too early"):
        await issuer.renewable(mdm.certificate, "mdm")  # 30-day window of a 397-day certificate
    await issuer.revoke(out.serial, "superseded")
    with pytest.raises(AuthorizationError, match="revoked"):
        await issuer.renewable(out.certificate, "gateway")


async def test_a_held_renewal_issued_on_a_poll_stays_linked_to_what_it_renews(issuer: Issuer) -> None:
    """A renewal on a profile with manual approval is held (RFC 8894 §3.3.2 PENDING); when the
    client's CertPoll (§3.3.3) gets it issued, the new certificate still records what it renews."""
    csr, _ = make_csr("m-renew")
    held_first = await issuer.issue(request(csr, "manual"))
    assert isinstance(held_first, Pending) and await issuer.approve(held_first.request_id, "test")
    old = await issuer.issue(request(csr, "manual"))
    assert isinstance(old, Issued)
    renewal_csr, _ = make_csr("m-renew")
    claims = Claims(accept=(frozenset({AuthMethod.RENEWAL_SIGNER}),), certificate=old.certificate)
    held = await issuer.enroll(EnrollRequest(renewal_csr, "manual", Channel.SCEP, claims, transaction_id="T-renew",
                                             renewal_of=old.certificate))
    assert isinstance(held, Pending), held
    assert (await issuer.ledger.get_pending(held.request_id)).renews_serial == old.serial  # type: ignore[union-attr]
    assert await issued_count(issuer) == 1
    assert await issuer.approve(held.request_id, "test")
    out = await issuer.poll("manual", "T-renew", old.certificate, channel=Channel.SCEP)
    assert isinstance(out, Issued) and out.serial != old.serial
    [rec] = await issuer.ledger.find_serial_any_issuer(out.serial)
    assert rec.renews_serial == old.serial
    [event] = [a for a in await issuer.ledger.audit_records(50, serials=[out.serial]) if a.ok]
    assert event.event == "renew" and event.detail is not None and event.detail["renews"] == format(old.serial, "x")
