"""EST load (RFC 7030 §4.2): simpleenroll and simplereenroll with pre-built requests.

Devices hold keep-alive TLS connections (``fresh=False``) or open a new TLS session for every
enrollment (``fresh=True``). They authenticate with a TLS client certificate (``mtls``) or HTTP
Basic (``basic``); re-enrolling devices use their own certificate, issued in an untimed
preparation phase. Every answer is decoded after the clock stops: a 200 counts only when its
certs-only body holds a certificate for the CSR's key.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enroll.bench import load


@dataclass(frozen=True)
class EstTarget:
    """An EST server: base URL (https://host:port), label, trust anchor and credentials."""

    url: str
    ca_bundle: Path
    label: str | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    basic: tuple[str, str] | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 443

    def path(self, op: str) -> str:
        base = urlsplit(self.url).path.rstrip("/")
        if "/.well-known/est" not in base:
            base += "/.well-known/est"
        return f"{base}/{self.label}/{op}" if self.label else f"{base}/{op}"


def ssl_context(ca_bundle: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2+ client context trusting only ``ca_bundle`` (RFC 7030 §3.6.1), optional client cert.

    Session tickets are left on: a device that reconnects would resume, as real clients do."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca_bundle))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def _csr(key: ec.EllipticCurvePrivateKey, subject: x509.Name) -> bytes:
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256()) \
        .public_bytes(serialization.Encoding.DER)


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def enroll_jobs(target: EstTarget, count: int, *, op: str = "simpleenroll", prefix: str = "bench",
                subjects: Callable[[int], x509.Name] | None = None, devices: int | None = None,
                keep_alive: bool = True) -> list[load.Job]:
    """``count`` pre-built POSTs, each with a fresh P-256 key and CSR (CN ``prefix-i``).

    With ``devices``, job ``i`` is pinned to device ``i % devices`` (its own TLS identity)."""
    headers = [("Content-Type", "application/pkcs10"), ("Content-Transfer-Encoding", "base64")]
    if target.basic is not None:
        token = base64.b64encode(f"{target.basic[0]}:{target.basic[1]}".encode()).decode()
        headers.append(("Authorization", f"Basic {token}"))
    host = f"{target.host}:{target.port}"
    jobs = []
    rnd = os.urandom(4).hex()
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = subjects(i) if subjects else x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"{prefix}-{rnd}-{i}")])
        body = base64.b64encode(_csr(key, subject))
        raw = load.build_request("POST", target.path(op), host, body, headers, keep_alive=keep_alive)
        jobs.append(load.Job(raw, tag=(key, _spki(key)), device=(i % devices) if devices else None))
    return jobs


def judge(answers: list[load.Answer]) -> tuple[list[bool], list[int], dict[str, int], list[x509.Certificate | None]]:
    """(ok per answer, serials, error kinds, issued certificate per answer)."""
    from est import wire

    ok: list[bool] = []
    serials: list[int] = []
    errors: dict[str, int] = {}
    certs: list[x509.Certificate | None] = []

    def bad(kind: str) -> None:
        ok.append(False)
        certs.append(None)
        errors[kind] = errors.get(kind, 0) + 1

    for a in answers:
        if a.error is not None:
            bad(a.error.split(":")[0])
            continue
        if a.status != 200:
            bad(f"HTTP {a.status}")
            continue
        try:
            found = wire.decode_certs_only(wire.decode_base64_body(a.body))
        except Exception:  # noqa: BLE001 - any undecodable body is one error kind
            bad("undecodable body")
            continue
        spki = a.job.tag[1]
        mine = [c for c in found if c.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == spki]
        if not mine:
            bad("no certificate for the CSR key")
            continue
        ok.append(True)
        certs.append(mine[0])
        serials.append(mine[0].serial_number)
    return ok, serials, errors, certs


def endpoints_for(target: EstTarget, contexts: list[ssl.SSLContext]) -> Callable[[int], load.Endpoint]:
    """Device ``i`` uses ``contexts[i % len(contexts)]``."""
    eps = [load.Endpoint(target.host, target.port, ctx, target.host) for ctx in contexts]
    return lambda i: eps[i % len(eps)]


def device_contexts(target: EstTarget, certs: list[x509.Certificate], keys: list[Any],
                    workdir: Path | None = None) -> list[ssl.SSLContext]:
    """One client TLS context per enrolled device (its own certificate), via temporary PEM files."""
    d = Path(tempfile.mkdtemp(prefix="enroll-bench-dev-", dir=workdir))
    out = []
    try:
        for i, (cert, key) in enumerate(zip(certs, keys)):
            pem = d / f"d{i}.pem"
            pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            out.append(ssl_context(target.ca_bundle, pem))
    finally:
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    return out
