"""Round trips and real captures for est/wire.py and est/asn1.py (RFC 7030, RFC 8951, RFC 9908)."""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from est import asn1, serverkeygen_cms, wire
from est.errors import BadRequest, ProtocolError
from tests.support import require_tool

CAP = Path(__file__).parent / "captures"


def http_body(name: str) -> tuple[dict[str, str], bytes]:
    """Split a captured HTTP message into (headers lower-cased, body)."""
    raw = (CAP / name).read_bytes()
    head, _, body = raw.partition(b"\r\n\r\n")
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().decode().lower()] = v.strip().decode()
    return headers, body


def selfsigned(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


# --- RFC 8951 §3.1 input tolerance, against real client bodies ---------------------------------


@pytest.mark.parametrize(
    "name,cn",
    [
        ("curl-simpleenroll-b64-64.b64", "curl-capture-b64-64"),  # ok/curl-64-columns
        ("curl-simpleenroll-b64-76.b64", "curl-capture-b64-76"),  # ok/curl-76-columns
        ("curl-simpleenroll-pem.txt", "curl-capture-pem"),  # ok/curl-pem-armoured-csr
        ("libest-client-simpleenroll.b64", "estclient-capture"),  # ok/libest-64-columns
        ("strongswan-simpleenroll.b64", "strongswan-est-capture"),  # ok/strongswan-one-line
        ("strongswan-simplereenroll.b64", "strongswan-est-capture"),
        ("libest-client-serverkeygen.b64", "estclient-capture-skg"),
    ],
)
def test_request_bodies_from_real_clients_decode(name: str, cn: str) -> None:
    csr = wire.parse_csr(wire.decode_base64_body((CAP / name).read_bytes()))
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    assert wire.csr_signature_valid(csr)


def test_pop_csr_carries_tls_unique_as_challenge_password() -> None:
    """RFC 7030 §3.5: challengePassword = base64(tls-unique); value from the capture notes."""
    csr = wire.parse_csr(
        wire.decode_base64_body((CAP / "libest-client-simpleenroll-pop.b64").read_bytes())
    )
    assert asn1.challenge_password(csr) == b"RQI2HwxH0ucdb8ko"


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda t: t, id="ok/one-line"),
        pytest.param(lambda t: t + b"\n", id="ok/final-lf"),
        pytest.param(lambda t: b"\r\n".join(t[i : i + 64] for i in range(0, len(t), 64)), id="ok/crlf-64"),
        pytest.param(lambda t: b" \t".join(t[i : i + 10] for i in range(0, len(t), 10)), id="ok/spaces-tabs"),
        pytest.param(lambda t: t.rstrip(b"="), id="ok/no-padding"),
        pytest.param(lambda t: t + b"\x00", id="ok/trailing-nul"),
        pytest.param(lambda t: t.replace(b"+", b"-").replace(b"/", b"_"), id="ok/base64url"),
    ],
)
def test_decode_base64_body_variants(variant) -> None:  # type: ignore[no-untyped-def]
    der = os.urandom(300)
    assert wire.decode_base64_body(variant(base64.b64encode(der))) == der


@pytest.mark.parametrize(
    "body",
    [b"", b"   \r\n", b"!!!not base64!!!", b"QQ=Q", b"A", b"\x30\x82\x01\x00\xff\xfe"],
    ids=["empty", "blank", "garbage", "inner-padding", "one-char", "binary-der"],
)
def test_decode_base64_body_rejects(body: bytes) -> None:
    with pytest.raises(BadRequest):
        wire.decode_base64_body(body)


def test_garbage_der_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        wire.parse_csr(b"\x30\x03\x02\x01\x00")


def test_encode_base64_unwrapped_by_default_and_wraps_on_request() -> None:
    der = os.urandom(200)
    assert b"\n" not in wire.encode_base64(der)
    wrapped = wire.encode_base64(der, line_length=64)
    assert all(len(line) <= 64 for line in wrapped.split(b"\r\n"))
    assert wire.decode_base64_body(wrapped) == der


