"""The TBS writer (ca/tbs.py) read back by cryptography's parser: times, algorithm identifiers,
extensions, TBSCertificate and TBSCertList (RFC 5280 §4.1, §5.1). The byte-for-byte comparison with
cryptography's builder through ca.keys is tests/ca/test_keys.py."""

from __future__ import annotations

import datetime as dt

import pytest
from asn1crypto import algos as aalgos
from asn1crypto import core as acore
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from ca import tbs

UTC = dt.timezone.utc
ISSUER = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "TBS Test CA")])


@pytest.mark.parametrize(("when", "tag", "text"), [
    (dt.datetime(1950, 1, 1, tzinfo=UTC), 0x17, b"500101000000Z"),
    (dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), 0x17, b"491231235959Z"),
    (dt.datetime(2050, 1, 1, tzinfo=UTC), 0x18, b"20500101000000Z"),
    (dt.datetime(1949, 12, 31, 23, 59, 59, tzinfo=UTC), 0x18, b"19491231235959Z"),
    (dt.datetime(2030, 6, 1, 14, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), 0x17, b"300601120000Z"),
    (dt.datetime(2030, 6, 1, 12, 0, 0), 0x17, b"300601120000Z"),  # naive: taken as UTC
], ids=["utctime-1950", "utctime-2049", "gentime-2050", "gentime-1949", "offset-to-utc", "naive"])
def test_time_is_utctime_through_2049_and_generalizedtime_otherwise(when: dt.datetime, tag: int,
                                                                   text: bytes) -> None:
    """RFC 5280 §4.1.2.5: UTCTime for 1950-2049, GeneralizedTime outside; always Zulu, seconds."""
    assert tbs.time(when) == bytes([tag, len(text)]) + text


def test_generalized_time_drops_fractions() -> None:
    """RFC 6960 §4.2.2.1 / RFC 5280 §4.1.2.5.2: GeneralizedTime without fractional seconds."""
    assert tbs.generalized_time(dt.datetime(2024, 5, 1, 12, 0, 0, 999_999, tzinfo=UTC)) == (
        b"\x18\x0f20240501120000Z")


@pytest.mark.parametrize(("key", "algorithm", "name", "parameters"), [
    (rsa.generate_private_key(65537, 2048), hashes.SHA256(), "sha256_rsa", b"\x05\x00"),
    (rsa.generate_private_key(65537, 2048), hashes.SHA512(), "sha512_rsa", b"\x05\x00"),
    (ec.generate_private_key(ec.SECP384R1()), hashes.SHA384(), "sha384_ecdsa", None),
    (ed25519.Ed25519PrivateKey.generate(), None, "ed25519", None),
], ids=["rsa-sha256", "rsa-sha512", "ecdsa-sha384", "ed25519"])
def test_signature_algorithm_identifiers(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey |
                                         ed25519.Ed25519PrivateKey, algorithm: hashes.HashAlgorithm | None,
                                         name: str, parameters: bytes | None) -> None:
    """RFC 4055 §5: NULL parameters for RSA; RFC 5758 §3.2 and RFC 8410 §3: absent otherwise."""
    der = tbs.signature_algorithm(key.public_key(), algorithm)
    assert aalgos.SignedDigestAlgorithm.load(der)["algorithm"].native == name
    fields = acore.load(der)
    if parameters is None:
        assert len(fields) == 1
    else:
        assert len(fields) == 2 and fields[1].dump() == parameters


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), None], ids=["sha1", "no-hash"])
def test_signature_algorithm_refuses_what_the_ca_never_signs_with(algorithm: hashes.HashAlgorithm | None) -> None:
    with pytest.raises(ValueError, match="unsupported signature hash"):
        tbs.signature_algorithm(rsa.generate_private_key(65537, 2048).public_key(), algorithm)


def test_extensions_omit_critical_false() -> None:
    """RFC 5280 §4.1: critical BOOLEAN DEFAULT FALSE, so DER leaves FALSE out."""
    bc = x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=False, path_length=None))
    ski = x509.Extension(x509.SubjectKeyIdentifier.oid, False, x509.SubjectKeyIdentifier(b"\x01" * 20))
    items = acore.load(tbs.extensions([bc, ski]))
    critical, plain = acore.load(items[0].dump()), acore.load(items[1].dump())
    assert (len(critical), len(plain)) == (3, 2)
    assert critical[1].dump() == b"\x01\x01\xff"


