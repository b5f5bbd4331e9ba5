"""GetCert / GetCRL as sscep 0.10.0 sends them (issue 12), and who may read a certificate.

sscep builds the IssuerAndSerialNumber of GetCert and GetCRL from the *first* certificate that
GetCACert returned. Against micromdm (captures/sscep-0.10.0, see captures/README.md) that is the
CA; against us it is the RA, and sscep failed with "No certificate could be identified matching"
(exit 74). The capture fixes the wire format; the tests rebuild it against our server.
"""

from __future__ import annotations

from asn1crypto import cms as acms
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scep import cms
from scep.asn1 import FailInfo, MessageType, PkiStatus
from scep.client import ScepClient, self_signed_signer, simple_csr
from scep.message import CertRep, IssuerAndSerial, PkiMessage, new_nonce
from tests.scep.scep_testpki import CAPTURES, load_cert, load_key
from tests.support import cached_rsa_key
from tests.scep.test_scep_negative import Env, assert_failure, env  # noqa: F401  (env is a fixture)

SSCEP = CAPTURES / "sscep-0.10.0"


def sscep_issuer_and_serial(getcacert: list[x509.Certificate], serial: int) -> bytes:
    """sscep 0.10.0's GetCert/GetCRL content: the first GetCACert certificate's subject + serial."""
    return IssuerAndSerial(issuer=getcacert[0].subject, serial=serial).to_der()


def _captured(name: str) -> tuple[PkiMessage, bytes]:
    msg = PkiMessage.parse((SSCEP / name).read_bytes())
    ca_key = load_key(SSCEP / "ca-key.pem")
    opened = msg.open(ca_key.decrypt, [load_cert(SSCEP / "ca-cert.pem")], {"aes128"})
    return msg, opened.plaintext


def test_capture_shows_sscep_names_the_first_getcacert_certificate() -> None:
    """micromdm's GetCACert was one certificate (the CA); sscep named it, serial 4, byte for byte."""
    ca = load_cert(SSCEP / "ca-cert.pem")
    for name, mtype in (("getcert.der", MessageType.GET_CERT), ("getcrl.der", MessageType.GET_CRL)):
        msg, content = _captured(name)
        assert msg.message_type == mtype and msg.transaction_id == "SSCEP transactionId"
        assert content == sscep_issuer_and_serial([ca], 4)
        assert acms.IssuerAndSerialNumber.load(content)["issuer"].dump() == ca.subject.public_bytes()


async def _sscep_request(env: Env, mtype: MessageType, content: bytes, signer: x509.Certificate,
                         key: rsa.RSAPrivateKey) -> bytes:
    """The captured shape: literal transactionID, AES-128, SHA-256, encrypted to the RA."""
    msg, _ = _captured("getcert.der")
    recipient = await ScepClient(env.base + "/scep").recipient()
    out = PkiMessage(message_type=int(mtype), transaction_id=msg.transaction_id, sender_nonce=new_nonce())
    return out.build(content, signer_cert=signer, sign=cms.rsa_signer(key), recipient=recipient,
                     cipher="aes128", digest="sha256")


async def _enrolled(env: Env, cn: str, index: int) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = cached_rsa_key(index)
    csr = simple_csr(key, cn, env.challenge)
    signer = self_signed_signer(key, csr.subject)
    msg = PkiMessage(message_type=19, transaction_id=f"GC-{cn}", sender_nonce=new_nonce())
    rep = await env.send(msg.build(csr.public_bytes(serialization.Encoding.DER), signer_cert=signer,
                                   sign=cms.rsa_signer(key), recipient=env.ra, cipher="aes128", digest="sha256"))
    assert rep.status is PkiStatus.SUCCESS
    return rep.open(key.decrypt, signer)[0][0], key


def _certs(rep: CertRep, key: rsa.RSAPrivateKey, signer: x509.Certificate) -> list[x509.Certificate]:
    return rep.open(key.decrypt, signer)[0]