def test_base64_framings_lay_out_lines_as_named() -> None:
    """RFC 8951 §3.1 unwrapped by default; LF lines for libest (est/quirks.py); CRLF lines for
    ``[est] base64_line_length`` (RFC 2045 §6.8). Every layout decodes to the same DER."""
    der = os.urandom(300)
    assert wire.UNWRAPPED.encode(der) == base64.b64encode(der)
    lf = wire.Base64Framing(64, b"\n").encode(der)
    assert lf.endswith(b"\n") and b"\r" not in lf
    assert [len(line) for line in lf.split(b"\n")] == [64] * 6 + [16, 0]
    crlf = wire.Base64Framing(76, b"\r\n").encode(der)
    assert crlf.endswith(b"\r\n") and all(len(line) <= 76 for line in crlf.split(b"\r\n"))
    assert wire.decode_base64_body(lf) == wire.decode_base64_body(crlf) == der
    for bad in ((62, b"\n"), (-4, b"\n"), (64, b"\r"), (64, b" ")):
        with pytest.raises(ValueError):
            wire.Base64Framing(*bad)


def test_multipart_parts_carry_the_framing_then_the_delimiter_crlf() -> None:
    """Each part's body is the framing's base64 followed by the CRLF that belongs to the next
    delimiter (RFC 2046 §5.1.1); LF inside the base64 as libest's own server sends it."""
    key, certs = os.urandom(150), os.urandom(100)
    framing = wire.Base64Framing(64, b"\n")
    ctype, body = wire.build_serverkeygen_response(key, certs, encrypted=False, boundary="b", framing=framing)
    assert framing.encode(key) + b"\r\n--b\r\n" in body
    assert body.endswith(framing.encode(certs) + b"\r\n--b--\r\n")
    parts = wire.parse_multipart(ctype, body)
    assert [p.decoded() for p in parts] == [key, certs]


def test_content_types_are_byte_exact() -> None:
    assert wire.CT_CERTS_ONLY == "application/pkcs7-mime; smime-type=certs-only"
    assert wire.CT_CACERTS == "application/pkcs7-mime"
    assert wire.CT_CSRATTRS == "application/csrattrs"
    assert wire.CT_SERVER_GENERATED_KEY == "application/pkcs7-mime; smime-type=server-generated-key"


@pytest.mark.parametrize(
    "value", ["application/pkcs10", "Application/PKCS10; charset=binary", " application/pkcs10 "]
)
def test_is_pkcs10_tolerates_case_and_parameters(value: str) -> None:
    assert wire.is_pkcs10(value)


# --- certs-only -------------------------------------------------------------------------------


def test_cacerts_capture_from_libest_decodes() -> None:
    headers, body = http_body("libest-server-cacerts.http")
    assert headers["content-type"] == "application/pkcs7-mime"
    certs = wire.decode_certs_only(wire.decode_base64_body(body))
    ca = x509.load_pem_x509_certificate((CAP / "libest-est-ca-cert.pem").read_bytes())
    assert certs == (ca,)


def test_enroll_reply_capture_from_libest_decodes() -> None:
    headers, body = http_body("libest-server-simpleenroll.http")
    assert headers["content-type"] == wire.CT_CERTS_ONLY
    (cert,) = wire.decode_certs_only(wire.decode_base64_body(body))
    issued = x509.load_pem_x509_certificate((CAP / "libest-client-simpleenroll-cert.pem").read_bytes())
    assert cert == issued and cert.serial_number == 0x6F


def test_certs_only_round_trip() -> None:
    """DER sorts the SET OF certificates (X.690 §11.6), so order is not kept; clients pick the
    certificate by key or subject."""
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    certs = (selfsigned(k1, "a"), selfsigned(k2, "b"))
    der = wire.encode_certs_only(certs)
    assert set(wire.decode_certs_only(der)) == set(certs)
    openssl = require_tool("openssl")  # the cross-check with an independent CMS reader
    out = subprocess.run(
        [openssl, "pkcs7", "-inform", "DER", "-print_certs", "-noout"],
        input=der, capture_output=True, check=True,
    ).stdout
    assert b"subject=CN = a" in out and b"subject=CN = b" in out


