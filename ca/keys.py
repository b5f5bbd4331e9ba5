"""Signing and decryption keys behind small interfaces, so file keys and HSM keys are alike.

A :class:`Signer` signs bytes; certificates and CRLs are built without the private key object
(:func:`sign_certificate`, :func:`sign_crl`), so a PKCS#11 signer fits the same path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from asn1crypto import core as asn1core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)

from ca.errors import ConfigError


@runtime_checkable
class Signer(Protocol):
    """A private key that signs (RSA PKCS#1 v1.5, ECDSA or Ed25519)."""

    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        """The matching public key."""
        ...

    def sign(self, data: bytes, algorithm: hashes.HashAlgorithm | None) -> bytes:
        """Sign ``data`` hashed with ``algorithm`` (None for Ed25519)."""
        ...


@runtime_checkable
class Decrypter(Protocol):
    """A private RSA key that unwraps CMS content-encryption keys (RFC 5652 §6.2.1)."""

    def decrypt(self, ciphertext: bytes, pad: padding.AsymmetricPadding) -> bytes:
        """Decrypt one key-transport block."""
        ...


class FileKey:
    """A private key loaded from a PEM file; both a :class:`Signer` and a :class:`Decrypter`."""

    def __init__(self, key: CertificateIssuerPrivateKeyTypes) -> None:
        self.key = key

    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        return self.key.public_key()

    def sign(self, data: bytes, algorithm: hashes.HashAlgorithm | None) -> bytes:
        k = self.key
        if isinstance(k, rsa.RSAPrivateKey):
            assert algorithm is not None
            return k.sign(data, padding.PKCS1v15(), algorithm)
        if isinstance(k, ec.EllipticCurvePrivateKey):
            assert algorithm is not None
            return k.sign(data, ec.ECDSA(algorithm))
        if isinstance(k, ed25519.Ed25519PrivateKey):
            return k.sign(data)
        raise TypeError(f"unsupported key {type(k).__name__}")

    def decrypt(self, ciphertext: bytes, pad: padding.AsymmetricPadding) -> bytes:
        if not isinstance(self.key, rsa.RSAPrivateKey):
            raise TypeError("only RSA keys decrypt")
        return self.key.decrypt(ciphertext, pad)


def check_key_file_mode(path: Path, key_name: str) -> None:
    """Refuse a key file that group or others can read (or write)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            key_name,
            f"{path} is accessible by group/others (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}",
        )


def load_file_key(path: Path, key_name: str, passphrase: bytes | None = None) -> FileKey:
    """Load a PEM private key, refusing world/group-readable files (issue: local CA keys)."""
    if not path.is_file():
        raise ConfigError(key_name, f"{path} does not exist")
    check_key_file_mode(path, key_name)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), passphrase)
    except TypeError as exc:
        raise ConfigError(key_name, f"{path} is encrypted: set its passphrase ({exc})") from exc
    except ValueError as exc:
        raise ConfigError(key_name, f"{path} cannot be loaded: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ConfigError(key_name, f"{path}: unsupported key type {type(key).__name__}")
    return FileKey(key)


def write_private_key(path: Path, key: CertificateIssuerPrivateKeyTypes, passphrase: bytes | None = None) -> None:
    """Write a PEM PKCS#8 key readable by the owner only."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


_placeholders: dict[str, CertificateIssuerPrivateKeyTypes] = {}


def _placeholder_for(pub: CertificateIssuerPublicKeyTypes) -> CertificateIssuerPrivateKeyTypes:
    """A throwaway key of the same algorithm family, so cryptography writes the right AlgorithmIdentifier."""
    tag = "rsa" if isinstance(pub, rsa.RSAPublicKey) else "ec" if isinstance(pub, ec.EllipticCurvePublicKey) \
        else "ed25519"
    if tag not in _placeholders:
        key: CertificateIssuerPrivateKeyTypes
        if tag == "rsa":
            key = rsa.generate_private_key(65537, 1024)
        elif tag == "ec":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = ed25519.Ed25519PrivateKey.generate()
        _placeholders[tag] = key
    return _placeholders[tag]


def _resign(tbs: bytes, sig_alg_der: bytes, signer: Signer, algorithm: hashes.HashAlgorithm | None) -> bytes:
    signature = signer.sign(tbs, algorithm)
    bits = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature  # BIT STRING, no unused bits
    body = tbs + sig_alg_der + bits
    return b"\x30" + _der_length(len(body)) + body


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _signature_algorithm_der(signed: bytes) -> bytes:
    """The outer signatureAlgorithm of a signed X.509 structure (RFC 5280 §4.1.1.2, §5.1.1.2)."""
    outer = asn1core.Sequence.load(signed)
    return bytes(outer[1].dump())


def sign_certificate(
    builder: x509.CertificateBuilder, signer: Signer, algorithm: Any
) -> x509.Certificate:
    """Sign a certificate through ``signer``: cryptography builds the TBS, the signer signs it."""
    if isinstance(signer, FileKey):
        return builder.sign(signer.key, algorithm)
    draft = builder.sign(_placeholder_for(signer.public_key()), algorithm)
    alg = _signature_algorithm_der(draft.public_bytes(serialization.Encoding.DER))
    return x509.load_der_x509_certificate(_resign(draft.tbs_certificate_bytes, alg, signer, algorithm))


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, signer: Signer, algorithm: Any
) -> x509.CertificateRevocationList:
    """Sign a CRL through ``signer`` (RFC 5280 §5.1)."""
    if isinstance(signer, FileKey):
        return builder.sign(signer.key, algorithm)
    draft = builder.sign(_placeholder_for(signer.public_key()), algorithm)
    alg = _signature_algorithm_der(draft.public_bytes(serialization.Encoding.DER))
    return x509.load_der_x509_crl(_resign(draft.tbs_certlist_bytes, alg, signer, algorithm))


def default_hash(pub: CertificateIssuerPublicKeyTypes) -> hashes.HashAlgorithm | None:
    """The signature hash to use with a CA key (SHA-256, SHA-384 for P-384/P-521, none for Ed25519)."""
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return None
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()
