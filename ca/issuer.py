"""The issuance core: one object that runs the issuance contract for every protocol.

EST and SCEP authenticate their requester, then call :meth:`Issuer.issue`; it verifies proof of
possession, applies the profile, handles manual approval and idempotence, reserves a random
serial in the ledger, has the CA backend sign, re-checks and stores the certificate and audits
the decision, all before the protocol answers (DESIGN.md, "The issuance contract").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.api import (
    AuthMethod,
    CABackend,
    CAChain,
    Channel,
    IssueRequest,
    Issued,
    Outcome,
    Pending,
    Rejected,
    Requester,
    SupportsCRL,
)
from ca.authz import TrustStore, challenge_digest, hash_secret, new_challenge, verify_secret
from ca.errors import (
    AuthenticationError,
    CAError,
    LedgerError,
    NotFoundError,
    PolicyError,
    RejectReason,
)
from ca.ledger import CertRecord, Ledger, PendingRecord, serial_hex
from ca.profile import (
    Profile,
    build_template,
    check_issued,
    check_key,
    refuse_forbidden_requests,
    verify_csr,
)

log = logging.getLogger("enroll.audit")

#: RFC 5280 §5.3.1 reason codes by the names the CLI accepts.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "ca_compromise": x509.ReasonFlags.ca_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "certificate_hold": x509.ReasonFlags.certificate_hold,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aa_compromise": x509.ReasonFlags.aa_compromise,
}

_DUMMY_HASH = hash_secret("no such user")


@dataclass(frozen=True)
class IssuingCA:
    """A CA backend with its publication settings (``[cas.NAME]``)."""

    name: str
    backend: CABackend
    crl_url: str | None = None
    crl_validity_hours: int = 24


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256, the ledger's fingerprint of CSRs and keys."""
    return hashlib.sha256(data).hexdigest()


def spki_sha256(public_key: Any) -> str:
    """Fingerprint of a SubjectPublicKeyInfo (what binds a request to its key)."""
    return sha256_hex(public_key.public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))


def _describe(r: Requester | None) -> str | None:
    return None if r is None else f"{r.method.value}:{r.principal}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


Observer = Callable[[str, str, str, float], None]  # (profile, channel, outcome, seconds)