def test_certs_only_rejects_garbage() -> None:
    with pytest.raises(ProtocolError):
        wire.decode_certs_only(b"\x30\x00")


# --- csrattrs (RFC 7030 §4.5.2, RFC 8951 §4, RFC 9908 §5) --------------------------------------

RFC8951_EXAMPLE = (
    "MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJBgcrBgEBAQEWBggqhkjOPQQDAw=="
)


def test_csrattrs_rfc8951_example_round_trips() -> None:
    der = base64.b64decode(RFC8951_EXAMPLE)
    items = asn1.decode_csrattrs(der)
    assert items[0] == asn1.AttrOrOid(asn1.Oid.CHALLENGE_PASSWORD)
    assert items[1] == asn1.key_type_ec("1.3.132.0.34")
    assert items[3] == asn1.AttrOrOid("1.2.840.10045.4.3.3")
    assert asn1.encode_csrattrs(items) == der


def test_csrattrs_rfc9908_examples_encode_byte_exact() -> None:
    """RFC 9908 §5.4 (RSA 4096 + SHA-256) and §5.5 (P-384, serialNumber, SHA-384)."""
    rsa4096 = asn1.encode_csrattrs(
        [asn1.AttrOrOid(asn1.Oid.CHALLENGE_PASSWORD), asn1.key_type_rsa(4096),
         asn1.AttrOrOid("1.2.840.113549.1.1.11")]
    )
    assert base64.b64encode(rsa4096) == (
        b"MCkGCSqGSIb3DQEJBzARBgkqhkiG9w0BAQExBAICEAAGCSqGSIb3DQEBCw=="
    )
    p384 = asn1.encode_csrattrs(
        [asn1.AttrOrOid(asn1.Oid.CHALLENGE_PASSWORD), asn1.key_type_ec("1.3.132.0.34"),
         asn1.AttrOrOid("2.5.4.5"), asn1.AttrOrOid("1.2.840.10045.4.3.3")]
    )
    assert base64.b64encode(p384) == b"MC4GCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiBgNVBAUGCCqGSM49BAMD"


def test_csrattrs_capture_from_libest_with_trailing_nul() -> None:
    headers, body = http_body("libest-server-csrattrs.http")
    assert headers["content-type"] == wire.CT_CSRATTRS
    items = asn1.decode_csrattrs(wire.decode_base64_body(body))
    assert [i.oid for i in items] == [
        "1.3.6.1.1.1.1.22", "1.2.840.113549.1.9.1", "1.3.132.0.34", "2.16.840.1.101.3.4.2.2"
    ]


def test_csrattrs_empty_sequence_is_valid() -> None:
    assert asn1.encode_csrattrs([]) == b"\x30\x00"
    assert asn1.decode_csrattrs(b"\x30\x00") == ()


def test_csrattrs_garbage_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        asn1.decode_csrattrs(b"\x04\x01\x00")


def test_rfc9908_template_round_trip() -> None:
    attr = asn1.certification_request_template(
        subject=[asn1.TemplateRdn("2.5.4.3"), asn1.TemplateRdn("2.5.4.11", "myDept")],
        key_algorithm=asn1.Oid.EC_PUBLIC_KEY,
        key_parameters=asn1.oid_value("1.2.840.10045.3.1.7"),
        extensions=[asn1.TemplateExtension("2.5.29.17")],
    )
    der = asn1.encode_csrattrs([attr])
    (item,) = asn1.decode_csrattrs(der)
    assert item.oid == asn1.Oid.CERTIFICATION_REQUEST_INFO_TEMPLATE and item.values
    parsed = asn1.parse_certification_request_template(item.values[0])
    assert parsed.subject == (asn1.TemplateRdn("2.5.4.3"), asn1.TemplateRdn("2.5.4.11", "myDept"))
    assert parsed.key_algorithm == asn1.Oid.EC_PUBLIC_KEY
    assert parsed.extensions == (asn1.TemplateExtension("2.5.29.17"),)


