"""Trust follows the lifecycle (ca/identity.py, Issuer.authenticate_certificate): one rule for
every protocol. Certificates we issued authenticate only while the ledger says issued and not
revoked, held, retired or expired, and only where their issuing profile is accepted; external
anchors can be checked against their CRL (RFC 5280 §6.3, fail closed); the requested names can
be bound to the authenticating certificate."""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.api import AuthMethod, BindIdentity, Channel, Issued, Rejected
from ca.authz import TrustStore
from ca.errors import AuthenticationError, AuthorizationError, RejectReason
from ca.api import CertificatePolicy
from ca.identity import RevocationSource
from ca.issuer import Issuer
from enroll.pki import DevPKI
from tests.support import make_csr, request

GATEWAY = CertificatePolicy(("enroll",), ("gateway",))
BOOTSTRAP = CertificatePolicy(("manufacturer",), (), BindIdentity.SERIAL_NUMBER)


async def authenticate(issuer: Issuer, cert: x509.Certificate, policy: CertificatePolicy = GATEWAY):  # type: ignore[no-untyped-def]
    return await issuer.authenticate_certificate(cert, policy, channel=Channel.EST, profile="gateway",
                                                 remote="127.0.0.1")


async def issue(issuer: Issuer, cn: str, profile: str = "gateway") -> Issued:
    out = await issuer.issue(request(make_csr(cn)[0], profile))
    assert isinstance(out, Issued), out
    return out


def cert_record(subject: x509.Name, issuer_pair, *, days: tuple[int, int] = (-1, 30)) -> x509.Certificate:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_pair.cert.subject)
            .public_key(key.public_key()).serial_number(secrets.randbits(120) | 1 << 64)
            .not_valid_before(now + dt.timedelta(days=days[0])).not_valid_after(now + dt.timedelta(days=days[1]))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_pair.cert.public_key()), False)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
            .sign(issuer_pair.key, hashes.SHA256()))


async def test_issued_certificate_authenticates_with_its_binding(issuer: Issuer) -> None:
    out = await issue(issuer, "gw-1")
    who = await authenticate(issuer, out.certificate, CertificatePolicy(("enroll",), ("gateway",),
                                                                         BindIdentity.SUBJECT))
    assert who.method is AuthMethod.TLS_CLIENT_CERT and who.certificate == out.certificate
    assert who.binding is BindIdentity.SUBJECT


async def test_revoked_certificate_authenticates_nothing(issuer: Issuer) -> None:
    out = await issue(issuer, "gw-revoked")
    await issuer.revoke(out.serial, "key_compromise")
    with pytest.raises(AuthorizationError, match="revoked"):
        await authenticate(issuer, out.certificate)


async def test_held_certificate_authenticates_again_only_after_release(issuer: Issuer) -> None:
    out = await issue(issuer, "gw-held")
    await issuer.revoke(out.serial, "certificate_hold")
    with pytest.raises(AuthorizationError, match="on hold"):
        await authenticate(issuer, out.certificate)
    await issuer.unhold(out.serial)
    assert (await authenticate(issuer, out.certificate)).certificate == out.certificate


async def test_certificate_of_retired_device_authenticates_nothing(issuer: Issuer) -> None:
    out = await issue(issuer, "gw-retired")
    await issuer.retire(out.serial)
    with pytest.raises(AuthorizationError, match="retired"):
        await authenticate(issuer, out.certificate)


async def test_certificate_from_a_profile_the_label_does_not_list_is_refused(issuer: Issuer) -> None:
    out = await issue(issuer, "sensor-1", "sensor")
    with pytest.raises(AuthorizationError, match="profile 'sensor'"):
        await authenticate(issuer, out.certificate)
    both = CertificatePolicy(("enroll",), ("gateway", "sensor"))
    assert (await authenticate(issuer, out.certificate, both)).certificate == out.certificate