async def test_sscep_getcert_naming_the_ra_finds_the_certificate(env: Env) -> None:
    cert, key = await _enrolled(env, "sscep-gc", 60)
    getcacert = await ScepClient(env.base + "/scep").get_ca_cert()
    assert getcacert[0] == env.ra and not getcacert[0].extensions.get_extension_for_class(
        x509.BasicConstraints).value.ca, "our GetCACert lists the RA first"
    der = await _sscep_request(env, MessageType.GET_CERT, sscep_issuer_and_serial(getcacert, cert.serial_number),
                               cert, key)
    rep = await env.send(der)
    assert rep.status is PkiStatus.SUCCESS, rep.fail_info_text
    assert _certs(rep, key, cert) == [cert]


async def test_sscep_getcrl_naming_the_ra_returns_the_crl(env: Env) -> None:
    cert, key = await _enrolled(env, "sscep-crl", 61)
    getcacert = await ScepClient(env.base + "/scep").get_ca_cert()
    der = await _sscep_request(env, MessageType.GET_CRL, sscep_issuer_and_serial(getcacert, cert.serial_number),
                               cert, key)
    rep = await env.send(der)
    assert rep.status is PkiStatus.SUCCESS
    _, crls = rep.open(key.decrypt, cert)
    assert len(crls) == 1 and crls[0].issuer == cert.issuer


async def test_getcert_by_the_key_that_requested_it(env: Env) -> None:
    """A self-signed signer over the certificate's own key (e.g. before the client stored it)."""
    cert, key = await _enrolled(env, "by-key", 62)
    signer = self_signed_signer(key, cert.subject)
    der = await _sscep_request(env, MessageType.GET_CERT, IssuerAndSerial(cert.issuer, cert.serial_number).to_der(),
                               signer, key)
    rep = await env.send(der)
    assert rep.status is PkiStatus.SUCCESS and _certs(rep, key, signer) == [cert]


async def test_getcert_by_another_device_is_bad_cert_id(env: Env) -> None:
    cert, _ = await _enrolled(env, "victim", 63)
    other, other_key = await _enrolled(env, "snoop", 64)
    getcacert = await ScepClient(env.base + "/scep").get_ca_cert()
    for signer, key in ((other, other_key), (self_signed_signer(cached_rsa_key(65), cert.subject), cached_rsa_key(65))):
        der = await _sscep_request(env, MessageType.GET_CERT,
                                   sscep_issuer_and_serial(getcacert, cert.serial_number), signer, key)
        rep = await assert_failure(env, der, FailInfo.BAD_CERT_ID)
        assert rep.envelope is None and rep.fail_info_text == "no such certificate"
    reasons = [r.reason or "" for r in await env.issuer.ledger.audit_records(20)]
    assert any("may not read certificate" in r for r in reasons), reasons


async def test_getcert_by_a_revoked_certificate_of_the_same_device_is_refused(env: Env) -> None:
    """Same subject, same device: the old (now revoked) certificate may no longer read the new one."""
    old, old_key = await _enrolled(env, "rotating", 66)
    new_key = cached_rsa_key(67)
    renewal = PkiMessage(message_type=19, transaction_id="GC-ROTATE", sender_nonce=new_nonce())
    rep = await env.send(renewal.build(simple_csr(new_key, "rotating").public_bytes(serialization.Encoding.DER),
                                       signer_cert=old, sign=cms.rsa_signer(old_key), recipient=env.ra,
                                       cipher="aes128", digest="sha256"))
    assert rep.status is PkiStatus.SUCCESS
    new = rep.open(old_key.decrypt, old)[0][0]
    content = IssuerAndSerial(new.issuer, new.serial_number).to_der()
    ok = await env.send(await _sscep_request(env, MessageType.GET_CERT, content, old, old_key))
    assert ok.status is PkiStatus.SUCCESS and _certs(ok, old_key, old) == [new]
    await env.issuer.revoke(old.serial_number, "superseded", by="test")
    await assert_failure(env, await _sscep_request(env, MessageType.GET_CERT, content, old, old_key),
                          FailInfo.BAD_CERT_ID)


async def test_getcert_naming_an_unknown_issuer_is_bad_cert_id(env: Env, pki) -> None:  # type: ignore[no-untyped-def]
    cert, key = await _enrolled(env, "unknown-issuer", 68)
    der = await _sscep_request(env, MessageType.GET_CERT, IssuerAndSerial(pki.ca.subject, cert.serial_number).to_der(),
                               cert, key)
    rep = await assert_failure(env, der, FailInfo.BAD_CERT_ID)
    assert rep.envelope is None