def test_rfc9908_template_with_values_uses_extension_request() -> None:
    ku = bytes.fromhex("03020780")
    attr = asn1.certification_request_template(
        extensions=[asn1.TemplateExtension("2.5.29.15", True, ku)]
    )
    assert attr.values
    assert bytes.fromhex("2a864886f70d01090e") in attr.values[0]  # extensionRequest OID
    parsed = asn1.parse_certification_request_template(attr.values[0])
    assert parsed.extensions == (asn1.TemplateExtension("2.5.29.15", True, ku),)


# --- serverkeygen multipart and encryption (RFC 7030 §4.4.2) ---------------------------------


def test_serverkeygen_capture_from_libest_parses() -> None:
    headers, body = http_body("libest-server-serverkeygen.http")
    result = wire.parse_serverkeygen_response(headers["content-type"], body)
    assert not result.encrypted
    assert result.certificates[0].subject.rfc4514_string() == "CN=estclient-capture-skg"
    # libest labels a PKCS#1 key application/pkcs8; the DER still loads as a private key
    key = serialization.load_der_private_key(result.key_der, None)
    assert isinstance(key, rsa.RSAPrivateKey)


def test_serverkeygen_multipart_round_trip_and_framing() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    p8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    certs = wire.encode_certs_only([selfsigned(key, "skg")])
    ctype, body = wire.build_serverkeygen_response(p8, certs, encrypted=False, boundary="b0und")
    assert ctype == "multipart/mixed; boundary=b0und"
    assert body.startswith(b"--b0und\r\nContent-Type: application/pkcs8\r\n"
                           b"Content-Transfer-Encoding: base64\r\n\r\n")
    assert body.endswith(b"\r\n--b0und--\r\n")
    assert body.index(b"application/pkcs8") < body.index(wire.CT_CERTS_ONLY.encode())
    assert body.count(b"Content-Transfer-Encoding: base64") == 2
    result = wire.parse_serverkeygen_response(ctype, body)
    assert result.key_der == p8 and result.certificates[0].subject.rfc4514_string() == "CN=skg"
    # bare-LF framing (libest style) parses too
    lf = body.replace(b"\r\n", b"\n")
    assert wire.parse_serverkeygen_response(ctype, lf).key_der == p8


def _generated() -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    gen = ec.generate_private_key(ec.SECP256R1())
    return (
        gen.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        gen,
    )


def test_server_generated_key_kek_round_trip_and_openssl() -> None:
    p8, _ = _generated()
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = selfsigned(signer_key, "est-server")
    kek = serverkeygen_cms.KekRecipient(b"device-kek-1", os.urandom(32))
    der = serverkeygen_cms.build_server_generated_key(p8, signer_key=signer_key, signer_cert=signer, recipient=kek)
    opened = serverkeygen_cms.open_server_generated_key(der, kek=kek)
    assert opened.pkcs8_der == p8 and opened.signer == signer
    with pytest.raises(ProtocolError):
        serverkeygen_cms.open_server_generated_key(der, kek=serverkeygen_cms.KekRecipient(b"device-kek-1", os.urandom(32)))
    openssl = require_tool("openssl")  # the cross-check with an independent CMS reader
    sd = subprocess.run(
        [openssl, "cms", "-decrypt", "-inform", "DER", "-secretkey", kek.kek.hex(),
         "-secretkeyid", kek.key_id.hex(), "-binary"],
        input=der, capture_output=True, check=True,
    ).stdout
    subprocess.run(
        [openssl, "cms", "-verify", "-inform", "DER", "-noverify", "-binary"],
        input=sd, capture_output=True, check=True,
    )


