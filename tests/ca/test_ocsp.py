"""OCSP (RFC 6960), holds, device revocation and retirement, expiry, audit filters: the core, on
SQLite and PostgreSQL. The HTTP side and `openssl ocsp` are in tests/enroll/test_admin_revocation.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as xocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca import ocsp
from ca.api import Issued, Rejected, Requester, AuthMethod
from ca.errors import CAError, NotFoundError, ParseError, RejectReason
from ca.issuer import Issuer
from ca.keys import FileKey
from ca.ledger import MIGRATIONS, Ledger
from ca.names import device_key_of_certificate
from enroll.app import build_issuer
from enroll.config import Config
from enroll.pki import DevPKI, Pair, make_cert
from tests.support import make_csr, request

ADMIN = Requester(AuthMethod.OPERATOR, "token:test-admin")


async def issue(issuer: Issuer, cn: str = "dev-1", profile: str = "gateway", **kw: object) -> Issued:
    csr, _ = make_csr(cn, **kw)  # type: ignore[arg-type]
    out = await issuer.issue(request(csr, profile))
    assert isinstance(out, Issued), out
    return out


def ocsp_request(cert: x509.Certificate, ca: x509.Certificate, nonce: bytes | None = None,
                 algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    b = xocsp.OCSPRequestBuilder().add_certificate(cert, ca, algorithm or hashes.SHA1())
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), False)
    return b.build().public_bytes(serialization.Encoding.DER)


async def ask(issuer: Issuer, cert: x509.Certificate, ca: x509.Certificate, **kw: object) -> xocsp.OCSPResponse:
    der, _ = await issuer.ocsp(ocsp_request(cert, ca, **kw))  # type: ignore[arg-type]
    resp = xocsp.load_der_ocsp_response(der)
    assert resp.response_status is xocsp.OCSPResponseStatus.SUCCESSFUL
    ca.public_key().verify(resp.signature, resp.tbs_response_bytes,  # type: ignore[call-arg]
                           *_verify_args(ca, resp))
    return resp


def _verify_args(ca: x509.Certificate, resp: xocsp.OCSPResponse) -> tuple[object, ...]:
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    assert resp.signature_hash_algorithm is not None
    if isinstance(ca.public_key(), rsa.RSAPublicKey):
        return (padding.PKCS1v15(), resp.signature_hash_algorithm)
    return (ec.ECDSA(resp.signature_hash_algorithm),)


async def test_ocsp_answers_good_revoked_and_unknown(issuer: Issuer, dev_pki: DevPKI) -> None:
    ca = dev_pki.issuing.cert
    a, b = await issue(issuer, "good-one"), await issue(issuer, "bad-one")
    await issuer.revoke(b.serial, "key_compromise", by=ADMIN)
    good = await ask(issuer, a.certificate, ca, nonce=b"\x01" * 16)
    assert good.certificate_status is xocsp.OCSPCertStatus.GOOD
    assert good.serial_number == a.serial
    assert good.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"\x01" * 16
    assert good.next_update_utc is not None and good.next_update_utc > good.this_update_utc
    assert good.responder_key_hash is not None
    revoked = await ask(issuer, b.certificate, ca, algorithm=hashes.SHA256())
    assert revoked.certificate_status is xocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason is x509.ReasonFlags.key_compromise
    assert revoked.revocation_time_utc is not None
    assert abs(revoked.revocation_time_utc.timestamp() - time.time()) < 120
    # a certificate with our issuer's name and key hash but a serial we never issued
    ghost = await _lookalike(a.certificate)
    unknown = await ask(issuer, ghost, ca)
    assert unknown.certificate_status is xocsp.OCSPCertStatus.UNKNOWN


async def _lookalike(cert: x509.Certificate) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer).public_key(key.public_key())
            .serial_number(12345678901234567890).not_valid_before(cert.not_valid_before_utc)
            .not_valid_after(cert.not_valid_after_utc).sign(key, hashes.SHA256()))


async def test_ocsp_refuses_other_cas_and_garbage(issuer: Issuer, dev_pki: DevPKI) -> None:
    der, outcome = await issuer.ocsp(ocsp_request(dev_pki.idevid.cert, dev_pki.manufacturer.cert))
    assert outcome == "unauthorized"
    assert xocsp.load_der_ocsp_response(der).response_status is xocsp.OCSPResponseStatus.UNAUTHORIZED
    for junk in (b"", b"\x30\x03\x02\x01\x01", os.urandom(200), b"\x30\x84" + b"\xff" * 8,
                 b"\x30" * (ocsp.MAX_REQUEST_BYTES + 1)):
        der, outcome = await issuer.ocsp(junk)
        assert outcome == "malformed"
        assert xocsp.load_der_ocsp_response(der).response_status is xocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert await issuer.ledger.count_certificates("issued") == 0


def test_parse_refuses_oversized_nonce(dev_pki: DevPKI) -> None:
    der = ocsp_request(dev_pki.client.cert, dev_pki.issuing.cert, nonce=b"n" * 33)
    with pytest.raises(ParseError):
        ocsp.parse_request(der)
    assert ocsp.parse_request(ocsp_request(dev_pki.client.cert, dev_pki.issuing.cert, nonce=b"n" * 32)).nonce


def _delegated(dev_pki: DevPKI, eku: bool = True) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Enroll OCSP responder")]), key,
                     dev_pki.issuing, days=30, eku=[ExtendedKeyUsageOID.OCSP_SIGNING] if eku else None)
    return Pair(cert, key)


class OpaqueSigner:
    """A signer that is not a FileKey (the HSM path): the codec must re-sign the response."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    def public_key(self):  # type: ignore[no-untyped-def]
        return self._key.public_key()

    def sign(self, data: bytes, algorithm: hashes.HashAlgorithm | None) -> bytes:
        assert algorithm is not None
        return self._key.sign(data, ec.ECDSA(algorithm))


