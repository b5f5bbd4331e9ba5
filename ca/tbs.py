"""A small DER writer for the to-be-signed parts of certificates and CRLs (RFC 5280 §4.1, §5.1).

The CA builds TBSCertificate / TBSCertList itself and asks a :class:`ca.keys.Signer` for ONE
signature over it, so a key that only signs bytes (an HSM) takes the same path as a file key.
The encoding follows the one cryptography writes (field order, UTCTime before 2050, DEFAULT
values omitted), so a certificate signed here is byte-identical to ``builder.sign(key)`` for a
deterministic signature scheme (RSA PKCS#1 v1.5, Ed25519).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes, CertificatePublicKeyTypes

from ca.cms_der import integer, oid, sequence, tlv


def bit_string(data: bytes) -> bytes:
    """BIT STRING with no unused bits."""
    return tlv(0x03, b"\x00" + data)


def time(value: dt.datetime) -> bytes:
    """Time: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5)."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if 1950 <= value.year < 2050:
        return tlv(0x17, value.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(0x18, value.strftime("%Y%m%d%H%M%SZ").encode())


def generalized_time(value: dt.datetime) -> bytes:
    """GeneralizedTime without fractions (RFC 6960 §4.2.2.1 producedAt, thisUpdate)."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return tlv(0x18, value.strftime("%Y%m%d%H%M%SZ").encode())


_RSA_HASH_OIDS = {"sha256": "1.2.840.113549.1.1.11", "sha384": "1.2.840.113549.1.1.12",
                  "sha512": "1.2.840.113549.1.1.13"}
_ECDSA_HASH_OIDS = {"sha256": "1.2.840.10045.4.3.2", "sha384": "1.2.840.10045.4.3.3",
                    "sha512": "1.2.840.10045.4.3.4"}


def signature_algorithm(pub: CertificateIssuerPublicKeyTypes, algorithm: hashes.HashAlgorithm | None) -> bytes:
    """AlgorithmIdentifier of the signature (RFC 4055 §5: NULL parameters for RSA; RFC 5758 §3.2:
    absent for ECDSA; RFC 8410 §3: absent for Ed25519)."""
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return sequence(oid("1.3.101.112"))
    if algorithm is None or algorithm.name not in _RSA_HASH_OIDS:
        raise ValueError(f"unsupported signature hash {algorithm.name if algorithm else None}")
    if isinstance(pub, rsa.RSAPublicKey):
        return sequence(oid(_RSA_HASH_OIDS[algorithm.name]), b"\x05\x00")
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return sequence(oid(_ECDSA_HASH_OIDS[algorithm.name]))
    raise ValueError(f"unsupported CA key {type(pub).__name__}")


def extensions(exts: Iterable[x509.Extension[x509.ExtensionType]]) -> bytes:
    """The SEQUENCE OF Extension; critical is omitted when FALSE (DER DEFAULT, RFC 5280 §4.1)."""
    items = []
    for ext in exts:
        crit = b"\x01\x01\xff" if ext.critical else b""
        items.append(sequence(oid(ext.oid.dotted_string), crit, tlv(0x04, ext.value.public_bytes())))
    return sequence(*items)


def tbs_certificate(
    *,
    serial: int,
    sig_alg: bytes,
    issuer: x509.Name,
    not_before: dt.datetime,
    not_after: dt.datetime,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    exts: Sequence[x509.Extension[x509.ExtensionType]],
) -> bytes:
    """TBSCertificate, version 3 (RFC 5280 §4.1.2)."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    parts = [
        tlv(0xA0, integer(2)),
        integer(serial),
        sig_alg,
        issuer.public_bytes(),
        sequence(time(not_before), time(not_after)),
        subject.public_bytes(),
        spki,
    ]
    if exts:
        parts.append(tlv(0xA3, extensions(exts)))
    return sequence(*parts)


def tbs_cert_list(
    *,
    sig_alg: bytes,
    issuer: x509.Name,
    this_update: dt.datetime,
    next_update: dt.datetime | None,
    revoked: Sequence[x509.RevokedCertificate],
    exts: Sequence[x509.Extension[x509.ExtensionType]],
) -> bytes:
    """TBSCertList, version 2 (RFC 5280 §5.1.2); revokedCertificates omitted when empty."""
    parts = [integer(1), sig_alg, issuer.public_bytes(), time(this_update)]
    if next_update is not None:
        parts.append(time(next_update))
    if revoked:
        entries = []
        for r in revoked:
            entry = [integer(r.serial_number), time(r.revocation_date_utc)]
            if len(r.extensions):
                entry.append(extensions(r.extensions))
            entries.append(sequence(*entry))
        parts.append(sequence(*entries))
    if exts:
        parts.append(tlv(0xA0, extensions(exts)))
    return sequence(*parts)


def signed(tbs: bytes, sig_alg: bytes, signature: bytes) -> bytes:
    """Certificate / CertificateList: SEQUENCE { tbs, signatureAlgorithm, signatureValue }."""
    return sequence(tbs, sig_alg, bit_string(signature))
