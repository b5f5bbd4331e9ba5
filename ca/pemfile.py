"""PEM output (RFC 7468) for the command-line clients and the operator's tools: certificates,
CRLs and private keys as PEM, written to a file (a private key readable by its owner only) or,
for ``-``, to standard output."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes


def pem(items: Iterable[x509.Certificate | x509.CertificateRevocationList]) -> bytes:
    """Certificates or CRLs, concatenated PEM blocks (RFC 7468 §5, §6)."""
    return b"".join(i.public_bytes(serialization.Encoding.PEM) for i in items)


def key_pem(key: CertificateIssuerPrivateKeyTypes, passphrase: bytes | None = None) -> bytes:
    """A private key as PEM PKCS#8 (RFC 7468 §10, §11 when a passphrase encrypts it)."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def write(path: Path | None, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` (standard output for None or ``-``); ``private`` files are
    created with mode 0600, and an existing one is brought to it."""
    if path is None or str(path) == "-":
        sys.stdout.write(data.decode("ascii"))
        sys.stdout.flush()
        return
    if not private:
        path.write_bytes(data)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)
