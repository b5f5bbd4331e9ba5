"""Signing and decryption keys behind small interfaces, so file keys and HSM keys are alike.

A :class:`Signer` signs bytes; certificates and CRLs are encoded as TBS structures by
:mod:`ca.tbs` and signed once (:func:`sign_certificate`, :func:`sign_crl`), so a PKCS#11 key
(:mod:`ca.pkcs11`) takes the same path as a PEM file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)

from ca import pemfile, tbs
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


class PrivateKey(Signer, Decrypter, Protocol):
    """A key that signs and (RSA) decrypts: a PEM file or a PKCS#11 key."""


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


def open_key(ref: Path | str, key_name: str, *, passphrase: bytes | None = None,
             pkcs11: Any = None) -> PrivateKey:
    """The key a config value names: an RFC 7512 ``pkcs11:`` URI (``pkcs11`` is the
    ``[pkcs11]`` :class:`ca.pkcs11.Settings`) or a PEM file."""
    if isinstance(ref, str) and ref.startswith("pkcs11:"):
        from ca import pkcs11 as p11

        return p11.load_key(ref, pkcs11, key_name)
    return load_file_key(Path(ref), key_name, passphrase)


def probe(key: Signer, key_name: str, *, decrypt: bool = False) -> None:
    """Prove that ``key`` signs (and, for an RA, decrypts) with its public key (start-up check)."""
    from cryptography.exceptions import InvalidSignature

    pub = key.public_key()
    data = os.urandom(32)
    algorithm = default_hash(pub)
    try:
        sig = key.sign(data, algorithm)
        if isinstance(pub, rsa.RSAPublicKey):
            assert algorithm is not None
            pub.verify(sig, data, padding.PKCS1v15(), algorithm)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            assert algorithm is not None
            pub.verify(sig, data, ec.ECDSA(algorithm))
        elif isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(sig, data)
    except InvalidSignature:
        raise ConfigError(key_name, "the key's signature does not verify with its public key") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(key_name, f"the key cannot sign: {exc}") from None
    if decrypt:
        if not isinstance(pub, rsa.RSAPublicKey) or not isinstance(key, Decrypter):
            raise ConfigError(key_name, "SCEP key transport needs an RSA key")
        pad = padding.PKCS1v15()
        try:
            ok = key.decrypt(pub.encrypt(data, pad), pad) == data
        except (ValueError, TypeError) as exc:
            raise ConfigError(key_name, f"the key cannot decrypt: {exc}") from None
        if not ok:
            raise ConfigError(key_name, "the key does not decrypt what its public key encrypted")


def write_private_key(path: Path, key: CertificateIssuerPrivateKeyTypes, passphrase: bytes | None = None) -> None:
    """Write a PEM PKCS#8 key readable by the owner only."""
    pemfile.write(path, pemfile.key_pem(key, passphrase), private=True)


def _builder_fields(builder: x509.CertificateBuilder) -> dict[str, Any]:
    """The fields a CertificateBuilder was given (cryptography keeps them as attributes)."""
    fields = {"issuer": builder._issuer_name, "subject": builder._subject_name,
              "public_key": builder._public_key, "serial": builder._serial_number,
              "not_before": builder._not_valid_before, "not_after": builder._not_valid_after}
    for name, value in fields.items():
        if value is None:
            raise ValueError(f"the certificate has no {name}")
    return fields


def sign_certificate(
    builder: x509.CertificateBuilder, signer: Signer, algorithm: hashes.HashAlgorithm | None
) -> x509.Certificate:
    """Encode the TBSCertificate and sign it once through ``signer`` (RFC 5280 §4.1.1.3)."""
    sig_alg = tbs.signature_algorithm(signer.public_key(), algorithm)
    body = tbs.tbs_certificate(sig_alg=sig_alg, exts=list(builder._extensions), **_builder_fields(builder))
    return x509.load_der_x509_certificate(tbs.signed(body, sig_alg, signer.sign(body, algorithm)))


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, signer: Signer, algorithm: hashes.HashAlgorithm | None
) -> x509.CertificateRevocationList:
    """Encode the TBSCertList and sign it once through ``signer`` (RFC 5280 §5.1.1.3)."""
    if builder._issuer_name is None or builder._last_update is None:
        raise ValueError("the CRL has no issuer or thisUpdate")
    sig_alg = tbs.signature_algorithm(signer.public_key(), algorithm)
    body = tbs.tbs_cert_list(sig_alg=sig_alg, issuer=builder._issuer_name, this_update=builder._last_update,
                             next_update=builder._next_update, revoked=builder._revoked_certificates,
                             exts=list(builder._extensions))
    return x509.load_der_x509_crl(tbs.signed(body, sig_alg, signer.sign(body, algorithm)))


def default_hash(pub: CertificateIssuerPublicKeyTypes) -> hashes.HashAlgorithm | None:
    """The signature hash to use with a CA key (SHA-256, SHA-384 for P-384/P-521, none for Ed25519)."""
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return None
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()
