"""Signed export bundles (``enroll export`` / ``enroll import``): what an isolated server issued and
revoked since a date, carried out to another instance (or an auditor's tooling).

A bundle is one JSON document: ``files`` (name -> base64 content: ``certificates.json``, one
``crl/NAME.crl`` per CA, ``audit.json``), a ``manifest`` (base64 of a JSON document naming every
file with its SHA-256, the period, the signing CA), the manifest's ``signature`` by the CA key
through its :class:`ca.keys.Signer` (RSA PKCS#1 v1.5, ECDSA or Ed25519, ``hash`` names the
digest), and the ``signer`` certificate (PEM). :func:`verify` checks the signer against trusted CA
certificates, the signature, then every hash, before anything is recorded; :func:`record`
records the certificates like ``enroll certs import`` (channel ``import``) and their
revocations, idempotently.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from ca.api import AuthMethod, Channel, Requester
from ca.errors import CAError
from ca.issuer import Issuer, sha256_hex
from ca.ledger import certificates, serial_hex
from ca.local import LocalCA

FORMAT = "enroll-bundle-1"
MAX_BUNDLE_BYTES = 512 * 1024 * 1024
_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
                                             "sha512": hashes.SHA512()}


class BundleError(CAError):
    """The bundle is malformed, not signed by a trusted CA, or altered; nothing was recorded."""


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`record` did."""

    recorded: int  # certificates new to this ledger
    known: int  # already recorded (the same certificate): a re-import
    revoked: int  # revocations applied now
    conflicts: tuple[str, ...] = ()  # serials this ledger holds with another certificate


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _signing_ca(issuer: Issuer, ca_name: str | None) -> tuple[str, LocalCA]:
    names = [ca_name] if ca_name else list(issuer.cas)
    for name in names:
        if name not in issuer.cas:
            raise CAError(f"no CA named {name!r}")
        backend = issuer.cas[name].backend
        if isinstance(backend, LocalCA):
            return name, backend
    raise CAError("no CA of this server can sign a bundle (a local or PKCS#11 key is needed); name one with --ca")


async def export(issuer: Issuer, since: float, ca_name: str | None = None) -> bytes:
    """The signed bundle of certificates of one CA issued or revoked at or after ``since``, its
    current CRL and the audit records of the period."""
    name, backend = _signing_ca(issuer, ca_name)
    c = certificates.c
    query = sa.select(certificates).where(
        c.issuer == name, c.status == "issued", sa.or_(c.issued_at >= since, c.revoked_at >= since)).order_by(c.id)
    rows = await issuer.ledger.run_read(lambda conn: conn.execute(query).fetchall())
    certs = [{"serial": r.serial, "profile": r.profile, "channel": r.channel, "requester": r.requester,
              "auth_method": r.auth_method,
              "issued_at": r.issued_at, "revoked_at": r.revoked_at, "revocation_reason": r.revocation_reason,
              "der": _b64(bytes(r.der))} for r in rows]
    crl = await issuer.crl_for_ca(name)
    audit = [dict(vars(a)) for a in reversed(await issuer.ledger.audit_records(1_000_000, since=since))]
    files = {"certificates.json": json.dumps(certs, sort_keys=True).encode(),
             f"crl/{name}.crl": crl.public_bytes(serialization.Encoding.DER),
             "audit.json": json.dumps(audit, sort_keys=True, default=str).encode()}
    chain = await backend.ca_chain()
    manifest = json.dumps({
        "format": FORMAT, "ca": name, "since": since, "created_at": time.time(),
        "signer_sha256": sha256_hex(chain.issuer.public_bytes(serialization.Encoding.DER)),
        "counts": {"certificates": len(certs), "audit": len(audit)},
        "files": {n: hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())}}, sort_keys=True).encode()
    signature, hash_name = backend.sign_bytes(manifest)
    return json.dumps({
        "format": FORMAT, "manifest": _b64(manifest), "signature": _b64(signature), "hash": hash_name,
        "signer": chain.issuer.public_bytes(serialization.Encoding.PEM).decode(),
        "files": {n: _b64(d) for n, d in sorted(files.items())}}, indent=1).encode()


def _verify_signature(cert: x509.Certificate, signature: bytes, data: bytes, hash_name: str | None) -> None:
    key = cert.public_key()
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return
        algorithm = _HASHES.get(hash_name or "")
        if algorithm is None:
            raise BundleError(f"unsupported manifest hash {hash_name!r}")
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            raise BundleError(f"unsupported signer key {type(key).__name__}")
    except InvalidSignature:
        raise BundleError("the manifest signature does not verify with the signer's key") from None


@dataclass(frozen=True)
class Verified:
    """A bundle whose signer, signature and hashes checked out."""

    manifest: dict[str, Any]
    signer: x509.Certificate
    files: dict[str, bytes]
    sha256: str

    def certificates(self) -> list[dict[str, Any]]:
        """The certificate records of ``certificates.json``."""
        return list(json.loads(self.files["certificates.json"]))


