"""scep/message.py: pkiMessage and CertRep round trips (RFC 8894 §3.2, §3.3)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from tests.support import TestPki, make_csr, name

from scep import cms
from scep.asn1 import FailInfo, MessageType, PkiStatus
from scep.errors import BadRequestError, ScepDecodeError
from scep.message import (
    CertRep,
    IssuerAndSerial,
    IssuerAndSubject,
    PkiMessage,
    challenge_password,
    decode_csr,
    new_nonce,
)


def _request(pki: TestPki, mtype: int, data: bytes, cipher: str = "aes128", digest: str = "sha256") -> bytes:
    msg = PkiMessage(message_type=mtype, transaction_id="TX-1", sender_nonce=b"N" * 16)
    return msg.build(
        data,
        signer_cert=pki.client_self_signed,
        sign=cms.rsa_signer(pki.client_key),
        recipient=pki.ca,
        cipher=cipher,
        digest=digest,
    )


@pytest.mark.parametrize("cipher", ["des", "3des", "aes128", "aes192", "aes256"])
@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha512"])
def test_pkcsreq_round_trip(pki: TestPki, cipher: str, digest: str) -> None:
    csr, _ = make_csr("dev1", pki.client_key, challenge="s3cret")
    der = _request(pki, MessageType.PKCS_REQ, csr.public_bytes(serialization.Encoding.DER), cipher, digest)
    msg = PkiMessage.parse(der)
    assert (msg.message_type, msg.transaction_id, msg.sender_nonce) == (19, "TX-1", b"N" * 16)
    assert msg.known_type is MessageType.PKCS_REQ
    assert msg.digest == digest and msg.signer == pki.client_self_signed
    msg.verify()
    opened = msg.open(pki.ca_key.decrypt, [pki.ca], {cipher})
    assert opened.cipher == cipher
    got = decode_csr(opened.plaintext)
    assert got == csr
    assert challenge_password(got) == "s3cret"


def test_unknown_and_forbidden_types_still_parse(pki: TestPki) -> None:
    """Type 18 and unknown numbers must parse so that they can get a signed FAILURE."""
    for t in (18, 99):
        msg = PkiMessage.parse(_request(pki, t, b"x"))
        assert msg.message_type == t
    assert PkiMessage.parse(_request(pki, 99, b"x")).known_type is None


def test_issuer_and_serial_round_trip(pki: TestPki) -> None:
    ias = IssuerAndSerial(issuer=pki.ca.subject, serial=12345678901234567890)
    assert IssuerAndSerial.from_der(ias.to_der()) == ias
    msg = PkiMessage.parse(_request(pki, MessageType.GET_CERT, ias.to_der()))
    assert IssuerAndSerial.from_der(msg.open(pki.ca_key.decrypt, [pki.ca], {"aes128"}).plaintext) == ias


def test_issuer_and_subject_round_trip(pki: TestPki) -> None:
    ias = IssuerAndSubject(issuer=pki.ca.subject, subject=name("dev1"))
    assert IssuerAndSubject.from_der(ias.to_der()) == ias


@pytest.mark.parametrize("junk", [b"", b"\x30\x00", b"\x04\x01x"])
def test_bad_message_data_is_bad_request(junk: bytes) -> None:
    for decoder in (IssuerAndSerial.from_der, IssuerAndSubject.from_der, decode_csr):
        with pytest.raises(BadRequestError):
            decoder(junk)


def test_message_without_scep_attributes_is_undecodable(pki: TestPki) -> None:
    der = cms.sign_signed_data(b"x", [], pki.client_self_signed, cms.rsa_signer(pki.client_key))
    with pytest.raises(ScepDecodeError):
        PkiMessage.parse(der)


def test_certrep_success_round_trip(pki: TestPki) -> None:
    issued = pki.other_cert
    payload = cms.certs_only([issued, pki.ca])
    env = CertRep.success_envelope(payload, pki.client_self_signed, "aes256")
    rep = CertRep(status=PkiStatus.SUCCESS, transaction_id="TX-1", recipient_nonce=b"N" * 16, envelope=env)
    der = rep.build(signer_cert=pki.ca, sign=cms.rsa_signer(pki.ca_key), digest="sha256")
    back = CertRep.parse(der)
    back.verify([pki.ca])
    assert back == rep  # every field, fresh senderNonce included
    assert back.sender_nonce != back.recipient_nonce
    certs, crls = back.open(pki.client_key.decrypt, pki.client_self_signed)
    assert certs == [issued, pki.ca]  # the issued certificate first
    assert crls == []


@pytest.mark.parametrize("fail_info", list(FailInfo))
def test_certrep_failure_round_trip(pki: TestPki, fail_info: FailInfo) -> None:
    rep = CertRep(
        status=PkiStatus.FAILURE,
        transaction_id="TX-2",
        recipient_nonce=new_nonce(),
        fail_info=fail_info,
        fail_info_text="why: é",
    )
    back = CertRep.parse(rep.build(signer_cert=pki.ca, sign=cms.rsa_signer(pki.ca_key), digest="sha1"))
    back.verify([pki.ca])
    assert back == rep
    assert back.envelope is None


def test_certrep_pending_has_no_envelope(pki: TestPki) -> None:
    rep = CertRep(status=PkiStatus.PENDING, transaction_id="TX-3", recipient_nonce=b"r" * 16)
    back = CertRep.parse(rep.build(signer_cert=pki.ca, sign=cms.rsa_signer(pki.ca_key)))
    assert back.status is PkiStatus.PENDING and back.signed is not None and back.signed.content is None


def test_certrep_failure_needs_fail_info(pki: TestPki) -> None:
    rep = CertRep(status=PkiStatus.FAILURE, transaction_id="t", recipient_nonce=b"r")
    with pytest.raises(ValueError):
        rep.build(signer_cert=pki.ca, sign=cms.rsa_signer(pki.ca_key))


def test_certrep_signed_by_someone_else_is_refused(pki: TestPki) -> None:
    rep = CertRep(status=PkiStatus.PENDING, transaction_id="t", recipient_nonce=b"r")
    back = CertRep.parse(rep.build(signer_cert=pki.other_cert, sign=cms.rsa_signer(pki.other_key)))
    from scep.errors import MessageCheckError

    with pytest.raises(MessageCheckError):
        back.verify([pki.ca])


def test_getcrl_reply_carries_the_crl(pki: TestPki) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = dt.datetime.now(dt.timezone.utc)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=1))
        .sign(pki.ca_key, hashes.SHA256())
    )
    payload = cms.certs_only([], [crl])
    env = CertRep.success_envelope(payload, pki.client_self_signed, "aes128")
    rep = CertRep(status=PkiStatus.SUCCESS, transaction_id="t", recipient_nonce=b"r", envelope=env)
    back = CertRep.parse(rep.build(signer_cert=pki.ca, sign=cms.rsa_signer(pki.ca_key)))
    certs, crls = back.open(pki.client_key.decrypt, pki.client_self_signed)
    assert certs == [] and crls == [crl]