class Issuer:
    """Protocol-neutral issuance, revocation, CRLs, pending requests and authentication helpers."""

    def __init__(
        self,
        ledger: Ledger,
        cas: Mapping[str, IssuingCA],
        profiles: Mapping[str, Profile],
        *,
        users: Mapping[str, str] | None = None,
        trust: Mapping[str, TrustStore] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.ledger = ledger
        self.cas = dict(cas)
        self.profiles = dict(profiles)
        self.users = dict(users or {})
        self.trust = dict(trust or {})
        self.observer = observer

    # --- lookups ---------------------------------------------------------------------------
    def profile(self, name: str) -> Profile:
        """The profile called ``name``."""
        try:
            return self.profiles[name]
        except KeyError:
            raise NotFoundError(f"no profile {name!r}") from None

    def _ca_of(self, profile: Profile) -> IssuingCA:
        return self.cas[profile.ca]

    async def ca_chain(self, profile_name: str) -> CAChain:
        """The chain of the CA a profile issues from (EST /cacerts, SCEP GetCACert)."""
        return await self._ca_of(self.profile(profile_name)).backend.ca_chain()

    async def _ca_for_certificate(self, cert: x509.Certificate) -> IssuingCA | None:
        for ca in self.cas.values():
            issuer = (await ca.backend.ca_chain()).issuer
            if cert.issuer != issuer.subject:
                continue
            try:
                cert.verify_directly_issued_by(issuer)
            except Exception:
                continue
            return ca
        return None

    async def certificate_status(self, cert: x509.Certificate) -> CertRecord | None:
        """Our ledger row for exactly this certificate, or None if we did not issue it."""
        ca = await self._ca_for_certificate(cert)
        if ca is None:
            return None
        rec = await self.ledger.find_by_serial(ca.name, cert.serial_number)
        if rec is None or rec.der is None or rec.der != cert.public_bytes(serialization.Encoding.DER):
            return None
        return rec

    async def find_certificate(self, issuer_name: x509.Name, serial: int) -> x509.Certificate | None:
        """An issued certificate by issuer name and serial (SCEP GetCert, RFC 8894 §3.3.4)."""
        for ca in self.cas.values():
            if (await ca.backend.ca_chain()).issuer.subject != issuer_name:
                continue
            rec = await self.ledger.find_by_serial(ca.name, serial)
            if rec is not None and rec.der is not None:
                return x509.load_der_x509_certificate(rec.der)
        return None

    # --- issuance --------------------------------------------------------------------------
    async def issue(self, request: IssueRequest) -> Outcome:
        """Run the issuance contract (DESIGN.md) and return ``Issued | Pending | Rejected``."""
        started = time.perf_counter()
        outcome = await self._issue(request)
        if self.observer is not None:
            kind = type(outcome).__name__.lower()
            self.observer(request.profile, request.channel.value, kind, time.perf_counter() - started)
        return outcome

    async def _issue(self, req: IssueRequest) -> Outcome:
        csr = req.csr
        csr_sha = sha256_hex(csr.public_bytes(serialization.Encoding.DER))
        try:
            profile = self.profile(req.profile)
            if req.requester.method is AuthMethod.NONE:
                raise AuthenticationError("request is not authenticated")
            verify_csr(csr, profile)
            public_key = csr.public_key()
            check_key(profile, public_key)
            refuse_forbidden_requests(csr, profile)
            spki = spki_sha256(public_key)
            if req.transaction_id:
                prior = await self._replayed(profile, req, spki)
                if prior is not None:
                    return prior
            ca = self._ca_of(profile)
            chain = await ca.backend.ca_chain()
            # Dry run of the policy before anything is stored or reserved.
            build_template(csr, profile, chain.issuer, 1, _now(), ca.crl_url)
            if profile.manual and req.requester.method is not AuthMethod.OPERATOR:
                return await self._pending_flow(req, profile, csr_sha, spki)
            return await self._issue_now(req, profile, ca, chain, csr_sha, spki)
        except CAError as exc:
            await self.audit("issue", ok=False, channel=req.channel, profile=req.profile,
                             requester=req.requester, reason=f"{exc.reason.value}: {exc.detail}",
                             csr_sha256=csr_sha, detail={"transaction_id": req.transaction_id})
            return Rejected(exc.reason, exc.detail)

    async def _replayed(self, profile: Profile, req: IssueRequest, spki: str) -> Outcome | None:
        assert req.transaction_id is not None
        prior = await self.ledger.find_by_transaction(profile.name, req.transaction_id)
        if not prior:
            return None
        if prior[0].spki_sha256 != spki:
            raise PolicyError("transactionID already used with a different key",
                              reason=RejectReason.BAD_REQUEST)
        rec = prior[0]
        assert rec.der is not None
        chain = await self.cas[rec.issuer].backend.ca_chain()
        await self.audit("issue-replay", ok=True, channel=req.channel, profile=profile.name,
                         requester=req.requester, serial=rec.serial,
                         detail={"transaction_id": req.transaction_id})
        return Issued(x509.load_der_x509_certificate(rec.der), chain.chain, rec.serial, replayed=True)

    async def _pending_flow(self, req: IssueRequest, profile: Profile, csr_sha: str, spki: str) -> Outcome:
        rec = await self.ledger.find_pending(
            profile.name, transaction_id=req.transaction_id, csr_sha256=None if req.transaction_id else csr_sha)
        if rec is not None and rec.spki_sha256 != spki:
            raise PolicyError("transactionID already used with a different key", reason=RejectReason.BAD_REQUEST)
        if rec is None:
            rid = await self.ledger.create_pending(
                profile=profile.name, channel=req.channel.value, requester=_describe(req.requester) or "",
                csr_der=req.csr.public_bytes(serialization.Encoding.DER), csr_sha256=csr_sha,
                spki_sha256=spki, transaction_id=req.transaction_id, subject=req.csr.subject.rfc4514_string())
            await self.audit("pending", ok=True, channel=req.channel, profile=profile.name,
                             requester=req.requester, csr_sha256=csr_sha, detail={"request_id": rid})
            return Pending(rid, profile.retry_after)
        if rec.status in ("pending", "issuing"):
            return Pending(rec.id, profile.retry_after)
        if rec.status == "rejected":
            raise CAError(f"request {rec.id} was rejected by an operator"
                          + (f": {rec.reason}" if rec.reason else ""), reason=RejectReason.REJECTED)
        if rec.status == "issued" and rec.serial is not None and rec.issuer is not None:
            cert_rec = await self.ledger.find_by_serial(rec.issuer, rec.serial)
            if cert_rec is not None and cert_rec.der is not None:
                chain = await self.cas[rec.issuer].backend.ca_chain()
                return Issued(x509.load_der_x509_certificate(cert_rec.der), chain.chain, rec.serial, replayed=True)
        # approved: exactly one caller moves it to issuing and issues
        if not await self.ledger.transition_pending(rec.id, ["approved"], "issuing"):
            return Pending(rec.id, profile.retry_after)
        ca = self._ca_of(profile)
        chain = await ca.backend.ca_chain()
        try:
            return await self._issue_now(req, profile, ca, chain, csr_sha, spki, pending_id=rec.id)
        except BaseException:
            await self.ledger.transition_pending(rec.id, ["issuing"], "approved")
            raise

    async def _issue_now(self, req: IssueRequest, profile: Profile, ca: IssuingCA, chain: CAChain,
                         csr_sha: str, spki: str, pending_id: int | None = None) -> Issued:
        row_id = serial = None
        for _ in range(8):
            serial = secrets.randbits(159)
            if serial < 2**64:
                continue
            row_id = await self.ledger.reserve_serial(
                issuer=ca.name, serial=serial, profile=profile.name, channel=req.channel.value,
                requester=_describe(req.requester) or "", auth_method=req.requester.method.value,
                csr_sha256=csr_sha, spki_sha256=spki, transaction_id=req.transaction_id,
                renews_serial=req.renewal_of.serial_number if req.renewal_of is not None else None)
            if row_id is not None:
                break
        if row_id is None or serial is None:
            raise LedgerError("could not reserve a unique serial number")
        template = build_template(req.csr, profile, chain.issuer, serial, _now(), ca.crl_url)
        cert = await ca.backend.sign(template)
        check_issued(cert, template, chain.issuer)
        audit = dict(event="issue", ok=True, channel=req.channel.value, profile=profile.name,
                     requester=_describe(req.requester), reason="issued", csr_sha256=csr_sha, serial=serial,
                     detail={"transaction_id": req.transaction_id} if req.transaction_id else None)
        await self.ledger.store_issued(
            row_id, der=cert.public_bytes(serialization.Encoding.DER), subject=cert.subject.rfc4514_string(),
            not_before=cert.not_valid_before_utc.timestamp(), not_after=cert.not_valid_after_utc.timestamp(),
            audit=audit, pending_id=pending_id)
        self._log(audit)
        return Issued(cert, chain.chain, serial)

    # --- pending requests ------------------------------------------------------------------
    async def list_pending(self, status: str | None = "pending") -> list[PendingRecord]:
        """Requests waiting for (or decided by) an operator."""
        return await self.ledger.list_pending(status)

    async def approve(self, request_id: int, by: str) -> bool:
        """Approve a pending request; the client's next poll gets the certificate."""
        ok = await self.ledger.transition_pending(request_id, ["pending"], "approved", decided_at=time.time(),
                                                  decided_by=by)
        await self.audit("approve", ok=ok, channel=Channel.ADMIN, profile=None, requester=None,
                         reason=by, detail={"request_id": request_id})
        return ok

    async def reject(self, request_id: int, by: str, reason: str = "") -> bool:
        """Reject a pending request; the client's next poll is refused."""
        ok = await self.ledger.transition_pending(request_id, ["pending", "approved"], "rejected",
                                                  decided_at=time.time(), decided_by=by, reason=reason)
        await self.audit("reject", ok=ok, channel=Channel.ADMIN, profile=None, requester=None,
                         reason=f"{by}: {reason}", detail={"request_id": request_id})
        return ok

    # --- revocation and CRLs ---------------------------------------------------------------
    async def revoke(self, serial: int, reason: str = "unspecified", ca: str | None = None) -> CertRecord:
        """Revoke an issued certificate and publish a fresh CRL (RFC 5280 §5.3.1 reasons)."""
        if reason not in REASONS:
            raise CAError(f"unknown reason {reason!r}; use one of {', '.join(REASONS)}")
        rows = [r for r in await self.ledger.find_serial_any_issuer(serial)
                if r.status == "issued" and (ca is None or r.issuer == ca)]
        if not rows:
            raise NotFoundError(f"no issued certificate with serial {serial_hex(serial)}")
        if len(rows) > 1:
            raise CAError(f"serial {serial_hex(serial)} exists under several CAs; name the CA")
        rec = rows[0]
        if not await self.ledger.revoke(rec.issuer, serial, reason, time.time()):
            raise CAError(f"certificate {serial_hex(serial)} is already revoked")
        await self.audit("revoke", ok=True, channel=Channel.ADMIN, profile=rec.profile, requester=None,
                         reason=reason, serial=serial)
        await self.crl_for_ca(rec.issuer, force=True)
        return (await self.ledger.find_by_serial(rec.issuer, serial)) or rec

    async def retire(self, serial: int) -> CertRecord:
        """Retire a device's certificate: it can no longer renew (revoke it separately)."""
        rows = [r for r in await self.ledger.find_serial_any_issuer(serial) if r.status == "issued"]
        if not rows:
            raise NotFoundError(f"no issued certificate with serial {serial_hex(serial)}")
        await self.ledger.retire(rows[0].issuer, serial, time.time())
        await self.audit("retire", ok=True, channel=Channel.ADMIN, profile=rows[0].profile, requester=None,
                         serial=serial)
        return (await self.ledger.find_by_serial(rows[0].issuer, serial)) or rows[0]

    async def crl(self, profile_name: str) -> x509.CertificateRevocationList:
        """The current CRL of the CA a profile issues from (SCEP GetCRL, CDP)."""
        return await self.crl_for_ca(self.profile(profile_name).ca)

    async def crl_for_ca(self, ca_name: str, force: bool = False) -> x509.CertificateRevocationList:
        """The current CRL of a CA, re-signed when forced or past half its lifetime."""
        ca = self.cas[ca_name]
        now = time.time()
        current = await self.ledger.crl_current(ca_name)
        if current is not None and not force:
            _, last, due, der = current
            if now < last + (due - last) / 2:
                return x509.load_der_x509_crl(der)
        if not isinstance(ca.backend, SupportsCRL):
            raise CAError(f"CA {ca_name!r} cannot sign CRLs", reason=RejectReason.UNAVAILABLE)
        number = await self.ledger.crl_next_number(ca_name)
        entries = []
        for rec in await self.ledger.revoked(ca_name):
            assert rec.revoked_at is not None
            b = (x509.RevokedCertificateBuilder().serial_number(rec.serial)
                 .revocation_date(dt.datetime.fromtimestamp(int(rec.revoked_at), dt.timezone.utc)))
            flag = REASONS.get(rec.revocation_reason or "unspecified", x509.ReasonFlags.unspecified)
            if flag is not x509.ReasonFlags.unspecified:
                b = b.add_extension(x509.CRLReason(flag), False)
            entries.append(b.build())
        this_update = dt.datetime.fromtimestamp(int(now), dt.timezone.utc)
        next_update = this_update + dt.timedelta(hours=ca.crl_validity_hours)
        crl = await ca.backend.sign_crl(entries, number, this_update, next_update)
        await self.ledger.crl_store(ca_name, number, this_update.timestamp(), next_update.timestamp(),
                                    crl.public_bytes(serialization.Encoding.DER))
        return crl

    # --- authentication helpers ------------------------------------------------------------
    async def verify_password(self, user: str, password: str) -> bool:
        """HTTP Basic (RFC 7617) against the configured scrypt hashes, constant-time."""
        stored = self.users.get(user)
        ok = verify_secret(password, stored or _DUMMY_HASH)
        return ok and stored is not None

    async def check_static_challenge(self, profile_name: str, challenge: str) -> bool:
        """Compare a SCEP challengePassword with the profile's stored hash (fail closed)."""
        stored = self.profile(profile_name).scep.get("challenge_hash")
        if not isinstance(stored, str) or not stored:
            return False
        return verify_secret(challenge, stored)

    async def create_one_time_challenge(self, profile_name: str, ttl_seconds: int = 3600) -> str:
        """A fresh one-time challenge bound to a profile, stored as its digest only."""
        self.profile(profile_name)
        challenge = new_challenge()
        await self.ledger.add_challenge(profile_name, challenge_digest(challenge), time.time() + ttl_seconds)
        await self.audit("challenge-new", ok=True, channel=Channel.ADMIN, profile=profile_name, requester=None,
                         detail={"ttl": ttl_seconds})
        return challenge

    async def consume_one_time_challenge(self, profile_name: str, challenge: str) -> bool:
        """Use a one-time challenge: True once, within its TTL, for its own profile only."""
        return await self.ledger.consume_challenge(profile_name, challenge_digest(challenge), time.time())

    def verify_client_chain(self, leaf: x509.Certificate, trust: Sequence[str],
                            intermediates: Sequence[x509.Certificate] = ()) -> bool:
        """True when ``leaf`` chains to an anchor of one of the named trust stores."""
        return any(name in self.trust and self.trust[name].verify(leaf, intermediates) for name in trust)

    async def remember_nonce(self, scope: str, nonce: bytes) -> bool:
        """Record a nonce; False if it was seen before (a replay)."""
        return await self.ledger.remember_nonce(scope, nonce.hex(), time.time())

    # --- audit -----------------------------------------------------------------------------
    async def audit(self, event: str, *, ok: bool, channel: Channel, profile: str | None,
                    requester: Requester | None, reason: str = "", csr_sha256: str | None = None,
                    serial: int | None = None, detail: dict[str, Any] | None = None) -> None:
        """One structured record per decision, in the ledger and the log. Never pass secrets."""
        values = dict(event=event, ok=ok, channel=channel.value, profile=profile, requester=_describe(requester),
                      reason=reason, csr_sha256=csr_sha256, serial=serial,
                      detail={k: v for k, v in (detail or {}).items() if v is not None} or None)
        self._log(values)
        try:
            await self.ledger.audit(**values)  # type: ignore[arg-type]
        except LedgerError:
            log.error(json.dumps({"event": "audit-write-failed", "audit": event}))

    @staticmethod
    def _log(values: Mapping[str, Any]) -> None:
        v = dict(values)
        if v.get("serial") is not None:
            v["serial"] = serial_hex(v["serial"])
        log.info(json.dumps(v, sort_keys=True, default=str))
