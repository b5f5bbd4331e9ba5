"""Real client messages (tests/scep/captures) parse, verify and decrypt with our codecs."""

from __future__ import annotations


import pytest
from tests.scep.scep_testpki import CAPTURES, load_cert, load_key

from scep import cms
from scep.asn1 import FailInfo, MessageType, PkiStatus
from scep.errors import BadAlgError, MessageCheckError
from scep.message import CertRep, IssuerAndSerial, PkiMessage, challenge_password, decode_csr

# (folder, file, message type, cipher, digest, CSR subject CN or None, challenge)
REQUESTS = [
    ("scepclient-2.1.0", "pkcsreq.der", 19, "des", "sha1", "scepclient-capture", "secret123"),
    ("scepclient-2.1.0", "renewalreq.der", 17, "des", "sha1", "scepclient-capture", "secret123"),
    ("sscep-0.10.0", "pkcsreq-aes128.der", 19, "aes128", "sha256", "sscep-capture-aes128", "secret123"),
    ("sscep-0.10.0", "pkcsreq-3des.der", 19, "3des", "sha256", "sscep-capture-3des", "secret123"),
    ("sscep-0.10.0", "renewal-pkcsreq.der", 19, "aes128", "sha256", "sscep-capture-aes128", "secret123"),
    ("sscep-0.10.0", "getcert.der", 21, "aes128", "sha256", None, None),
    ("sscep-0.10.0", "getcrl.der", 22, "aes128", "sha256", None, None),
    ("certmonger-0.79.17", "pkcsreq.der", 19, "aes256", "sha256", "certmonger-capture", "secret123"),
    ("certmonger-0.79.17", "renewal-pkcsreq.der", 19, "aes256", "sha256", "certmonger-capture", "secret123"),
    ("pyscep-0.0.14", "pkcsreq.der", 19, "aes256", "sha256", "pyscep-capture", "secret123"),
    ("strongswan-pki-5.9.8", "scep-pkcsreq.der", 19, "aes128", "sha256", "strongswan-capture", "secret123"),
    ("strongswan-pki-5.9.8", "scep-renewalreq.der", 17, "aes128", "sha256", "strongswan-capture", None),
    ("strongswan-pki-5.9.8", "scep-renewalreq-challenge.der", 17, "aes128", "sha256", "strongswan-capture", "secret123"),
    ("scepserver-2.1.0", "certrep-failure-request.der", 19, "des", "sha1", "scepclient-capture-fail", "wrong-challenge"),
]


@pytest.mark.parametrize(
    ("folder", "file", "mtype", "cipher", "digest", "cn", "challenge"),
    REQUESTS,
    ids=[f"{f}/{n}" for f, n, *_ in REQUESTS],
)
def test_capture_parses_verifies_and_decrypts(
    folder: str, file: str, mtype: int, cipher: str, digest: str, cn: str | None, challenge: str | None
) -> None:
    d = CAPTURES / folder
    msg = PkiMessage.parse((d / file).read_bytes())
    assert msg.message_type == mtype
    assert msg.digest == digest
    msg.verify()
    opened = msg.open(load_key(d / "ca-key.pem").decrypt, [load_cert(d / "ca-cert.pem")], {cipher})
    assert opened.cipher == cipher
    if cn is not None:
        csr = decode_csr(opened.plaintext)
        assert csr.is_signature_valid
        assert csr.subject.rfc4514_string().startswith(f"CN={cn}")
        assert challenge_password(csr) == challenge
    else:
        ias = IssuerAndSerial.from_der(opened.plaintext)
        assert ias.serial == 4 and ias.issuer == load_cert(d / "ca-cert.pem").subject


def test_scepclient_des_is_refused_without_legacy() -> None:
    d = CAPTURES / "scepclient-2.1.0"
    msg = PkiMessage.parse((d / "pkcsreq.der").read_bytes())
    with pytest.raises(BadAlgError):
        msg.open(load_key(d / "ca-key.pem").decrypt, [load_cert(d / "ca-cert.pem")], {"aes128", "aes256", "3des"})


def test_capture_encrypted_to_another_certificate_fails_the_check() -> None:
    d = CAPTURES / "sscep-0.10.0"
    msg = PkiMessage.parse((d / "pkcsreq-aes128.der").read_bytes())
    other = load_cert(d / "aes128-issued-cert.pem")
    with pytest.raises(MessageCheckError):
        msg.open(load_key(d / "aes128-key.pem").decrypt, [other], {"aes128"})


def test_capture_with_a_flipped_signature_byte_fails_the_check() -> None:
    der = bytearray((CAPTURES / "pyscep-0.0.14" / "pkcsreq.der").read_bytes())
    der[-10] ^= 0x01
    msg = PkiMessage.parse(bytes(der))
    with pytest.raises(MessageCheckError):
        msg.verify()


def test_micromdm_certrep_success_decodes() -> None:
    """micromdm: BER envelope, DES, nonce reused; the issued certificate inside."""
    d = CAPTURES / "scepserver-2.1.0"
    rep = CertRep.parse((d / "certrep-success.der").read_bytes())
    rep.verify([load_cert(d / "ca-cert.pem")])
    assert rep.status is PkiStatus.SUCCESS
    certs, _ = rep.open(load_key(d / "certrep-success-recipient-key.pem").decrypt,
                        load_cert(d / "certrep-success-recipient-cert.pem"))
    assert certs[0].serial_number == 2


def test_micromdm_certrep_failure_decodes() -> None:
    d = CAPTURES / "scepserver-2.1.0"
    rep = CertRep.parse((d / "certrep-failure.der").read_bytes())
    rep.verify([load_cert(d / "ca-cert.pem")])
    assert (rep.status, rep.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_REQUEST)


def test_every_capture_message_type_is_known() -> None:
    for folder, file, *_ in REQUESTS:
        assert PkiMessage.parse((CAPTURES / folder / file).read_bytes()).known_type in set(MessageType)