async def test_expired_certificate_of_ours_authenticates_nothing(issuer: Issuer, dev_pki: DevPKI) -> None:
    old = cert_record(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-old")]), dev_pki.issuing, days=(-60, -1))
    await issuer.adopt(old, "gateway", by="test")
    with pytest.raises((AuthenticationError, AuthorizationError)):
        await authenticate(issuer, old)


async def test_certificate_of_our_ca_unknown_to_the_ledger_is_an_audited_anomaly(
        issuer: Issuer, dev_pki: DevPKI) -> None:
    stray = cert_record(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stray")]), dev_pki.issuing)
    with pytest.raises(AuthorizationError, match="not in the ledger"):
        await authenticate(issuer, stray)
    [row] = await issuer.ledger.audit_records(10, event="client-cert-anomaly")
    assert not row.ok and row.serial == f"{stray.serial_number:x}" and row.channel == "est"
    # once an operator records it (enroll certs import), it is an ordinary certificate
    await issuer.adopt(stray, "gateway", by="test")
    assert (await authenticate(issuer, stray)).certificate == stray


async def test_certificate_outside_every_store_of_the_label_is_unauthenticated(
        issuer: Issuer, dev_pki: DevPKI) -> None:
    with pytest.raises(AuthenticationError):
        await authenticate(issuer, dev_pki.idevid.cert)  # manufacturer CA, label trusts only ours


# --- external anchors: CRL per trust store ---------------------------------------------------


def _crl(dev_pki: DevPKI, revoked: list[int], *, next_update_days: float = 1) -> bytes:
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateRevocationListBuilder().issuer_name(dev_pki.manufacturer.cert.subject)
         .last_update(now - dt.timedelta(days=2)).next_update(now + dt.timedelta(days=next_update_days)))
    for serial in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(now - dt.timedelta(hours=1)).build())
    return b.sign(dev_pki.manufacturer.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _with_crl(issuer: Issuer, dev_pki: DevPKI, path: Path) -> None:
    issuer.trust["manufacturer"] = TrustStore("manufacturer", (dev_pki.manufacturer.cert,),
                                              RevocationSource(str(path), refresh_seconds=60))


async def test_external_anchor_crl_clears_and_revokes(issuer: Issuer, dev_pki: DevPKI, tmp_path: Path) -> None:
    crl = tmp_path / "mfr.crl"
    crl.write_bytes(_crl(dev_pki, [12345]))
    _with_crl(issuer, dev_pki, crl)
    assert (await authenticate(issuer, dev_pki.idevid.cert, BOOTSTRAP)).certificate == dev_pki.idevid.cert
    crl.write_bytes(_crl(dev_pki, [dev_pki.idevid.cert.serial_number]))
    _with_crl(issuer, dev_pki, crl)
    with pytest.raises(AuthorizationError, match="revoked by its issuer's CRL"):
        await authenticate(issuer, dev_pki.idevid.cert, BOOTSTRAP)


async def test_external_anchor_fails_closed_on_a_stale_or_missing_crl(
        issuer: Issuer, dev_pki: DevPKI, tmp_path: Path) -> None:
    crl = tmp_path / "mfr.crl"
    crl.write_bytes(_crl(dev_pki, [], next_update_days=-1))
    _with_crl(issuer, dev_pki, crl)
    with pytest.raises(AuthorizationError, match="past its nextUpdate"):
        await authenticate(issuer, dev_pki.idevid.cert, BOOTSTRAP)
    _with_crl(issuer, dev_pki, tmp_path / "absent.crl")
    with pytest.raises(AuthorizationError, match="unavailable"):
        await authenticate(issuer, dev_pki.idevid.cert, BOOTSTRAP)


async def test_external_anchor_crl_signed_by_someone_else_is_refused(
        issuer: Issuer, dev_pki: DevPKI, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    forged = (x509.CertificateRevocationListBuilder().issuer_name(dev_pki.manufacturer.cert.subject)
              .last_update(now).next_update(now + dt.timedelta(days=1)).sign(dev_pki.issuing.key, hashes.SHA256()))
    crl = tmp_path / "forged.crl"
    crl.write_bytes(forged.public_bytes(serialization.Encoding.DER))
    _with_crl(issuer, dev_pki, crl)
    with pytest.raises(AuthorizationError, match="not signed by"):
        await authenticate(issuer, dev_pki.idevid.cert, BOOTSTRAP)


# --- binding the requested names to the authenticating certificate ---------------------------


async def test_bootstrap_binding_issues_only_the_devices_own_serial_number(issuer: Issuer, dev_pki: DevPKI) -> None:
    who = await authenticate(issuer, dev_pki.idevid.cert, BOOTSTRAP)
    before = await issuer.ledger.count_certificates("issued")
    other = make_csr("sensor-2", extra_attrs=[x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-000002")])[0]
    out = await issuer.issue(request(other, "bootstrap", requester=who))
    assert isinstance(out, Rejected) and out.reason is RejectReason.POLICY, out
    assert "serialNumber" in out.detail
    none = make_csr("sensor-1")[0]
    assert isinstance(await issuer.issue(request(none, "bootstrap", requester=who)), Rejected)
    assert await issuer.ledger.count_certificates("issued") == before
    [row] = await issuer.ledger.audit_records(1, event="issue")
    assert not row.ok and "serialNumber" in (row.reason or "")
    own = make_csr("sensor-000001", extra_attrs=[x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-000001")])[0]
    assert isinstance(await issuer.issue(request(own, "bootstrap", requester=who)), Issued)


async def test_subject_binding_refuses_other_names(issuer: Issuer) -> None:
    out = await issue(issuer, "gw-bound")
    who = await authenticate(issuer, out.certificate, CertificatePolicy(("enroll",), ("gateway",),
                                                                         BindIdentity.SUBJECT))
    before = await issuer.ledger.count_certificates("issued")
    grab = make_csr("www.bank.example", sans=[x509.DNSName("www.bank.example")])[0]
    refused = await issuer.issue(request(grab, requester=who))
    assert isinstance(refused, Rejected) and refused.reason is RejectReason.POLICY
    extra_san = make_csr("gw-bound", sans=[x509.DNSName("www.bank.example")])[0]
    assert isinstance(await issuer.issue(request(extra_san, requester=who)), Rejected)
    assert await issuer.ledger.count_certificates("issued") == before
    assert isinstance(await issuer.issue(request(make_csr("gw-bound")[0], requester=who)), Issued)