@pytest.mark.parametrize("opaque", [False, True], ids=["file-key", "opaque-signer"])
def test_delegated_responder_signs_and_ships_its_certificate(dev_pki: DevPKI, opaque: bool) -> None:
    pair = _delegated(dev_pki)
    assert ocsp.check_delegated_responder(dev_pki.issuing.cert, pair.cert) is None
    signer = OpaqueSigner(pair.key) if opaque else FileKey(pair.key)  # type: ignore[arg-type]
    responder = ocsp.Responder(ca_cert=dev_pki.issuing.cert, cert=pair.cert, signer=signer)  # type: ignore[arg-type]
    query = ocsp.parse_request(ocsp_request(dev_pki.client.cert, dev_pki.issuing.cert, nonce=b"abcdefgh"))
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    der = ocsp.build_response(query, responder, ocsp.Status.REVOKED, this_update=now,
                              next_update=now + dt.timedelta(hours=1), revoked_at=now, reason="certificate_hold")
    resp = xocsp.load_der_ocsp_response(der)
    assert resp.certificates == [pair.cert]
    assert resp.responder_key_hash == ocsp.issuer_hashes(pair.cert, hashes.SHA1())[1]
    assert resp.revocation_reason is x509.ReasonFlags.certificate_hold
    assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"abcdefgh"
    assert resp.signature_hash_algorithm is not None
    pair.cert.public_key().verify(resp.signature, resp.tbs_response_bytes,  # type: ignore[call-arg]
                                  ec.ECDSA(resp.signature_hash_algorithm))


def test_delegated_responder_needs_ocsp_signing_eku(dev_pki: DevPKI) -> None:
    assert "OCSPSigning" in (ocsp.check_delegated_responder(dev_pki.issuing.cert, _delegated(dev_pki, False).cert)
                             or "")
    assert "not issued" in (ocsp.check_delegated_responder(dev_pki.manufacturer.cert, _delegated(dev_pki).cert) or "")


async def test_certificates_carry_cdp_and_aia(issuer: Issuer) -> None:
    cert = (await issue(issuer)).certificate
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    urls = {d.access_method: d.access_location.value for d in aia}
    assert urls[x509.AuthorityInformationAccessOID.OCSP].endswith("/ocsp")
    assert urls[x509.AuthorityInformationAccessOID.CA_ISSUERS].endswith("/ca/issuing.crt")
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value.endswith("/crl/issuing.crl")  # type: ignore[index]


async def test_profile_can_leave_aia_and_cdp_out(issuer: Issuer) -> None:
    issuer.profiles["gateway"] = dataclasses.replace(issuer.profiles["gateway"], authority_info_access=False,
                                                     crl_distribution_point=False)
    cert = (await issue(issuer)).certificate
    oids = {e.oid for e in cert.extensions}
    assert x509.AuthorityInformationAccess.oid not in oids and x509.CRLDistributionPoints.oid not in oids


