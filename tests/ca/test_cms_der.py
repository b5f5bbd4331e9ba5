"""ca/cms_der.py: the TLV writers agree with asn1crypto's DER encoder (X.690, RFC 5652)."""

from __future__ import annotations

import datetime as dt

import pytest
from asn1crypto import cms as acms
from asn1crypto import core
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca import cms_der


@pytest.mark.parametrize("n", [0, 1, 127, 128, 255, 256, 65535, 65536, (1 << 24) + 1])
def test_length_octets_match_asn1crypto(n: int) -> None:
    data = b"\x00" * n
    assert cms_der.tlv(0x04, data) == core.OctetString(data).dump()


@pytest.mark.parametrize("dotted", ["1.2.840.113549.1.7.2", "2.16.840.1.113733.1.9.7", "1.3.6.1.5.5.7.24.1",
                                    "2.16.840.1.101.3.4.1.42", "0.9.2342.19200300.100.1.25", "2.999.1"])
def test_oid_matches_asn1crypto(dotted: str) -> None:
    assert cms_der.oid(dotted) == core.ObjectIdentifier(dotted).dump()


@pytest.mark.parametrize("n", [0, 1, 127, 128, 255, 256, -1, -128, -129, 1 << 159, (1 << 160) - 1, -(1 << 64)])
def test_integer_matches_asn1crypto(n: int) -> None:
    assert cms_der.integer(n) == core.Integer(n).dump()


def test_strings_and_time_match_asn1crypto() -> None:
    when = dt.datetime(2049, 12, 31, 23, 59, 58, tzinfo=dt.timezone.utc)
    assert cms_der.utc_time(when) == core.UTCTime(when).dump()
    assert cms_der.printable_string("tx-1 +/=") == core.PrintableString("tx-1 +/=").dump()
    assert cms_der.utf8_string("übel ✓") == core.UTF8String("übel ✓").dump()
    assert cms_der.octet_string(b"\x00" * 200) == core.OctetString(b"\x00" * 200).dump()


def test_set_of_sorts_like_der() -> None:
    items = [core.OctetString(b"\x02").dump(), core.OctetString(b"\x01\x05").dump(), core.Integer(7).dump()]
    assert cms_der.set_of(items) == core.SetOf([core.Any.load(i) for i in items], spec=core.Any).dump(force=True)


def cert_record(serial: int, *, version: x509.Version | None = None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "O")])
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))


@pytest.mark.parametrize("serial", [1, 127, 128, (1 << 151) + 12345, (1 << 158) | 0xFF])
def test_issuer_and_serial_number_matches_asn1crypto(serial: int) -> None:
    cert = cert_record(serial)
    der = cert.public_bytes(serialization.Encoding.DER)
    acert = ax509.Certificate.load(der)
    want = acms.IssuerAndSerialNumber({"issuer": acert.issuer, "serial_number": acert.serial_number}).dump()
    assert cms_der.issuer_and_serial_number(der) == want


def test_issuer_and_serial_number_of_a_v1_certificate_without_version_field() -> None:
    """RFC 5280 §4.1: version DEFAULT v1 is absent from the TBSCertificate."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "v1")])
    acert_v3 = ax509.Certificate.load(cert_record(77).public_bytes(serialization.Encoding.DER))
    tbs = acert_v3["tbs_certificate"].copy()
    tbs["version"] = "v1"
    tbs["issuer"] = ax509.Name.load(name.public_bytes())
    tbs_der = tbs.dump(force=True)
    assert tbs_der[4:6] != b"\xa0\x03"  # no explicit version field
    v1 = ax509.Certificate({"tbs_certificate": tbs, "signature_algorithm": {"algorithm": "sha256_rsa"},
                            "signature_value": key.sign(tbs_der, __import__(
                                "cryptography.hazmat.primitives.asymmetric.padding",
                                fromlist=["PKCS1v15"]).PKCS1v15(), hashes.SHA256())})
    der = v1.dump(force=True)
    want = acms.IssuerAndSerialNumber({"issuer": v1.issuer, "serial_number": 77}).dump()
    assert cms_der.issuer_and_serial_number(der) == want


def test_certs_only_keeps_order_unless_sorted() -> None:
    a, b = (cert_record(i).public_bytes(serialization.Encoding.DER) for i in (5, 6))
    first, second = sorted([a, b], reverse=True)
    kept = acms.ContentInfo.load(cms_der.certs_only([first, second]))["content"]
    assert [c.chosen.dump() for c in kept["certificates"]] == [first, second]
    assert kept["version"].native == "v1" and len(kept["signer_infos"]) == 0
    sorted_ = acms.ContentInfo.load(cms_der.certs_only([first, second], sort=True))["content"]
    assert [c.chosen.dump() for c in sorted_["certificates"]] == [second, first]


def test_signer_info_version_follows_the_sid_choice() -> None:
    """RFC 5652 §5.3: issuerAndSerialNumber -> v1, subjectKeyIdentifier -> v3."""
    der = cert_record(9).public_bytes(serialization.Encoding.DER)
    alg = cms_der.algorithm_identifier(cms_der.oid("2.16.840.1.101.3.4.2.1"))
    ias = cms_der.SignerTemplate(cms_der.issuer_and_serial_number(der), alg, alg)
    ski = cms_der.SignerTemplate(cms_der.tlv(0x80, b"\x01" * 20), alg, alg)
    attrs = cms_der.signed_attributes([cms_der.attribute(cms_der.ID_CONTENT_TYPE, cms_der.ID_DATA)])
    for template, version in ((ias, "v1"), (ski, "v3")):
        sd = acms.ContentInfo.load(cms_der.signed_data(template, version=1, econtent_type=cms_der.ID_DATA,
                                                       econtent=b"x", signed_attrs=attrs, signature=b"s"))
        si = sd["content"]["signer_infos"][0]
        assert si["version"].native == version
        assert si["signed_attrs"].untag().dump(force=True) == attrs
        assert sd["content"]["encap_content_info"]["content"].native == b"x"
