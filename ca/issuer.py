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
    REASONS,
    AuthMethod,
    BindIdentity,
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
from ca import ocsp
from ca.identity import CertificatePolicy, Standing, check_binding, lifecycle_refusal
from ca.authz import TrustStore, challenge_digest, hash_secret, new_challenge, verify_secret_async
from ca.errors import (
    AuthenticationError,
    AuthorizationError,
    CAError,
    LedgerError,
    NotFoundError,
    ParseError,
    PolicyError,
    RejectReason,
)
from ca.ledger import AuditRecord, CertificateQuery, CertRecord, DeviceRecord, Ledger, PendingRecord, serial_hex
from ca.ratelimit import RefusalSampler
from ca.profile import (
    Profile,
    build_template,
    check_issued,
    check_key,
    device_key,
    refuse_forbidden_requests,
    sans_of,
    verify_csr,
)

log = logging.getLogger("enroll.audit")


_DUMMY_HASH = hash_secret("no such user")


@dataclass(frozen=True)
class IssuingCA:
    """A CA backend with its publication settings (``[cas.NAME]``)."""

    name: str
    backend: CABackend
    crl_url: str | None = None
    crl_validity_hours: int = 24
    ocsp_url: str | None = None  # AIA id-ad-ocsp (RFC 5280 §4.2.2.1)
    ca_issuers_url: str | None = None  # AIA id-ad-caIssuers
    responder: ocsp.Responder | None = None  # None: this server answers no OCSP for the CA
    ocsp_validity_seconds: int = 3600  # nextUpdate of OCSP responses

    def template_urls(self) -> dict[str, str | None]:
        """The URLs :func:`ca.profile.build_template` writes into certificates."""
        return {"crl_url": self.crl_url, "ocsp_url": self.ocsp_url, "ca_issuers_url": self.ca_issuers_url}


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256, the ledger's fingerprint of CSRs and keys."""
    return hashlib.sha256(data).hexdigest()


def spki_sha256(public_key: Any) -> str:
    """Fingerprint of a SubjectPublicKeyInfo (what binds a request to its key)."""
    return sha256_hex(public_key.public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))


def _describe(r: Requester | None) -> str | None:
    return None if r is None else f"{r.method.value}:{r.principal}"


Actor = Requester | str | None


def _actor(by: Actor) -> Requester | None:
    """An operator as the audit trail names it (a bare string is an operator principal)."""
    if by is None or isinstance(by, Requester):
        return by
    return Requester(AuthMethod.OPERATOR, by)


def _standing(record: CertRecord) -> Standing:
    return Standing(serial=record.serial, profile=record.profile, revoked=record.revoked,
                    on_hold=record.on_hold, retired=record.retired, not_after=record.not_after)