def _certificate(ca_key: rsa.RSAPrivateKey, exts: list[x509.Extension[x509.ExtensionType]],
                 not_after: dt.datetime) -> x509.Certificate:
    leaf = ec.generate_private_key(ec.SECP256R1()).public_key()
    sig_alg = tbs.signature_algorithm(ca_key.public_key(), hashes.SHA256())
    body = tbs.tbs_certificate(serial=2**158 + 3, sig_alg=sig_alg, issuer=ISSUER,
                               not_before=dt.datetime(2024, 1, 1, tzinfo=UTC), not_after=not_after,
                               subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]),
                               public_key=leaf, exts=exts)
    cert = x509.load_der_x509_certificate(tbs.signed(body, sig_alg, ca_key.sign(body, padding.PKCS1v15(),
                                                                                 hashes.SHA256())))
    assert cert.tbs_certificate_bytes == body and cert.public_key() == leaf
    return cert


def test_tbs_certificate_parses_with_every_field_where_rfc5280_puts_it() -> None:
    """RFC 5280 §4.1.2: version v3, serial, signature, issuer, validity, subject, SPKI, [3] extensions."""
    ca_key = rsa.generate_private_key(65537, 2048)
    san = x509.Extension(x509.SubjectAlternativeName.oid, False,
                         x509.SubjectAlternativeName([x509.DNSName("leaf.example.net")]))
    cert = _certificate(ca_key, [san], dt.datetime(2051, 1, 1, tzinfo=UTC))
    assert cert.version is x509.Version.v3
    assert cert.serial_number == 2**158 + 3 and cert.issuer == ISSUER
    assert cert.not_valid_before_utc == dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert cert.not_valid_after_utc == dt.datetime(2051, 1, 1, tzinfo=UTC)
    assert cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSA_WITH_SHA256
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == san.value
    ca_key.public_key().verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256())


def test_tbs_certificate_without_extensions_has_no_extensions_field() -> None:
    cert = _certificate(rsa.generate_private_key(65537, 2048), [], dt.datetime(2030, 1, 1, tzinfo=UTC))
    assert len(cert.extensions) == 0
    assert len(acore.load(cert.tbs_certificate_bytes)) == 7  # version .. subjectPublicKeyInfo, no [3]


def test_tbs_cert_list_parses_with_entries_reasons_and_optional_next_update() -> None:
    """RFC 5280 §5.1.2: version v2, thisUpdate, optional nextUpdate, revokedCertificates left out
    when empty, entry extensions (reasonCode, §5.3.1), crlExtensions in [0]."""
    ca_key = rsa.generate_private_key(65537, 2048)
    sig_alg = tbs.signature_algorithm(ca_key.public_key(), hashes.SHA256())
    when = dt.datetime(2024, 5, 1, tzinfo=UTC)
    revoked = [x509.RevokedCertificateBuilder().serial_number(2**100).revocation_date(when)
               .add_extension(x509.CRLReason(x509.ReasonFlags.certificate_hold), False).build(),
               x509.RevokedCertificateBuilder().serial_number(7).revocation_date(when).build()]
    number = x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(12))
    for entries, next_update in ((revoked, when + dt.timedelta(days=1)), ([], None)):
        body = tbs.tbs_cert_list(sig_alg=sig_alg, issuer=ISSUER, this_update=when, next_update=next_update,
                                 revoked=entries, exts=[number])
        crl = x509.load_der_x509_crl(tbs.signed(body, sig_alg, ca_key.sign(body, padding.PKCS1v15(),
                                                                           hashes.SHA256())))
        assert crl.is_signature_valid(ca_key.public_key())
        assert crl.issuer == ISSUER and crl.last_update_utc == when and crl.next_update_utc == next_update
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 12
        assert len(crl) == len(entries)
    held = x509.load_der_x509_crl(tbs.signed(
        tbs.tbs_cert_list(sig_alg=sig_alg, issuer=ISSUER, this_update=when, next_update=None, revoked=revoked,
                          exts=[]), sig_alg, b"\x00")).get_revoked_certificate_by_serial_number(2**100)
    assert held is not None and held.revocation_date_utc == when
    assert held.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.certificate_hold