def test_server_generated_key_rsa_recipient_round_trip(tmp_path: Path) -> None:
    p8, _ = _generated()
    rk = rsa.generate_private_key(65537, 2048)
    rc = selfsigned(rk, "device")
    recipient = serverkeygen_cms.KeyTransRecipient(rc, serverkeygen_cms.subject_key_identifier(rc))
    der = serverkeygen_cms.build_server_generated_key(p8, signer_key=rk, signer_cert=rc, recipient=recipient)
    assert serverkeygen_cms.open_server_generated_key(der, private_key=rk).pkcs8_der == p8
    openssl = require_tool("openssl")  # the cross-check with an independent CMS reader
    keyfile = tmp_path / "rk.pem"
    keyfile.write_bytes(rk.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    subprocess.run(
        [openssl, "cms", "-decrypt", "-inform", "DER", "-inkey", str(keyfile), "-binary"],
        input=der, capture_output=True, check=True,
    )


def test_server_generated_key_refuses_ec_key_transport() -> None:
    p8, gen = _generated()
    ec_cert = selfsigned(gen, "ec-device")
    with pytest.raises(BadRequest):
        serverkeygen_cms.build_server_generated_key(
            p8, signer_key=gen, signer_cert=ec_cert,
            recipient=serverkeygen_cms.KeyTransRecipient(ec_cert, b"x"),
        )


def test_decrypt_key_identifiers_read_from_csr() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_attribute(x509.ObjectIdentifier(asn1.Oid.DECRYPT_KEY_IDENTIFIER), b"kid",
                       _tag=x509.name._ASN1Type.OctetString)
        .sign(key, hashes.SHA256())
    )
    assert asn1.decrypt_key_identifiers(csr) == (b"kid", None)


def test_server_generated_ec_key_with_leading_zero_survives_byte_exact() -> None:
    """RFC 5915 §3: the EC private key octet string has the curve's full length; re-encoding a
    parsed PrivateKeyInfo would drop a leading zero octet and break the key."""
    for _ in range(5000):
        gen = ec.generate_private_key(ec.SECP256R1())
        if gen.private_numbers().private_value < 1 << 248:
            break
    p8 = gen.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())
    signer_key = ec.generate_private_key(ec.SECP256R1())
    kek = serverkeygen_cms.KekRecipient(b"k", os.urandom(16))
    der = serverkeygen_cms.build_server_generated_key(p8, signer_key=signer_key,
                                          signer_cert=selfsigned(signer_key, "s"), recipient=kek)
    assert serverkeygen_cms.open_server_generated_key(der, kek=kek).pkcs8_der == p8


# --- byte-exact against the previous builders (issue 13: CMS by concatenation) ------------------
# cryptography's PKCS#7 serializer and the asn1crypto code est/wire.py used before ca/cms_der.py
# are the references; the concatenated DER must equal them for the same inputs.


def test_certs_only_is_byte_identical_to_cryptography_pkcs7() -> None:
    from cryptography.hazmat.primitives.serialization import pkcs7

    certs = [selfsigned(ec.generate_private_key(ec.SECP256R1()), f"c{i}") for i in range(4)]
    assert wire.encode_certs_only(certs) == pkcs7.serialize_certificates(certs, serialization.Encoding.DER)
    assert wire.encode_certs_only(certs[:1]) == pkcs7.serialize_certificates(certs[:1], serialization.Encoding.DER)


_FIXED_NOW = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)


def _reference_key_package(pkcs8_der: bytes, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bytes:
    from asn1crypto import cms, core
    from asn1crypto import x509 as ax509
    from cryptography.hazmat.primitives.asymmetric import padding

    package = bytes(asn1.RawAsymmetricKeyPackage([core.Any.load(pkcs8_der)]).dump())
    digest = hashes.Hash(hashes.SHA256())
    digest.update(package)
    signed_attrs = cms.CMSAttributes([
        cms.CMSAttribute({"type": "content_type", "values": [asn1.Oid.KP_A_KEY_PACKAGE]}),
        cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({"utc_time": _FIXED_NOW})]}),
        cms.CMSAttribute({"type": "message_digest", "values": [digest.finalize()]}),
    ])
    signature = key.sign(signed_attrs.dump(force=True), padding.PKCS1v15(), hashes.SHA256())
    acert = ax509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    signer_info = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value=cms.IssuerAndSerialNumber(
            {"issuer": acert.issuer, "serial_number": acert.serial_number})),
        "digest_algorithm": {"algorithm": "sha256"},
        "signed_attrs": signed_attrs,
        "signature_algorithm": {"algorithm": "sha256_rsa"},
        "signature": signature,
    })
    signed = cms.SignedData({
        "version": "v3",
        "digest_algorithms": [{"algorithm": "sha256"}],
        "encap_content_info": {"content_type": asn1.Oid.KP_A_KEY_PACKAGE,
                               "content": core.ParsableOctetString(package)},
        "certificates": [acert],
        "signer_infos": [signer_info],
    })
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())