def verify(data: bytes, trusted: Sequence[x509.Certificate]) -> Verified:
    """Check a bundle before anything is recorded: the signer is a trusted CA certificate (or one
    issued by it), the manifest's signature verifies with it, every file is listed with its
    SHA-256 and nothing else is present. :class:`BundleError` otherwise."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError("bundle too large")
    try:
        doc = json.loads(data)
        manifest_bytes = base64.b64decode(doc["manifest"], validate=True)
        signature = base64.b64decode(doc["signature"], validate=True)
        signer = x509.load_pem_x509_certificate(doc["signer"].encode())
        files = {str(n): base64.b64decode(v, validate=True) for n, v in dict(doc["files"]).items()}
        hash_name = doc.get("hash")
    except Exception as exc:  # every parser failure is one refusal
        raise BundleError(f"not an enroll bundle ({type(exc).__name__})") from None
    if doc.get("format") != FORMAT:
        raise BundleError(f"unknown bundle format {doc.get('format')!r}")
    signer_der = signer.public_bytes(serialization.Encoding.DER)
    for anchor in trusted:
        if anchor.public_bytes(serialization.Encoding.DER) == signer_der:
            break
        try:
            signer.verify_directly_issued_by(anchor)
            break
        except (ValueError, TypeError, InvalidSignature):
            continue
    else:
        raise BundleError("the bundle's signer is none of the trusted CA certificates (--trust)")
    _verify_signature(signer, signature, manifest_bytes, hash_name)
    try:
        manifest = json.loads(manifest_bytes)
        listed = dict(manifest["files"])
    except Exception as exc:
        raise BundleError(f"the manifest does not parse ({type(exc).__name__})") from None
    if manifest.get("signer_sha256") != sha256_hex(signer_der):
        raise BundleError("the manifest names another signer")
    if set(listed) != set(files) or "certificates.json" not in files:
        raise BundleError("the bundle's files differ from its manifest's list")
    for name, content in files.items():
        if hashlib.sha256(content).hexdigest() != listed[name]:
            raise BundleError(f"{name}: SHA-256 differs from the manifest (altered)")
    return Verified(manifest, signer, files, hashlib.sha256(data).hexdigest())


async def record(issuer: Issuer, bundle: Verified, *, by: Requester | str) -> ImportSummary:
    """Record a verified bundle's certificates (channel ``import``, under the local CA whose
    certificate signed them) and apply their revocations; certificates already recorded are
    skipped, so importing the same bundle again changes nothing."""
    parsed: list[tuple[x509.Certificate, dict[str, Any]]] = []
    for rec in bundle.certificates():
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(rec["der"], validate=True))
            cert.verify_directly_issued_by(bundle.signer)
        except Exception as exc:
            raise BundleError(f"certificate {str(rec.get('serial'))[:48]}: not signed by the bundle's CA "
                              f"({type(exc).__name__})") from None
        if rec["profile"] not in issuer.profiles:
            raise BundleError(f"certificate {rec['serial']}: no profile {rec['profile']!r} on this instance")
        parsed.append((cert, rec))
    local = None
    for name, ca in issuer.cas.items():
        if (await ca.backend.ca_chain()).issuer.public_bytes(serialization.Encoding.DER) == \
                bundle.signer.public_bytes(serialization.Encoding.DER):
            local = name
    if local is None:
        raise BundleError("no CA of this instance has the bundle's CA certificate; configure it as [cas.NAME]")
    recorded = known = revoked = 0
    conflicts: list[str] = []
    for cert, rec in parsed:
        der = cert.public_bytes(serialization.Encoding.DER)
        row = await issuer.ledger.find_by_serial(local, cert.serial_number)
        if row is not None and row.der != der:
            conflicts.append(serial_hex(cert.serial_number))
            continue
        if row is None:
            row = await issuer.adopt(cert, rec["profile"], by=by, channel=Channel.IMPORT)
            recorded += 1
        else:
            known += 1
        if rec.get("revoked_at") is not None and row.revoked_at is None:
            if await issuer.ledger.revoke(local, cert.serial_number, rec.get("revocation_reason") or "unspecified",
                                          float(rec["revoked_at"])):
                revoked += 1
    await issuer.audit("import-bundle", ok=not conflicts, channel=Channel.IMPORT, profile=None,
                       requester=by if isinstance(by, Requester) else Requester(AuthMethod.OPERATOR, by),
                       reason="conflicts" if conflicts else "", detail={
                           "sha256": bundle.sha256, "ca": local, "recorded": recorded, "known": known,
                           "revoked": revoked, "conflicts": conflicts[:50]})
    if revoked:
        await issuer.crl_for_ca(local, force=True)
    return ImportSummary(recorded, known, revoked, tuple(conflicts))

