"""Helpers for the SCEP tests: a throwaway PKI and the real-client captures (no fixtures here)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CAPTURES = Path(__file__).parent / "captures"

_KEYS: list[rsa.RSAPrivateKey] = []


def rsa_key(index: int = 0) -> rsa.RSAPrivateKey:
    """Cached RSA-2048 keys (key generation dominates test time otherwise)."""
    while len(_KEYS) <= index:
        _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _KEYS[index]


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    key: rsa.RSAPrivateKey,
    subject: str,
    issuer_key: rsa.RSAPrivateKey | None = None,
    issuer: x509.Certificate | None = None,
    *,
    ca: bool = False,
    serial: int | None = None,
    days: int = 30,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer.subject if issuer else name(subject))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_csr(key: rsa.RSAPrivateKey, cn: str, challenge: str | None = None) -> x509.CertificateSigningRequest:
    b = x509.CertificateSigningRequestBuilder().subject_name(name(cn))
    if challenge is not None:
        b = b.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return b.sign(key, hashes.SHA256())


@dataclass
class TestPki:  # noqa: D101
    __test__ = False
    ca_key: rsa.RSAPrivateKey
    ca: x509.Certificate
    client_key: rsa.RSAPrivateKey
    client_self_signed: x509.Certificate
    other_key: rsa.RSAPrivateKey
    other_cert: x509.Certificate


def build_pki() -> TestPki:
    ca_key = rsa_key(0)
    ca = make_cert(ca_key, "SCEP Test CA", ca=True, days=365)
    client_key = rsa_key(1)
    other_key = rsa_key(2)
    return TestPki(
        ca_key=ca_key,
        ca=ca,
        client_key=client_key,
        client_self_signed=make_cert(client_key, "client"),
        other_key=other_key,
        other_cert=make_cert(other_key, "Someone else"),
    )


def load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())
