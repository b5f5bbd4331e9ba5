"""Signers: a key that only signs bytes (as an HSM does) yields the same certificates and CRLs."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
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