def _is_device_key(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


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

    async def authenticate_certificate(
        self,
        cert: x509.Certificate,
        policy: CertificatePolicy,
        *,
        channel: Channel,
        profile: str | None,
        remote: str | None = None,
        intermediates: Sequence[x509.Certificate] = (),
    ) -> Requester:
        """The requester a client certificate proves, by the lifecycle rule of :mod:`ca.identity`.

        :class:`AuthenticationError` when it chains to none of ``policy.trust``;
        :class:`AuthorizationError` when it is ours but unknown to the ledger (audited as an
        anomaly), revoked, on hold, retired, expired or from a profile the policy does not list,
        or when an external store's CRL lists it or is not current (RFC 5280 §6.3, fail closed).
        """
        now = _now()
        store = path = None
        for name in policy.trust:
            store = self.trust.get(name)
            path = store.path(cert, intermediates, now) if store is not None else None
            if path is not None:
                break
        if store is None or path is None:
            raise AuthenticationError("the client certificate does not chain to a trust store of this label")
        ca = await self._ca_for_certificate(cert)
        if ca is not None:
            record = await self._own_record(ca, cert, channel=channel, profile=profile, remote=remote)
            refusal = lifecycle_refusal(_standing(record), cert, policy.client_profiles, now)
            if refusal is not None:
                raise AuthorizationError(refusal)
        elif store.revocation is not None:
            await store.revocation.check(cert, path[1] if len(path) > 1 else cert)
        return Requester(AuthMethod.TLS_CLIENT_CERT, cert.subject.rfc4514_string(), cert, remote,
                         policy.bind_identity)

    async def _own_record(self, ca: IssuingCA, cert: x509.Certificate, *, channel: Channel,
                          profile: str | None, remote: str | None) -> CertRecord:
        """Our ledger row for a certificate our CA signed; an unknown one is audited as an anomaly
        (a certificate of our CA that we never recorded means a leaked key or a lost record)."""
        der = cert.public_bytes(serialization.Encoding.DER)
        record = await self.ledger.find_by_serial(ca.name, cert.serial_number)
        if record is None or record.der != der or record.status != "issued":
            await self.audit("client-cert-anomaly", ok=False, channel=channel, profile=profile,
                             requester=Requester(AuthMethod.NONE, cert.subject.rfc4514_string(), cert, remote),
                             reason="certificate signed by our CA is not in the ledger", serial=cert.serial_number,
                             detail={"ca": ca.name, "sha256": sha256_hex(der)})
            raise AuthorizationError(f"certificate {serial_hex(cert.serial_number)} chains to CA {ca.name!r} "
                                     "but is not in the ledger")
        return record

    async def renewable(self, cert: x509.Certificate, profile_name: str, *,
                        channel: Channel = Channel.EST, remote: str | None = None) -> CertRecord | None:
        """The ledger row of a certificate that may renew itself under ``profile_name`` now.

        None when no CA of ours signed it, or it is outside its validity (it then authenticates
        nothing); :class:`AuthorizationError` when it is ours but unknown to the ledger, revoked,
        on hold, retired, from another profile, or not yet inside the profile's renewal window
        (RFC 7030 §4.2.2, RFC 8894 §3.3.1.2). The same lifecycle rule as
        :meth:`authenticate_certificate`.
        """
        profile = self.profile(profile_name)
        now = _now()
        ca = await self._ca_for_certificate(cert)
        if ca is None or not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            return None
        record = await self._own_record(ca, cert, channel=channel, profile=profile.name, remote=remote)
        refusal = lifecycle_refusal(_standing(record), cert, (profile.name,), now)
        if refusal is not None:
            raise AuthorizationError(refusal)
        window = profile.renewal_window_days
        if window is not None and now < cert.not_valid_after_utc - dt.timedelta(days=window):
            raise AuthorizationError(f"too early to renew: profile {profile.name!r} renews within "
                                     f"{window} days of expiry")
        return record

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
            draft = build_template(csr, profile, chain.issuer, 1, _now(), **ca.template_urls())
            device = device_key(profile.name, draft.subject, sans_of(draft.extensions))
            bound = req.requester.certificate
            if bound is not None and req.requester.binding is not BindIdentity.NONE:
                check_binding(req.requester.binding, bound, draft.subject, sans_of(draft.extensions))
            if profile.manual and req.requester.method is not AuthMethod.OPERATOR:
                if await self.ledger.device_retired(device):
                    raise AuthorizationError(f"device {device} is retired; it may not enroll or renew")
                return await self._pending_flow(req, profile, csr_sha, spki)
            return await self._issue_now(req, profile, ca, chain, csr_sha, spki, device=device)
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
        if rec.csr_sha256 != sha256_hex(req.csr.public_bytes(serialization.Encoding.DER)):
            # RFC 8894 §3.3.1: a resend repeats the request; a new CSR needs a new transaction.
            raise PolicyError("transactionID already used with a different CSR",
                              reason=RejectReason.BAD_REQUEST)
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
        if rec is not None and rec.csr_sha256 != csr_sha:
            # What an operator approved is the stored CSR: a resend under the same transaction
            # (same key) must repeat it byte for byte, or it could swap the subject after approval.
            raise PolicyError(f"request {rec.id}: transactionID already used with a different CSR",
                              reason=RejectReason.BAD_REQUEST)
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
        from dataclasses import replace

        approved = replace(req, csr=x509.load_der_x509_csr(rec.csr_der))  # issue what was approved
        try:
            return await self._issue_now(approved, profile, ca, chain, rec.csr_sha256, rec.spki_sha256,
                                         pending_id=rec.id)
        except BaseException:
            await self.ledger.transition_pending(rec.id, ["issuing"], "approved")
            raise

    async def _issue_now(self, req: IssueRequest, profile: Profile, ca: IssuingCA, chain: CAChain,
                         csr_sha: str, spki: str, pending_id: int | None = None,
                         device: str | None = None) -> Issued:
        row_id = serial = None
        for _ in range(8):
            serial = secrets.randbits(159)
            if serial < 2**64:
                continue
            row_id = await self.ledger.reserve_serial(
                issuer=ca.name, serial=serial, profile=profile.name, channel=req.channel.value,
                requester=_describe(req.requester) or "", auth_method=req.requester.method.value,
                csr_sha256=csr_sha, spki_sha256=spki, transaction_id=req.transaction_id,
                renews_serial=req.renewal_of.serial_number if req.renewal_of is not None else None,
                refuse_retired=device)
            if row_id is not None:
                break
        if row_id is None or serial is None:
            raise LedgerError("could not reserve a unique serial number")
        template = build_template(req.csr, profile, chain.issuer, serial, _now(), **ca.template_urls())
        sans = sans_of(template.extensions)
        device = device_key(profile.name, template.subject, sans)
        cert = await ca.backend.sign(template)
        check_issued(cert, template, chain.issuer)
        detail: dict[str, Any] = {"device": device}
        if req.transaction_id:
            detail["transaction_id"] = req.transaction_id
        if req.renewal_of is not None:
            detail["renews"] = serial_hex(req.renewal_of.serial_number)
        audit = dict(event="renew" if req.renewal_of is not None else "issue", ok=True, channel=req.channel.value,
                     profile=profile.name, requester=_describe(req.requester), reason="issued", csr_sha256=csr_sha,
                     serial=serial, detail=detail)
        await self.ledger.store_issued(
            row_id, der=cert.public_bytes(serialization.Encoding.DER), subject=cert.subject.rfc4514_string(),
            not_before=cert.not_valid_before_utc.timestamp(), not_after=cert.not_valid_after_utc.timestamp(),
            audit=audit, pending_id=pending_id, device=device, device_profile=profile.name, sans=sans)
        self._log(audit)
        return Issued(cert, chain.chain, serial)

    async def adopt(self, cert: x509.Certificate, profile_name: str, *, by: Actor = None) -> CertRecord:
        """Record a certificate one of our CAs signed outside the ledger (``enroll certs import``:
        the development PKI's example client, certificates from before the ledger existed), so
        that it authenticates, appears on CRLs and OCSP, and can be revoked like any other.

        Refused when no CA of ours signed it or its serial is already recorded.
        """
        profile = self.profile(profile_name)
        ca = await self._ca_for_certificate(cert)
        if ca is None:
            raise CAError("the certificate was not signed by any CA of this server")
        der = cert.public_bytes(serialization.Encoding.DER)
        spki = spki_sha256(cert.public_key())
        who = _actor(by)
        row_id = await self.ledger.reserve_serial(
            issuer=ca.name, serial=cert.serial_number, profile=profile.name, channel=Channel.ADMIN.value,
            requester=_describe(who) or "", auth_method=AuthMethod.OPERATOR.value, csr_sha256=sha256_hex(der),
            spki_sha256=spki, transaction_id=None, renews_serial=None)
        if row_id is None:
            raise CAError(f"serial {serial_hex(cert.serial_number)} of CA {ca.name!r} is already recorded")
        sans = sans_of(cert.extensions)
        device = device_key(profile.name, cert.subject, sans)
        audit = dict(event="adopt", ok=True, channel=Channel.ADMIN.value, profile=profile.name,
                     requester=_describe(who), reason="recorded", csr_sha256=None, serial=cert.serial_number,
                     detail={"device": device, "sha256": sha256_hex(der)})
        await self.ledger.store_issued(
            row_id, der=der, subject=cert.subject.rfc4514_string(), not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(), audit=audit, device=device, device_profile=profile.name,
            sans=sans)
        self._log(audit)
        record = await self.ledger.find_by_serial(ca.name, cert.serial_number)
        assert record is not None
        return record

    # --- pending requests ------------------------------------------------------------------
    async def list_pending(self, status: str | None = "pending") -> list[PendingRecord]:
        """Requests waiting for (or decided by) an operator."""
        return await self.ledger.list_pending(status)

    async def approve(self, request_id: int, by: Actor) -> bool:
        """Approve a pending request; the client's next poll gets the certificate."""
        who = _actor(by)
        rec = await self.ledger.get_pending(request_id)
        ok = await self.ledger.transition_pending(request_id, ["pending"], "approved", decided_at=time.time(),
                                                  decided_by=_describe(who))
        await self.audit("approve", ok=ok, channel=Channel.ADMIN, profile=rec.profile if rec else None,
                         requester=who, reason="" if ok else "not pending", csr_sha256=rec.csr_sha256 if rec else None,
                         detail={"request_id": request_id})
        return ok

    async def reject(self, request_id: int, by: Actor, reason: str = "") -> bool:
        """Reject a pending request; the client's next poll is refused."""
        who = _actor(by)
        rec = await self.ledger.get_pending(request_id)
        ok = await self.ledger.transition_pending(request_id, ["pending", "approved"], "rejected",
                                                  decided_at=time.time(), decided_by=_describe(who), reason=reason)
        await self.audit("reject", ok=ok, channel=Channel.ADMIN, profile=rec.profile if rec else None,
                         requester=who, reason=reason if ok else "not pending",
                         csr_sha256=rec.csr_sha256 if rec else None, detail={"request_id": request_id})
        return ok

    # --- revocation and CRLs ---------------------------------------------------------------
    async def get_certificate(self, serial: int, ca: str | None = None) -> CertRecord:
        """The one issued certificate with this serial (NotFoundError, or CAError if ambiguous)."""
        rows = [r for r in await self.ledger.find_serial_any_issuer(serial)
                if r.status == "issued" and (ca is None or r.issuer == ca)]
        if not rows:
            raise NotFoundError(f"no issued certificate with serial {serial_hex(serial)}")
        if len(rows) > 1:
            raise CAError(f"serial {serial_hex(serial)} exists under several CAs; name the CA")
        return rows[0]

    async def revoke(self, serial: int, reason: str = "unspecified", ca: str | None = None, *,
                     by: Actor = None) -> CertRecord:
        """Revoke an issued certificate and publish a fresh CRL (RFC 5280 §5.3.1 reasons).

        ``certificate_hold`` suspends it (:meth:`unhold` releases it); a held certificate may
        then be revoked for good with any other reason.
        """
        if reason not in REASONS:
            raise CAError(f"unknown reason {reason!r}; use one of {', '.join(REASONS)}")
        rec = await self.get_certificate(serial, ca)
        if not await self.ledger.revoke(rec.issuer, serial, reason, time.time()):
            await self.audit("revoke", ok=False, channel=Channel.ADMIN, profile=rec.profile, requester=_actor(by),
                             reason=f"already revoked ({rec.revocation_reason})", serial=serial,
                             detail={"device": rec.device})
            raise CAError(f"certificate {serial_hex(serial)} is already revoked ({rec.revocation_reason})")
        await self.audit("hold" if reason == "certificate_hold" else "revoke", ok=True, channel=Channel.ADMIN,
                         profile=rec.profile, requester=_actor(by), reason=reason, serial=serial,
                         detail={"device": rec.device})
        await self.crl_for_ca(rec.issuer, force=True)
        return (await self.ledger.find_by_serial(rec.issuer, serial)) or rec

    async def unhold(self, serial: int, ca: str | None = None, *, by: Actor = None) -> CertRecord:
        """Release a certificateHold: valid again, and absent from the CRL published now
        (RFC 5280 §5.3.1; a full CRL simply drops the entry, the removeFromCRL semantics)."""
        rec = await self.get_certificate(serial, ca)
        if not await self.ledger.release_hold(rec.issuer, serial):
            raise CAError(f"certificate {serial_hex(serial)} is not on hold")
        await self.audit("unhold", ok=True, channel=Channel.ADMIN, profile=rec.profile, requester=_actor(by),
                         reason="remove_from_crl", serial=serial, detail={"device": rec.device})
        await self.crl_for_ca(rec.issuer, force=True)
        return (await self.ledger.find_by_serial(rec.issuer, serial)) or rec

    async def retire(self, serial: int, *, by: Actor = None) -> CertRecord:
        """Retire one certificate: it can no longer renew (revoke it separately)."""
        rec = await self.get_certificate(serial)
        await self.ledger.retire(rec.issuer, serial, time.time())
        await self.audit("retire", ok=True, channel=Channel.ADMIN, profile=rec.profile, requester=_actor(by),
                         serial=serial, detail={"device": rec.device})
        return (await self.ledger.find_by_serial(rec.issuer, serial)) or rec

    # --- devices and fleet -----------------------------------------------------------------
    async def get_device(self, device: str) -> DeviceRecord:
        """A device by its key (as `enroll devices list` shows it)."""
        rec = await self.ledger.get_device(device.lower()) if _is_device_key(device.lower()) else None
        if rec is None:
            raise NotFoundError(f"no device {device!r}")
        return rec

    async def device_certificates(self, device: str) -> list[CertRecord]:
        """Every certificate of a device, newest first."""
        return await self.ledger.query_certificates(CertificateQuery(device=device, limit=10000))

    async def device_history(self, device: str, limit: int = 1000) -> list[AuditRecord]:
        """Every issuance, renewal, hold, revocation and retirement of a device, newest first."""
        await self.get_device(device)
        serials = [c.serial for c in await self.device_certificates(device)]
        return await self.ledger.audit_records(limit, serials=serials, device=device)

    async def revoke_device(self, device: str, reason: str = "unspecified", *, by: Actor = None) -> list[CertRecord]:
        """Revoke every not-yet-revoked certificate of a device at once (one new CRL per CA)."""
        if reason not in REASONS:
            raise CAError(f"unknown reason {reason!r}; use one of {', '.join(REASONS)}")
        dev = await self.get_device(device)
        done: list[CertRecord] = []
        now = time.time()
        for rec in await self.device_certificates(dev.device):
            if rec.revoked and not (rec.on_hold and reason != "certificate_hold"):
                continue
            if await self.ledger.revoke(rec.issuer, rec.serial, reason, now):
                done.append(rec)
                await self.audit("revoke", ok=True, channel=Channel.ADMIN, profile=rec.profile,
                                 requester=_actor(by), reason=reason, serial=rec.serial,
                                 detail={"device": dev.device})
        for ca_name in sorted({r.issuer for r in done}):
            await self.crl_for_ca(ca_name, force=True)
        return done

    async def retire_device(self, device: str, reason: str = "cessation_of_operation", *,
                            by: Actor = None) -> list[CertRecord]:
        """Retire a device: revoke all its certificates and refuse its future enrollments and
        renewals (checked in :meth:`issue` against the device of the would-be certificate)."""
        if reason not in REASONS or reason == "certificate_hold":
            raise CAError(f"a retirement needs a permanent revocation reason, not {reason!r}")
        dev = await self.get_device(device)
        who = _actor(by)
        if not await self.ledger.retire_device(dev.device, time.time(), _describe(who) or "", reason):
            raise CAError(f"device {dev.device} is already retired")
        await self.audit("retire-device", ok=True, channel=Channel.ADMIN, profile=dev.profile, requester=who,
                         reason=reason, detail={"device": dev.device})
        return await self.revoke_device(dev.device, reason, by=by)

    async def expiring(self, within_seconds: float, profile: str | None = None,
                       limit: int = 10000) -> list[CertRecord]:
        """Valid (not revoked) certificates whose notAfter falls within the window, soonest first."""
        now = time.time()
        return await self.ledger.query_certificates(
            CertificateQuery(profile=profile, expiring_before=now + within_seconds, limit=limit), now)

    # --- OCSP ------------------------------------------------------------------------------
    async def ocsp(self, der: bytes) -> tuple[bytes, str]:
        """Answer an OCSP request (RFC 6960): ``(DER response, outcome)``.

        outcome is ``good``, ``revoked``, ``unknown`` (not issued here, or only reserved) or the
        error status ``malformed`` / ``unauthorized`` (no CA of ours is named by the CertID,
        RFC 6960 §2.3) / ``internal``.
        """
        from cryptography.x509.ocsp import OCSPResponseStatus

        try:
            query = ocsp.parse_request(der)
        except ParseError:
            return ocsp.error_response(OCSPResponseStatus.MALFORMED_REQUEST), "malformed"
        for ca in self.cas.values():
            if ca.responder is not None and ocsp.is_for(query, ca.responder.ca_cert):
                break
        else:
            return ocsp.error_response(OCSPResponseStatus.UNAUTHORIZED), "unauthorized"
        assert ca.responder is not None
        try:
            rec = await self.ledger.find_by_serial(ca.name, query.serial)
        except LedgerError:
            return ocsp.error_response(OCSPResponseStatus.TRY_LATER), "internal"
        now = dt.datetime.fromtimestamp(int(time.time()), dt.timezone.utc)
        next_update = now + dt.timedelta(seconds=ca.ocsp_validity_seconds)
        if rec is None or rec.status != "issued":
            status, revoked_at, reason = ocsp.Status.UNKNOWN, None, None
        elif rec.revoked_at is not None:
            status = ocsp.Status.REVOKED
            revoked_at = dt.datetime.fromtimestamp(int(rec.revoked_at), dt.timezone.utc)
            reason = rec.revocation_reason
        else:
            status, revoked_at, reason = ocsp.Status.GOOD, None, None
        body = ocsp.build_response(query, ca.responder, status, this_update=now, next_update=next_update,
                                   revoked_at=revoked_at, reason=reason)
        return body, status.value

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
        for serial, revoked_at, reason in await self.ledger.revoked_entries(ca_name):
            b = (x509.RevokedCertificateBuilder().serial_number(serial)
                 .revocation_date(dt.datetime.fromtimestamp(int(revoked_at), dt.timezone.utc)))
            flag = REASONS.get(reason or "unspecified", x509.ReasonFlags.unspecified)
            if flag is not x509.ReasonFlags.unspecified:
                b = b.add_extension(x509.CRLReason(flag), False)
            entries.append(b.build())
        this_update = dt.datetime.fromtimestamp(int(now), dt.timezone.utc)
        next_update = this_update + dt.timedelta(hours=ca.crl_validity_hours)
        crl = await ca.backend.sign_crl(entries, number, this_update, next_update)
        await self.ledger.crl_store(ca_name, number, this_update.timestamp(), next_update.timestamp(),
                                    crl.public_bytes(serialization.Encoding.DER))
        return crl

    async def publish_crl(self, ca_name: str, *, by: Actor = None) -> x509.CertificateRevocationList:
        """Sign and publish a new CRL now (an operator's "force publish"), audited."""
        if ca_name not in self.cas:
            raise NotFoundError(f"no CA named {ca_name!r}")
        crl = await self.crl_for_ca(ca_name, force=True)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        await self.audit("crl-publish", ok=True, channel=Channel.ADMIN, profile=None, requester=_actor(by),
                         detail={"ca": ca_name, "crl_number": number, "entries": len(crl)})
        return crl

    # --- authentication helpers ------------------------------------------------------------
    async def verify_password(self, user: str, password: str) -> bool:
        """HTTP Basic (RFC 7617) against the configured scrypt hashes, constant-time; scrypt runs
        off the event loop (:func:`ca.authz.verify_secret_async`)."""
        stored = self.users.get(user)
        ok = await verify_secret_async(password, stored or _DUMMY_HASH)
        return ok and stored is not None

    async def check_static_challenge(self, profile_name: str, challenge: str) -> bool:
        """Compare a SCEP challengePassword (RFC 8894 §2.2) with the profile's stored hash (fail
        closed); scrypt runs off the event loop."""
        stored = self.profile(profile_name).scep.get("challenge_hash")
        if not isinstance(stored, str) or not stored:
            return False
        return await verify_secret_async(challenge, stored)

    async def create_one_time_challenge(self, profile_name: str, ttl_seconds: int = 3600, *,
                                        by: Actor = None) -> str:
        """A fresh one-time challenge bound to a profile, stored as its digest only."""
        self.profile(profile_name)
        if not 1 <= ttl_seconds <= 30 * 86400:
            raise CAError("a one-time challenge lives between 1 second and 30 days")
        challenge = new_challenge()
        await self.ledger.add_challenge(profile_name, challenge_digest(challenge), time.time() + ttl_seconds)
        await self.audit("challenge-new", ok=True, channel=Channel.ADMIN, profile=profile_name, requester=_actor(by),
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
    #: Samples refusals that authenticated nobody (ca/ratelimit.py); made on first use, or set
    #: one (e.g. with its own clock) before serving.
    refusals: RefusalSampler | None = None

    def _refusal_sampler(self) -> RefusalSampler:
        if self.refusals is None:
            self.refusals = RefusalSampler()
        return self.refusals

    @property
    def refusal_counts(self) -> Mapping[tuple[str, str], int]:
        """Unauthenticated refusals since start, per (event, reason class), for metrics."""
        return self._refusal_sampler().counts

    async def audit(self, event: str, *, ok: bool, channel: Channel, profile: str | None,
                    requester: Requester | None, reason: str = "", csr_sha256: str | None = None,
                    serial: int | None = None, detail: dict[str, Any] | None = None,
                    remote: str | None = None) -> None:
        """One structured record per decision, in the ledger and the log. Never pass secrets.

        Every acceptance and every refusal of an authenticated requester is written. A refusal
        that authenticated nobody (``requester`` None or :attr:`AuthMethod.NONE`) is counted in
        :attr:`refusal_counts` and written only as a sample, with a per-minute
        ``refusals-suppressed`` summary of the rest (:class:`ca.ratelimit.RefusalSampler`), so
        that anonymous requests cannot fill the disk. ``remote`` (the peer address, used only
        for sampling) defaults to the requester's."""
        await self.flush_refusal_summaries()
        if not ok and (requester is None or requester.method is AuthMethod.NONE):
            peer = remote or (requester.remote if requester else None)
            if not self._refusal_sampler().admit(channel.value, event, reason, peer):
                return
        await self._record(dict(event=event, ok=ok, channel=channel.value, profile=profile,
                                requester=_describe(requester), reason=reason, csr_sha256=csr_sha256, serial=serial,
                                detail={k: v for k, v in (detail or {}).items() if v is not None} or None))

    async def flush_refusal_summaries(self) -> None:
        """Write the ``refusals-suppressed`` rows of a finished sampling minute, if not yet written
        (every audit call does; a periodic task may call it so the last minute is not held back)."""
        for summary in self._refusal_sampler().due_summaries():
            await self._record(dict(event="refusals-suppressed", ok=False, channel=summary.pop("channel"),
                                    profile=None, requester=None, reason="", csr_sha256=None, serial=None,
                                    detail=summary))

    async def _record(self, values: dict[str, Any]) -> None:
        self._log(values)
        try:
            await self.ledger.audit(**values)
        except LedgerError:
            log.error(json.dumps({"event": "audit-write-failed", "audit": values["event"]}))

    @staticmethod
    def _log(values: Mapping[str, Any]) -> None:
        v = dict(values)
        if v.get("serial") is not None:
            v["serial"] = serial_hex(v["serial"])
        log.info(json.dumps(v, sort_keys=True, default=str))