def _reference_envelope(ri: object, iv: bytes, ciphertext: bytes) -> bytes:
    from asn1crypto import cms

    enveloped = cms.EnvelopedData({
        "version": "v2",
        "recipient_infos": [ri],
        "encrypted_content_info": {
            "content_type": "signed_data",
            "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
            "encrypted_content": ciphertext,
        },
    })
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump())


@pytest.mark.parametrize("kek_len", [16, 24, 32, None])
def test_server_generated_key_is_byte_identical_to_asn1crypto(
    monkeypatch: pytest.MonkeyPatch, kek_len: int | None
) -> None:
    """RSA PKCS#1 v1.5 signatures are deterministic, so the signed key package is compared whole;
    the envelope's random parts (content key, IV, OAEP) are read back from our output."""
    from asn1crypto import algos, cms
    from cryptography.hazmat.primitives import keywrap, padding as sympadding
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    monkeypatch.setattr(serverkeygen_cms, "_now", lambda: _FIXED_NOW)
    p8, _ = _generated()
    signer_key = rsa.generate_private_key(65537, 2048)
    signer = selfsigned(signer_key, "est-server")
    device_key = rsa.generate_private_key(65537, 2048)
    recipient: serverkeygen_cms.KekRecipient | serverkeygen_cms.KeyTransRecipient
    if kek_len is None:
        device = selfsigned(device_key, "device")
        recipient = serverkeygen_cms.KeyTransRecipient(device, serverkeygen_cms.subject_key_identifier(device))
    else:
        recipient = serverkeygen_cms.KekRecipient(b"kid-" + bytes([kek_len]), os.urandom(kek_len))
    der = serverkeygen_cms.build_server_generated_key(p8, signer_key=signer_key, signer_cert=signer, recipient=recipient)

    env = cms.ContentInfo.load(der)["content"]
    got_ri = env["recipient_infos"][0]
    encrypted_key = bytes(got_ri.chosen["encrypted_key"].native)
    eci = env["encrypted_content_info"]
    iv = bytes(eci["content_encryption_algorithm"]["parameters"].native)
    ciphertext = bytes(eci["encrypted_content"].native)
    if isinstance(recipient, serverkeygen_cms.KekRecipient):
        cek = keywrap.aes_key_unwrap(recipient.kek, encrypted_key)
        ri = cms.RecipientInfo(name="kekri", value=cms.KEKRecipientInfo({
            "version": "v4", "kekid": {"key_identifier": recipient.key_id},
            "key_encryption_algorithm": {"algorithm": {16: "aes128_wrap", 24: "aes192_wrap",
                                                       32: "aes256_wrap"}[len(recipient.kek)]},
            "encrypted_key": encrypted_key}))
    else:
        cek = device_key.decrypt(encrypted_key, padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
        ri = cms.RecipientInfo(name="ktri", value=cms.KeyTransRecipientInfo({
            "version": "v2",
            "rid": cms.RecipientIdentifier(name="subject_key_identifier", value=recipient.key_id),
            "key_encryption_algorithm": {"algorithm": "rsaes_oaep", "parameters": algos.RSAESOAEPParams({
                "hash_algorithm": {"algorithm": "sha256"},
                "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}}})},
            "encrypted_key": encrypted_key}))
    assert der == _reference_envelope(ri, iv, ciphertext)
    dec = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
    unpadder = sympadding.PKCS7(128).unpadder()
    inner = unpadder.update(dec.update(ciphertext) + dec.finalize()) + unpadder.finalize()
    assert inner == _reference_key_package(p8, signer_key, signer)
