"""Re-enrollment with a new name (RFC 7030 §4.2.2, ChangeSubjectName of RFC 6402 §2.10): the
attribute must name the certificate's current subject and SAN, and the label must allow it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from asn1crypto import core
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from est import asn1
from est.errors import BadRequest, Forbidden
from est.service import EstService
from tests.est.test_est_service import P, settings


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _current(cn: str, dns: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name("ca")).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), False).sign(key, hashes.SHA256()))


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def _csr(new_cn: str, change: bytes | None) -> x509.CertificateSigningRequest:
    """A CSR carrying ``change`` as its ChangeSubjectName attribute value (RFC 2986 §4.1:
    attributes [0] IMPLICIT SET OF Attribute; cryptography's builder writes strings only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    attrs = b""
    if change is not None:
        oid = bytes(core.ObjectIdentifier(asn1.Oid.CHANGE_SUBJECT_NAME).dump())
        attrs = _tlv(0x30, oid + _tlv(0x31, change))
    info = _tlv(0x30, b"\x02\x01\x00" + _name(new_cn).public_bytes() + spki + _tlv(0xA0, attrs))
    signature = key.sign(info, ec.ECDSA(hashes.SHA256()))
    alg = _tlv(0x30, bytes(core.ObjectIdentifier("1.2.840.10045.4.3.2").dump()))
    return x509.load_der_x509_csr(_tlv(0x30, info + alg + _tlv(0x03, b"\x00" + signature)))


def _change(subject: x509.Name | None) -> bytes:
    value: dict[str, Any] = {}
    if subject is not None:
        value["subject"] = ax509.Name.load(subject.public_bytes())
    return bytes(asn1.ChangeSubjectName(value).dump())


def _service(allow: bool) -> tuple[EstService, Any]:
    s = settings(P("p", {"labels": ["p"], "auth": ["basic"], "allow_change_subject_name": allow}))
    return EstService(s, None), s.rules["p"]  # type: ignore[arg-type]


def test_change_subject_name_parses_to_the_named_subject() -> None:
    der = _change(_name("old"))
    subject, alt = asn1.change_subject_name(der)
    assert subject == _name("old").public_bytes() and alt is None
    with pytest.raises(ValueError):
        asn1.change_subject_name(b"\x30\x03\x02\x01\x00")


def test_renaming_is_allowed_only_where_the_label_allows_it() -> None:
    cert = _current("old", "old.example")
    svc, rule = _service(allow=True)
    svc.check_names(rule, _csr("new", _change(_name("old"))), cert)  # names the current subject: allowed
    with pytest.raises(Forbidden, match="not the current certificate's subject"):
        svc.check_names(rule, _csr("new", _change(_name("someone-else"))), cert)
    with pytest.raises(BadRequest, match="does not parse"):
        svc.check_names(rule, _csr("new", b"\x04\x00"), cert)
    svc, rule = _service(allow=False)
    with pytest.raises(Forbidden, match="not allowed"):
        svc.check_names(rule, _csr("new", _change(_name("old"))), cert)


def test_without_change_subject_name_the_names_must_repeat() -> None:
    cert = _current("same", "same.example")
    svc, rule = _service(allow=True)
    with pytest.raises(Forbidden, match="repeat the subject"):
        svc.check_names(rule, _csr("other", None), cert)