async def test_hold_then_unhold_drops_the_entry_from_the_next_crl(issuer: Issuer, dev_pki: DevPKI) -> None:
    out = await issue(issuer, "suspended")
    rec = await issuer.revoke(out.serial, "certificate_hold", by=ADMIN)
    assert rec.on_hold
    crl = await issuer.crl("gateway")
    entry = crl.get_revoked_certificate_by_serial_number(out.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.certificate_hold
    held = await ask(issuer, out.certificate, dev_pki.issuing.cert)
    assert held.certificate_status is xocsp.OCSPCertStatus.REVOKED
    assert held.revocation_reason is x509.ReasonFlags.certificate_hold
    rec = await issuer.unhold(out.serial, by=ADMIN)
    assert not rec.revoked
    assert (await issuer.crl("gateway")).get_revoked_certificate_by_serial_number(out.serial) is None
    assert (await ask(issuer, out.certificate, dev_pki.issuing.cert)).certificate_status is xocsp.OCSPCertStatus.GOOD
    events = [a.event for a in await issuer.ledger.audit_records(serials=[out.serial])]
    assert events[:2] == ["unhold", "hold"]
    assert all(a.requester == "operator:token:test-admin"
               for a in await issuer.ledger.audit_records(serials=[out.serial]) if a.event != "issue")


async def test_hold_can_become_permanent_but_a_revocation_cannot_be_undone(issuer: Issuer) -> None:
    out = await issue(issuer)
    await issuer.revoke(out.serial, "certificate_hold")
    rec = await issuer.revoke(out.serial, "key_compromise")
    assert rec.revocation_reason == "key_compromise"
    with pytest.raises(CAError, match="not on hold"):
        await issuer.unhold(out.serial)
    with pytest.raises(CAError, match="already revoked"):
        await issuer.revoke(out.serial, "superseded")
    assert (await issuer.get_certificate(out.serial)).revocation_reason == "key_compromise"


async def test_renewals_belong_to_the_same_device(issuer: Issuer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    first = await issue(issuer, "gw-7", sans=[x509.DNSName("gw-7.example.net")])
    csr, _ = make_csr("gw-7", key, sans=[x509.DNSName("gw-7.example.net")])
    renewed = await issuer.issue(request(csr, renewal_of=first.certificate))
    assert isinstance(renewed, Issued)
    other = await issue(issuer, "gw-8")
    dev = device_key_of_certificate("gateway", first.certificate)
    assert device_key_of_certificate("gateway", renewed.certificate) == dev
    assert device_key_of_certificate("gateway", other.certificate) != dev
    d = await issuer.get_device(dev)
    assert d.certificates == 2 and d.sans == ["dns:gw-7.example.net"] and d.subject == "CN=gw-7"
    history = await issuer.device_history(dev)
    assert [h.event for h in history] == ["renew", "issue"]
    assert history[0].detail and history[0].detail["renews"] == format(first.serial, "x")


async def test_revoke_device_revokes_every_certificate_at_once(issuer: Issuer) -> None:
    a = await issue(issuer, "multi")
    b = await issue(issuer, "multi")
    keep = await issue(issuer, "other")
    dev = device_key_of_certificate("gateway", a.certificate)
    before = (await issuer.ledger.crl_current("issuing") or (0,))[0]
    done = await issuer.revoke_device(dev, "affiliation_changed", by=ADMIN)
    assert {r.serial for r in done} == {a.serial, b.serial}
    crl = await issuer.crl("gateway")
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == before + 1  # one CRL
    assert {r.serial_number for r in crl} == {a.serial, b.serial}
    assert not (await issuer.get_certificate(keep.serial)).revoked
    assert await issuer.revoke_device(dev, "affiliation_changed") == []  # nothing left to revoke


async def test_retired_device_may_not_enroll_or_renew(issuer: Issuer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    first = await issue(issuer, "old-router", sans=[x509.DNSName("r.example.net")])
    dev = device_key_of_certificate("gateway", first.certificate)
    revoked = await issuer.retire_device(dev, by=ADMIN)
    assert [r.serial for r in revoked] == [first.serial]
    rec = await issuer.get_certificate(first.serial)
    assert rec.retired and rec.revocation_reason == "cessation_of_operation"
    count = await issuer.ledger.count_certificates("issued")
    csr, _ = make_csr("old-router", key, sans=[x509.DNSName("r.example.net")])
    for req in (request(csr), request(csr, renewal_of=first.certificate)):
        out = await issuer.issue(req)
        assert isinstance(out, Rejected) and out.reason is RejectReason.NOT_AUTHORIZED
        assert "retired" in out.detail
    assert await issuer.ledger.count_certificates("issued") == count  # nothing issued
    # the same name without the SAN is another device; the retired one stays refused
    assert isinstance(await issuer.issue(request(make_csr("old-router")[0])), Issued)
    with pytest.raises(CAError, match="already retired"):
        await issuer.retire_device(dev)
    assert (await issuer.ledger.audit_records(device=dev, event="retire-device"))[0].requester == \
        "operator:token:test-admin"


async def test_unknown_device_and_serial_are_not_found(issuer: Issuer) -> None:
    for call in (issuer.get_device("0" * 32), issuer.get_device("not-hex"), issuer.revoke(0x1234),
                 issuer.unhold(0x1234), issuer.retire_device("f" * 32)):
        with pytest.raises(NotFoundError):
            await call
    assert await issuer.ledger.audit_records(event="revoke") == []


async def test_expiring_lists_soonest_first_and_skips_revoked(issuer: Issuer) -> None:
    soon = await issue(issuer, "short", profile="gateway")
    later = await issue(issuer, "long", profile="sensor")
    gone = await issue(issuer, "gone", profile="gateway")
    await issuer.revoke(gone.serial)
    async with issuer.ledger.engine.begin() as conn:  # pretend "short" was issued 820 days ago
        from ca.ledger import certificates

        await conn.execute(certificates.update().where(certificates.c.serial == format(soon.serial, "x"))
                           .values(not_after=time.time() + 5 * 86400))
    rows = await issuer.expiring(30 * 86400)
    assert [r.serial for r in rows] == [soon.serial]
    assert later.serial not in [r.serial for r in await issuer.expiring(3000 * 86400, profile="gateway")]
    counts = await issuer.ledger.counts_by_profile(time.time(), [time.time() + 7 * 86400, time.time() + 30 * 86400])
    assert counts["gateway"] == {"valid": 1, "on_hold": 0, "revoked": 1, "expired": 0, "retired": 0,
                                 "expiring_0": 1, "expiring_1": 1}
    assert counts["sensor"]["expiring_1"] == 0


async def test_audit_filters_by_serial_device_time_and_event(issuer: Issuer) -> None:
    a = await issue(issuer, "audited")
    t = time.time()
    await issuer.revoke(a.serial, "superseded", by=ADMIN)
    assert [r.event for r in await issuer.ledger.audit_records(serials=[a.serial])] == ["revoke", "issue"]
    assert [r.event for r in await issuer.ledger.audit_records(since=t - 0.001, serials=[a.serial])] == ["revoke"]
    assert [r.event for r in await issuer.ledger.audit_records(until=t, serials=[a.serial])] == ["issue"]
    dev = device_key_of_certificate("gateway", a.certificate)
    assert len(await issuer.ledger.audit_records(device=dev)) == 2
    assert [r.serial for r in await issuer.ledger.audit_records(event="revoke")] == [format(a.serial, "x")]


async def test_migration_2_adds_devices_to_a_version_1_ledger(config: Config) -> None:
    """On SQLite (its DROP COLUMN takes the ledger back to the version-1 shape)."""
    issuer = build_issuer(config)
    await issuer.ledger.migrate()
    try:
        a = await issue(issuer, "legacy")
        async with issuer.ledger.engine.begin() as conn:  # back to the version-1 shape
            await conn.execute(sa.text("DROP INDEX ix_certificates_device"))
            await conn.execute(sa.text("ALTER TABLE certificates DROP COLUMN device"))
            await conn.execute(sa.text("DROP TABLE devices"))
            await conn.execute(sa.text("DELETE FROM schema_version WHERE version = 2"))
    finally:
        await issuer.ledger.close()
    again = Ledger(config.ledger_url)
    try:
        assert await again.migrate() == MIGRATIONS[-1][0]  # the latest schema
        rec = await again.find_by_serial("issuing", a.serial)
        assert rec is not None and rec.device == device_key_of_certificate("gateway", a.certificate)
        assert (await again.get_device(rec.device)) is not None
        assert await again.migrate() == MIGRATIONS[-1][0]  # idempotent
    finally:
        await again.close()
