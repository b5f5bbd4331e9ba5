"""Signers: a key that only signs bytes (as an HSM does) yields the same certificates and CRLs."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ca.keys import FileKey, default_hash, sign_certificate, sign_crl
from tests.lint import pkix_errors


class OpaqueSigner:
    """Holds a key but exposes only public_key() and sign(), like a PKCS#11 signer."""

    def __init__(self, key: object) -> None:
        self._inner = FileKey(key)  # type: ignore[arg-type]

    def public_key(self):  # type: ignore[no-untyped-def]
        return self._inner.public_key()

    def sign(self, data: bytes, algorithm: hashes.HashAlgorithm | None) -> bytes:
        return self._inner.sign(data, algorithm)


@pytest.mark.parametrize("make", [lambda: rsa.generate_private_key(65537, 2048),
                                  lambda: ec.generate_private_key(ec.SECP384R1()),
                                  ed25519.Ed25519PrivateKey.generate], ids=["rsa", "ec-p384", "ed25519"])
def test_opaque_signer_signs_certificates_and_crls(make) -> None:  # type: ignore[no-untyped-def]
    ca_key = make()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "HSM CA")])
    now = dt.datetime.now(dt.timezone.utc)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(leaf_key.public_key())
               .serial_number(2**70 + 5).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False))
    signer = OpaqueSigner(ca_key)
    algorithm = default_hash(signer.public_key())
    cert = sign_certificate(builder, signer, algorithm)
    cert.verify_directly_issued_by(
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, algorithm))
    assert pkix_errors(cert.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                                    fromlist=["Encoding"]).Encoding.DER)) == []
    crl = sign_crl(x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now)
                   .next_update(now + dt.timedelta(hours=1)).add_extension(x509.CRLNumber(1), False),
                   signer, algorithm)
    assert crl.is_signature_valid(ca_key.public_key())


def _full_builder(ca_key: object, name: x509.Name, not_after: dt.datetime) -> x509.CertificateBuilder:
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(x509.Name([
                x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"), x509.NameAttribute(NameOID.COMMON_NAME, "leaf é")]))
            .issuer_name(name).public_key(leaf_key.public_key())
            .serial_number(2**158 + 77).not_valid_before(now).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.example"),
                                                        x509.IPAddress(__import__("ipaddress").ip_address("::1"))]),
                           False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False))  # type: ignore[attr-defined]


@pytest.mark.parametrize("not_after", [dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc),
                                       dt.datetime(2051, 6, 1, tzinfo=dt.timezone.utc)], ids=["utctime", "gentime"])
def test_tbs_writer_matches_cryptography_byte_for_byte(not_after: dt.datetime) -> None:
    """RFC 5280 §4.1 / §5.1: with a deterministic scheme (RSA PKCS#1 v1.5) our single-signature path
    produces exactly the bytes cryptography's builder produces."""
    ca_key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "HSM CA")])
    builder = _full_builder(ca_key, name, not_after)
    ours = sign_certificate(builder, OpaqueSigner(ca_key), hashes.SHA256())
    theirs = builder.sign(ca_key, hashes.SHA256())
    assert ours.public_bytes(Encoding.DER) == theirs.public_bytes(Encoding.DER)
    now = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    revoked = [x509.RevokedCertificateBuilder().serial_number(2**100 + i).revocation_date(now)
               .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), False).build() for i in range(3)]
    revoked.append(x509.RevokedCertificateBuilder().serial_number(9).revocation_date(now).build())
    for entries in ([], revoked):
        crl_builder = (x509.CertificateRevocationListBuilder(revoked_certificates=list(entries)).issuer_name(name)
                       .last_update(now).next_update(not_after).add_extension(x509.CRLNumber(42), False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                      False))
        ours_crl = sign_crl(crl_builder, OpaqueSigner(ca_key), hashes.SHA256())
        assert ours_crl.public_bytes(Encoding.DER) == crl_builder.sign(ca_key, hashes.SHA256()).public_bytes(
            Encoding.DER)


def test_opaque_signer_is_asked_once_per_certificate() -> None:
    """No placeholder signature: the Signer signs the TBSCertificate exactly once (RFC 5280 §4.1.1.3)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    calls: list[bytes] = []

    class Counting(OpaqueSigner):
        def sign(self, data: bytes, algorithm: hashes.HashAlgorithm | None) -> bytes:
            calls.append(data)
            return super().sign(data, algorithm)

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "HSM CA")])
    cert = sign_certificate(_full_builder(ca_key, name, dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)),
                            Counting(ca_key), hashes.SHA256())
    assert calls == [cert.tbs_certificate_bytes]
    ca_key.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    assert pkix_errors(cert.public_bytes(Encoding.DER)) == []
