"""One unit of work per enrollment (docs/ARCHITECTURE.md): whatever the protocol and the proof,
an enrollment costs the ledger one write and at most one read, once the process holds reserved
serials (a block is reserved in one committed write, then shared by many enrollments)."""

from __future__ import annotations

import base64
from collections import Counter

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca.issuer import Issuer
from enroll import est_mount, scep_mount
from enroll.config import Config
from enroll.setup import InitResult
from est.service import Credentials, EstService, TlsInfo
from scep import cms
from scep.asn1 import PkiStatus
from scep.client import self_signed_signer, simple_csr
from scep.message import CertRep, PkiMessage, new_nonce
from scep.service import ScepService
from tests.support import cached_rsa_key

ONE_UNIT = Counter({"read": 1, "write": 1})


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _csr_body(cn: str, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    from tests.support import make_csr

    csr, _ = make_csr(cn, key)
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


@pytest.fixture
def est(config: Config, issuer: Issuer) -> EstService:
    return EstService(est_mount.settings(config), issuer)


@pytest.fixture
def scep(config: Config, issuer: Issuer) -> ScepService:
    g, profiles = scep_mount._settings(config)
    return ScepService(issuer, g, profiles, scep_mount._load_ras(config, g, profiles))


async def _warm(est: EstService, embedded: InitResult) -> x509.Certificate:
    """One enrollment first: it reserves this process's block of serials."""
    resp = await est.simpleenroll("gateway", _csr_body("warm-up"), TlsInfo(version="TLSv1.3", remote="127.0.0.1"),
                                  Credentials(embedded.est_user, embedded.est_password))
    assert resp.status == 200, resp.body
    from est import wire

    return wire.decode_certs_only(base64.b64decode(resp.body))[0]


async def test_est_basic_enrollment_is_one_read_and_one_write(est: EstService, issuer: Issuer,
                                                             embedded: InitResult) -> None:
    await _warm(est, embedded)
    with issuer.ledger.counting() as counts:
        resp = await est.simpleenroll("gateway", _csr_body("basic-1"), TlsInfo(version="TLSv1.3", remote="127.0.0.1"),
                                      Credentials(embedded.est_user, embedded.est_password))
    assert resp.status == 200
    assert counts == ONE_UNIT


async def test_est_client_certificate_enrollment_is_one_read_and_one_write(
        est: EstService, issuer: Issuer, embedded: InitResult) -> None:
    cert = await _warm(est, embedded)
    with issuer.ledger.counting() as counts:
        resp = await est.simpleenroll("gateway", _csr_body("mtls-1"),
                                      TlsInfo(version="TLSv1.3", peer_certificate=cert, remote="127.0.0.1"), None)
    assert resp.status == 200, resp.body
    assert counts == ONE_UNIT


async def test_est_reenrollment_is_one_read_and_one_write(est: EstService, issuer: Issuer,
                                                         embedded: InitResult) -> None:
    cert = await _warm(est, embedded)
    with issuer.ledger.counting() as counts:
        resp = await est.simplereenroll("gateway", _csr_body("warm-up"),
                                        TlsInfo(version="TLSv1.3", peer_certificate=cert, remote="127.0.0.1"), None)
    assert resp.status == 200, resp.body
    assert counts == ONE_UNIT


def _pkcsreq(scep: ScepService, csr: x509.CertificateSigningRequest, key: rsa.RSAPrivateKey,
             signer: x509.Certificate | None = None, mtype: int = 19) -> bytes:
    msg = PkiMessage(message_type=mtype, transaction_id=f"T-{new_nonce().hex()}", sender_nonce=new_nonce())
    return msg.build(csr.public_bytes(serialization.Encoding.DER),
                     signer_cert=signer or self_signed_signer(key, csr.subject), sign=cms.rsa_signer(key),
                     recipient=scep.ras["issuing"].cert, cipher="aes128", digest="sha256")


async def _scep(scep: ScepService, der: bytes, profile: str = "router") -> CertRep:
    return CertRep.parse((await scep.pki_operation(scep.profile(profile), der, "127.0.0.1")).body)


async def _scep_warm(scep: ScepService, embedded: InitResult) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = cached_rsa_key(61)
    csr = simple_csr(key, "scep-warm", embedded.scep_challenge)
    signer = self_signed_signer(key, csr.subject)
    rep = await _scep(scep, _pkcsreq(scep, csr, key, signer))
    assert rep.status is PkiStatus.SUCCESS, rep
    certs, _ = rep.open(key.decrypt, signer)
    return certs[0], key


async def test_scep_pkcsreq_with_the_static_challenge_is_one_read_and_one_write(
        scep: ScepService, issuer: Issuer, embedded: InitResult) -> None:
    await _scep_warm(scep, embedded)
    key = cached_rsa_key(62)
    der = _pkcsreq(scep, simple_csr(key, "scep-static", embedded.scep_challenge), key)
    with issuer.ledger.counting() as counts:
        rep = await _scep(scep, der)
    assert rep.status is PkiStatus.SUCCESS
    assert counts == ONE_UNIT


async def test_scep_pkcsreq_with_a_one_time_challenge_is_one_read_and_one_write(
        scep: ScepService, issuer: Issuer, embedded: InitResult) -> None:
    await _scep_warm(scep, embedded)
    challenge = await issuer.create_one_time_challenge("router", 60)
    key = cached_rsa_key(63)
    der = _pkcsreq(scep, simple_csr(key, "scep-once", challenge), key)
    with issuer.ledger.counting() as counts:
        rep = await _scep(scep, der)
    assert rep.status is PkiStatus.SUCCESS
    assert counts == ONE_UNIT
    assert (await _scep(scep, _pkcsreq(scep, simple_csr(cached_rsa_key(64), "scep-twice", challenge),
                                       cached_rsa_key(64)))).status is PkiStatus.FAILURE  # spent in that one write


async def test_scep_renewal_is_one_read_and_one_write(scep: ScepService, issuer: Issuer,
                                                      embedded: InitResult) -> None:
    cert, key = await _scep_warm(scep, embedded)
    new_key = cached_rsa_key(65)
    csr = x509.CertificateSigningRequestBuilder().subject_name(cert.subject).sign(new_key, hashes.SHA256())
    der = _pkcsreq(scep, csr, key, signer=cert, mtype=17)
    with issuer.ledger.counting() as counts:
        rep = await _scep(scep, der)
    assert rep.status is PkiStatus.SUCCESS, rep
    assert counts == ONE_UNIT
