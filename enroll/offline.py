"""Issuance without a network (``enroll issue``): CSRs carried to an operator, one file or a
directory of them (a factory batch), through the same core, policy, serial contract and audit as
EST and SCEP (docs/ARCHITECTURE.md, "The issuance contract"), channel ``offline``, requester the
operator. Each CSR is its own unit of work: a bad one is refused alone, nothing else is lost.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.api import AuthMethod, Channel, IssueRequest, Issued, Pending, Rejected, Requester
from ca.issuer import Issuer

#: Parse gate: a CSR file larger than this is refused unread (issuance contract step 1).
MAX_CSR_BYTES = 64 * 1024


@dataclass(frozen=True)
class BatchResult:
    """What became of one CSR file."""

    name: str
    serial: int | None = None  # set when issued
    reason: str | None = None  # set when refused
    replayed: bool = False  # the same CSR was issued before: the same certificate again
    out: Path | None = None


def csr_files(path: Path) -> list[Path]:
    """One CSR file, or every regular, non-hidden file of a directory in name order (nothing in
    it is skipped silently: a file that is no CSR is refused with a reason)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path]


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 request (RFC 2986) from PEM or DER; ValueError when it is neither."""
    if len(data) > MAX_CSR_BYTES:
        raise ValueError(f"larger than {MAX_CSR_BYTES} bytes")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except Exception as exc:  # every parser failure is one refusal (issuance contract step 1)
        raise ValueError(f"not a PEM or DER certificate request ({type(exc).__name__})") from None


async def issue_one(issuer: Issuer, profile: str, path: Path, operator: str, out_dir: Path | None) -> BatchResult:
    """Issue one CSR file. The transaction is the CSR's SHA-256, so issuing the same file again
    returns the certificate it already got instead of a second one."""
    requester = Requester(AuthMethod.OPERATOR, operator)
    try:
        data = path.read_bytes() if path.stat().st_size <= MAX_CSR_BYTES else b"x" * (MAX_CSR_BYTES + 1)
        csr = load_csr(data)
    except (OSError, ValueError) as exc:
        reason = f"bad_request: {exc}"
        await issuer.audit("issue", ok=False, channel=Channel.OFFLINE, profile=profile, requester=requester,
                           reason=reason, detail={"file": path.name})
        return BatchResult(path.name, reason=reason)
    txn = "offline-" + hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()
    outcome = await issuer.issue(IssueRequest(csr, profile, requester, Channel.OFFLINE, transaction_id=txn))
    if isinstance(outcome, Issued):
        out = None
        if out_dir is not None:
            out = out_dir / f"{path.stem}.crt"
            out.write_bytes(outcome.certificate.public_bytes(serialization.Encoding.PEM))
        return BatchResult(path.name, serial=outcome.serial, replayed=outcome.replayed, out=out)
    if isinstance(outcome, Rejected):
        return BatchResult(path.name, reason=f"{outcome.reason.value}: {outcome.detail}")
    assert isinstance(outcome, Pending)  # an operator's request never waits for approval
    return BatchResult(path.name, reason=f"pending: request {outcome.request_id}")


async def issue_batch(issuer: Issuer, profile: str, paths: Sequence[Path], operator: str,
                      out_dir: Path | None = None, jobs: int = 8) -> list[BatchResult]:
    """Issue every file of ``paths`` (at most ``jobs`` at a time, so SQLite's group commit
    batches them), in input order."""
    issuer.profile(profile)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    gate = asyncio.Semaphore(max(1, jobs))

    async def one(p: Path) -> BatchResult:
        async with gate:
            return await issue_one(issuer, profile, p, operator, out_dir)

    return list(await asyncio.gather(*(one(p) for p in paths)))
