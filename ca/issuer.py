"""The issuance core: one unit of work per protocol action, for every protocol.

EST and SCEP hand :meth:`Issuer.enroll` a CSR and the requester's claims; in one gate read and
one write it authenticates them (:mod:`ca.authentication`), verifies proof of possession,
applies the profile, handles manual approval and idempotence, signs with a reserved serial,
re-checks and stores the certificate and audits the decision, all before the protocol answers
(docs/ARCHITECTURE.md, "The issuance contract", "The unit of work"). :meth:`Issuer.issue` does
the same for a requester already authenticated (an operator). The lifecycle after issuance is
in :mod:`ca.lifecycle`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.api import (
    AuthMethod,
    BindIdentity,
    CertificateTemplate,
    EnrollRequest,
    IssuesOwnSerial,
    CAChain,
    Channel,
    IssueRequest,
    Issued,
    Outcome,
    Pending,
    Rejected,
    Requester,
)
from ca.ratelimit import Throttle
from ca.unit_of_work import GateQuery, IssueCommit, LostRace, audit_values
from ca.identity import check_binding
from ca.authz import (
    challenge_digest,
)
from ca.errors import (
    AuthenticationError,
    AuthorizationError,
    ThrottledError,
    CAError,
    LedgerError,
    NotFoundError,
    PolicyError,
    RejectReason,
)
from ca.ledger import (
    CertRecord,
    PendingRecord,
    serial_hex,
)
from ca.records import PendingStatus, RowStatus
from ca.names import device_key, sans_of
from ca.profile import (
    Profile,
    build_template,
    check_issued,
    check_key,
    refuse_forbidden_requests,
    verify_csr,
)

from ca.authentication import (
    Authentication,
    TrustedPath,
    accepts,
    check_credential_binding,
    offered_credential,
    offers_secret,
    stored_requester,
)
from ca.issuer_base import Actor as Actor
from ca.issuer_base import IssuingCA as IssuingCA
from ca.issuer_base import describe, log, requester_columns, utc_now, valid_now
from ca.issuer_base import sha256_hex as sha256_hex
from ca.issuer_base import spki_sha256 as spki_sha256
from ca.lifecycle import Lifecycle

def _certificate_method(req: EnrollRequest) -> AuthMethod:
    """How the certificate behind a request authenticates it: a renewal by the method its claims
    accept (the protocol's: an EST client certificate, RFC 7030 §4.2.2; a SCEP renewal signer,
    RFC 8894 §3.3.1.2), any other by the TLS client certificate it came with (RFC 7030 §3.3.2)."""
    if req.renewal_of is not None:
        return next(iter(req.claims.accept[0])) if req.claims.accept and req.claims.accept[0] \
            else AuthMethod.RENEWAL_SIGNER
    return AuthMethod.TLS_CLIENT_CERT


def _as_issue(req: EnrollRequest, requester: Requester) -> IssueRequest:
    return IssueRequest(req.csr, req.profile, requester, req.channel, req.transaction_id, req.renewal_of, req.nonce)




class Issuer(Authentication, Lifecycle):
    """Protocol-neutral issuance: one unit of work per protocol action (docs/ARCHITECTURE.md)."""

    async def issue(self, request: IssueRequest) -> Outcome:
        """Run the issuance contract (docs/ARCHITECTURE.md) and return ``Issued | Pending | Rejected``."""
        started = time.perf_counter()
        outcome = await self._issue(request)
        if self.observer is not None:
            kind = type(outcome).__name__.lower()
            self.observer(request.profile, request.channel.value, kind, time.perf_counter() - started)
        return outcome

    async def enroll(self, req: EnrollRequest) -> Outcome:
        """A protocol's enrollment or renewal, authenticated and issued in one unit of work
        (docs/ARCHITECTURE.md, "The unit of work"): one read gates it, one write commits it."""
        started = time.perf_counter()
        outcome = await self._enroll(req)
        if self.observer is not None:
            kind = type(outcome).__name__.lower()
            self.observer(req.profile, req.channel.value, kind, time.perf_counter() - started)
        return outcome

    async def _enroll(self, req: EnrollRequest) -> Outcome:
        csr, claims = req.csr, req.claims
        csr_sha = sha256_hex(csr.public_bytes(serialization.Encoding.DER))
        requester = Requester(AuthMethod.NONE, claims.identity or "unauthenticated", claims.certificate, claims.remote)
        failed_keys: list[tuple[str, str]] = []
        try:
            profile = self.profile(req.profile)
            ca = self._ca_of(profile)
            chain = await ca.backend.ca_chain()
            # The request's own checks; a refusal waits until the requester is authenticated, so
            # that it is answered as before (credentials first) and audited under its name.
            deferred: CAError | None = None
            draft: CertificateTemplate | None = None
            sans: list[str] = []
            device: str | None = None
            spki = ""
            try:
                verify_csr(csr, profile)
                check_key(profile, csr.public_key())
                spki = spki_sha256(csr.public_key())
                refuse_forbidden_requests(csr, profile)
                draft = build_template(csr, profile, chain.issuer, 1, utc_now(), **ca.template_urls())
                sans = sans_of(draft.extensions)
                device = device_key(profile.name, draft.subject, sans)
            except CAError as exc:
                deferred = exc
            # What the proofs need from the ledger, found without it.
            trusted: TrustedPath | None = None
            cert_ca: IssuingCA | None = None
            if req.renewal_of is not None:
                cert_ca = await self._ca_for_certificate(req.renewal_of)
                if cert_ca is None or not valid_now(req.renewal_of):
                    raise AuthorizationError("the certificate being renewed was not issued by this server "
                                             "or is outside its validity period")
            elif claims.certificate is not None and claims.policy is not None \
                    and accepts(claims, AuthMethod.TLS_CLIENT_CERT):
                try:
                    trusted = await self._trusted_path(claims.certificate, claims.policy)
                    cert_ca = trusted.ca
                except AuthenticationError:
                    trusted = None  # chains to none of the stores: the certificate proves nothing here
            authenticating = req.renewal_of if req.renewal_of is not None else claims.certificate
            if authenticating is not None and (cert_ca is not None or trusted is not None):
                # A certificate that chains to our stores names who is refused: always audited.
                requester = Requester(_certificate_method(req), authenticating.subject.rfc4514_string(),
                                      authenticating, claims.remote)
            throttle = Throttle(self.ledger)
            keys = throttle.keys(claims.remote, claims.identity, claims.namespace) if offers_secret(claims) else []
            one_time = (challenge_digest(claims.challenge)
                        if claims.challenge and accepts(claims, AuthMethod.ONE_TIME_CHALLENGE) else None)
            offered = offered_credential(claims)
            facts = await self.ledger.gate(GateQuery(
                profile=profile.name, transaction_id=req.transaction_id, pending_lookup=profile.manual,
                pending_csr_sha256=None if req.transaction_id else csr_sha, device=device,
                certificate=(cert_ca.name, authenticating.serial_number)
                if cert_ca is not None and authenticating is not None else None,
                challenge_digest=one_time, throttle_keys=tuple(keys), throttle_since=throttle.clock() - throttle.window,
                nonce=(req.nonce[0], req.nonce[1].hex()) if req.nonce is not None else None,
                credential_digest=offered))
            if req.transaction_id is not None:
                # A retransmission of a known transaction gets the same answer without being
                # authenticated again, and without spending a one-time challenge (RFC 8894 §3.3.1).
                if facts.prior is not None:
                    requester = stored_requester(facts.prior.requester, claims.remote)
                    return await self._replayed(profile, _as_issue(req, requester), facts.prior, spki, csr_sha)
                if facts.pending is not None and facts.pending.spki_sha256 == spki:
                    requester = stored_requester(facts.pending.requester, claims.remote)
                    return await self._pending_flow(_as_issue(req, requester), profile, facts.pending, csr_sha, spki)
            if facts.nonce_seen:
                raise PolicyError("replayed senderNonce", reason=RejectReason.BAD_REQUEST)
            consume: str | None = None
            if req.renewal_of is not None:
                assert cert_ca is not None
                await self._renewal_verdict(req.renewal_of, profile, cert_ca, facts.certificate, channel=req.channel,
                                            remote=claims.remote)
                requester = Requester(_certificate_method(req), req.renewal_of.subject.rfc4514_string(),
                                      req.renewal_of, claims.remote)
            else:
                wait = throttle.wait(facts.throttle, claims.remote, claims.identity, claims.namespace) if keys else 0.0
                if wait > 0:
                    raise ThrottledError("too many failed authentication attempts from this client or for this "
                                         "identity; retry later", retry_after=max(1, math.ceil(wait)))
                try:
                    requester, consume = await self._authenticate(claims, facts, profile, req.channel, trusted, one_time)
                except AuthenticationError:
                    failed_keys = keys
                    raise
            if deferred is not None:
                raise deferred
            assert draft is not None and device is not None
            bound = requester.certificate
            if bound is not None and requester.binding is not BindIdentity.NONE:
                check_binding(requester.binding, bound, draft.subject, sans)
            spent: str | None = None
            if requester.method is AuthMethod.ONE_TIME_CREDENTIAL:
                assert facts.credential is not None
                check_credential_binding(facts.credential, draft.subject)
                consume, spent = None, offered
            if facts.device_retired:
                raise AuthorizationError(f"device {device} is retired; it may not enroll or renew")
            issue_req = IssueRequest(csr, profile.name, requester, req.channel, req.transaction_id, req.renewal_of,
                                     req.nonce, consume, spent)
            if profile.manual:
                return await self._pending_flow(issue_req, profile, facts.pending, csr_sha, spki)
            return await self._issue_now(issue_req, profile, ca, chain, draft, csr_sha, spki, device, sans)
        except CAError as exc:
            await self._refused(req, requester, exc, csr_sha, failed_keys)
            return Rejected(exc.reason, exc.detail, getattr(exc, "retry_after", None))

    async def poll(self, profile_name: str, transaction_id: str, signer: x509.Certificate, *,
                   channel: Channel, remote: str | None = None) -> Outcome:
        """A client polls a pending request by transaction (SCEP CertPoll, RFC 8894 §3.3.3): one
        read finds the request (or its certificate) and the signer's standing; the signer must
        hold the requested key, or be a valid certificate of ours for the same subject (a
        renewal that went pending). An approved request is issued now, from the stored CSR."""
        profile = self.profile(profile_name)
        signer_spki = spki_sha256(signer.public_key())
        ca = await self._ca_for_certificate(signer)
        facts = await self.ledger.gate(GateQuery(
            profile=profile.name, transaction_id=transaction_id, pending_lookup=True,
            certificate=(ca.name, signer.serial_number) if ca is not None else None))
        try:
            pending = facts.pending
            if pending is None:
                prior = facts.prior
                if prior is not None and prior.der is not None and prior.spki_sha256 == signer_spki:
                    chain = await self.cas[prior.issuer].backend.ca_chain()
                    return Issued(x509.load_der_x509_certificate(prior.der), chain.chain, prior.serial, replayed=True)
                raise NotFoundError("no request with this transactionID", reason=RejectReason.BAD_CERT_ID)
            if signer_spki != pending.spki_sha256:
                rec = facts.certificate
                mine = (rec is not None and rec.der == signer.public_bytes(serialization.Encoding.DER)
                        and rec.status is RowStatus.ISSUED and not rec.revoked and not rec.retired and valid_now(signer))
                if not (mine and pending.subject is not None and signer.subject.rfc4514_string() == pending.subject):
                    raise NotFoundError("CertPoll signer does not match the request", reason=RejectReason.BAD_CERT_ID)
            requester = stored_requester(pending.requester, remote)
            csr = x509.load_der_x509_csr(pending.csr_der)
            return await self._pending_flow(IssueRequest(csr, profile.name, requester, channel, transaction_id),
                                            profile, pending, pending.csr_sha256, pending.spki_sha256)
        except CAError as exc:
            await self.audit("poll", ok=False, channel=channel, profile=profile.name,
                             requester=Requester(AuthMethod.NONE, signer.subject.rfc4514_string(), signer, remote),
                             reason=f"{exc.reason.value}: {exc.detail}", detail={"transaction_id": transaction_id})
            return Rejected(exc.reason, exc.detail)

    async def _refused(self, req: EnrollRequest, requester: Requester, exc: CAError, csr_sha: str,
                       failed_keys: Sequence[tuple[str, str]]) -> None:
        """A refusal's one write: the throttle's failure keys and the audit row (sampled when the
        requester authenticated nobody, :meth:`audit`)."""
        values: dict[str, Any] = dict(
            event="issue", ok=False, channel=req.channel.value, profile=req.profile, requester=describe(requester),
            reason=f"{exc.reason.value}: {exc.detail}", csr_sha256=csr_sha, serial=None,
            detail={"transaction_id": req.transaction_id} if req.transaction_id else None)
        await self.flush_refusal_summaries()
        admitted = requester.method is not AuthMethod.NONE or self._refusal_sampler().admit(
            req.channel.value, "issue", values["reason"], requester.remote)
        if admitted:
            self._log(values)
        try:
            await self.ledger.record_refusal(list(failed_keys), audit_values(**values) if admitted else None)
        except LedgerError:
            log.error(json.dumps({"event": "audit-write-failed", "audit": "issue"}))

    async def _issue(self, req: IssueRequest) -> Outcome:
        """One unit of work (docs/ARCHITECTURE.md): checks in memory, one gate read, sign, one
        write that re-asserts what the read found."""
        csr = req.csr
        csr_der = csr.public_bytes(serialization.Encoding.DER)
        csr_sha = sha256_hex(csr_der)
        try:
            profile = self.profile(req.profile)
            if req.requester.method is AuthMethod.NONE:
                raise AuthenticationError("request is not authenticated")
            verify_csr(csr, profile)
            public_key = csr.public_key()
            check_key(profile, public_key)
            refuse_forbidden_requests(csr, profile)
            spki = spki_sha256(public_key)
            ca = self._ca_of(profile)
            chain = await ca.backend.ca_chain()
            # The template is built once; the serial is filled in when one is taken.
            draft = build_template(csr, profile, chain.issuer, 1, utc_now(), **ca.template_urls())
            sans = sans_of(draft.extensions)
            device = device_key(profile.name, draft.subject, sans)
            bound = req.requester.certificate
            if bound is not None and req.requester.binding is not BindIdentity.NONE:
                check_binding(req.requester.binding, bound, draft.subject, sans)
            manual = profile.manual and req.requester.method is not AuthMethod.OPERATOR
            facts = await self.ledger.gate(GateQuery(
                profile=profile.name, transaction_id=req.transaction_id, pending_lookup=manual,
                pending_csr_sha256=None if req.transaction_id else csr_sha, device=device))
            if facts.prior is not None:
                return await self._replayed(profile, req, facts.prior, spki, csr_sha)
            if facts.device_retired:
                raise AuthorizationError(f"device {device} is retired; it may not enroll or renew")
            if manual:
                return await self._pending_flow(req, profile, facts.pending, csr_sha, spki)
            return await self._issue_now(req, profile, ca, chain, draft, csr_sha, spki, device, sans)
        except CAError as exc:
            await self.audit("issue", ok=False, channel=req.channel, profile=req.profile,
                             requester=req.requester, reason=f"{exc.reason.value}: {exc.detail}",
                             csr_sha256=csr_sha, detail={"transaction_id": req.transaction_id})
            return Rejected(exc.reason, exc.detail)

    async def _replayed(self, profile: Profile, req: IssueRequest, rec: CertRecord, spki: str,
                        csr_sha: str) -> Outcome:
        """The same transaction again: the same certificate, never a second one (RFC 8894 §3.2.1.1)."""
        if rec.spki_sha256 != spki:
            raise PolicyError("transactionID already used with a different key",
                              reason=RejectReason.BAD_REQUEST)
        if rec.csr_sha256 != csr_sha:
            # RFC 8894 §3.3.1: a resend repeats the request; a new CSR needs a new transaction.
            raise PolicyError("transactionID already used with a different CSR",
                              reason=RejectReason.BAD_REQUEST)
        assert rec.der is not None
        chain = await self.cas[rec.issuer].backend.ca_chain()
        await self.audit("issue-replay", ok=True, channel=req.channel, profile=profile.name,
                         requester=req.requester, serial=rec.serial,
                         detail={"transaction_id": req.transaction_id})
        return Issued(x509.load_der_x509_certificate(rec.der), chain.chain, rec.serial, replayed=True)

    async def _pending_flow(self, req: IssueRequest, profile: Profile, rec: PendingRecord | None,
                            csr_sha: str, spki: str) -> Outcome:
        if rec is not None and rec.spki_sha256 != spki:
            raise PolicyError("transactionID already used with a different key", reason=RejectReason.BAD_REQUEST)
        if rec is not None and rec.csr_sha256 != csr_sha:
            # What an operator approved is the stored CSR: a resend under the same transaction
            # (same key) must repeat it byte for byte, or it could swap the subject after approval.
            raise PolicyError(f"request {rec.id}: transactionID already used with a different CSR",
                              reason=RejectReason.BAD_REQUEST)
        if rec is None:
            rid = await self.ledger.create_pending(
                profile=profile.name, channel=req.channel.value, **requester_columns(req.requester),
                renews_serial=serial_hex(req.renewal_of.serial_number) if req.renewal_of is not None else None,
                csr_der=req.csr.public_bytes(serialization.Encoding.DER), csr_sha256=csr_sha,
                spki_sha256=spki, transaction_id=req.transaction_id, subject=req.csr.subject.rfc4514_string())
            await self.audit("pending", ok=True, channel=req.channel, profile=profile.name,
                             requester=req.requester, csr_sha256=csr_sha, detail={"request_id": rid})
            return Pending(rid, profile.retry_after)
        if rec.status in (PendingStatus.PENDING, PendingStatus.ISSUING):
            return Pending(rec.id, profile.retry_after)
        if rec.status is PendingStatus.REJECTED:
            raise CAError(f"request {rec.id} was rejected by an operator"
                          + (f": {rec.reason}" if rec.reason else ""), reason=RejectReason.REJECTED)
        if rec.status is PendingStatus.ISSUED and rec.serial is not None and rec.issuer is not None:
            cert_rec = await self.ledger.find_by_serial(rec.issuer, rec.serial)
            if cert_rec is not None and cert_rec.der is not None:
                chain = await self.cas[rec.issuer].backend.ca_chain()
                return Issued(x509.load_der_x509_certificate(cert_rec.der), chain.chain, rec.serial, replayed=True)
        # approved: exactly one caller moves it to issuing and issues
        if not await self.ledger.transition_pending(rec.id, [PendingStatus.APPROVED], PendingStatus.ISSUING):
            return Pending(rec.id, profile.retry_after)
        ca = self._ca_of(profile)
        chain = await ca.backend.ca_chain()
        approved = replace(req, csr=x509.load_der_x509_csr(rec.csr_der))  # issue what was approved
        draft = build_template(approved.csr, profile, chain.issuer, 1, utc_now(), **ca.template_urls())
        sans = sans_of(draft.extensions)
        device = device_key(profile.name, draft.subject, sans)
        try:
            return await self._issue_now(approved, profile, ca, chain, draft, rec.csr_sha256, rec.spki_sha256,
                                         device, sans, pending_id=rec.id, renews=rec.renews_serial)
        except BaseException:
            await self.ledger.transition_pending(rec.id, [PendingStatus.ISSUING], PendingStatus.APPROVED)
            raise

    async def _issue_now(self, req: IssueRequest, profile: Profile, ca: IssuingCA, chain: CAChain,
                         draft: CertificateTemplate, csr_sha: str, spki: str, device: str, sans: list[str],
                         pending_id: int | None = None, renews: int | None = None) -> Issued:
        """Take a reserved serial, sign once, and commit everything in one write. ``renews`` is the
        serial a renewal renews when the request no longer carries the certificate (a held
        renewal issued on a poll)."""
        if req.renewal_of is not None:
            renews = req.renewal_of.serial_number
        reserved = await self.serials.take(ca.name)
        template = replace(draft, serial=reserved.serial, csr=req.csr)
        try:
            cert = await ca.backend.sign(template)
        except BaseException:
            self.serials.give_back(ca.name, reserved)  # nothing was signed with it
            raise
        own_serial = isinstance(ca.backend, IssuesOwnSerial) and ca.backend.issues_own_serial()
        check_issued(cert, replace(template, serial=cert.serial_number) if own_serial else template, chain.issuer)
        der = cert.public_bytes(serialization.Encoding.DER)
        detail: dict[str, Any] = {"device": device}
        if req.transaction_id:
            detail["transaction_id"] = req.transaction_id
        if renews is not None:
            detail["renews"] = serial_hex(renews)
        log_values: dict[str, Any] = dict(event="renew" if renews is not None else "issue", ok=True,
                          channel=req.channel.value, profile=profile.name, requester=describe(req.requester),
                          reason="issued", csr_sha256=csr_sha, serial=cert.serial_number, detail=detail)
        values: dict[str, Any] = dict(
            profile=profile.name, channel=req.channel.value, **requester_columns(req.requester),
            csr_sha256=csr_sha, spki_sha256=spki,
            transaction_id=req.transaction_id,
            renews_serial=serial_hex(renews) if renews is not None else None,
            der=der, subject=cert.subject.rfc4514_string(), not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(), device=device)
        if own_serial:
            values["serial"] = serial_hex(cert.serial_number)
        unit = IssueCommit(
            row_id=reserved.row_id, values=values, audit=audit_values(**log_values), device=device,
            device_profile=profile.name, sans=sans, pending_id=pending_id,
            nonce=(req.nonce[0], req.nonce[1].hex()) if req.nonce is not None else None,
            consume_challenge=(profile.name, req.one_time_challenge) if req.one_time_challenge else None,
            consume_credential=(profile.name, req.one_time_credential) if req.one_time_credential else None)
        try:
            await self.ledger.commit_issue(unit)
        except LostRace:
            # Another request of the same transaction committed first: answer with its certificate.
            prior = await self.ledger.find_by_transaction(profile.name, req.transaction_id or "")
            if not prior or prior[0].der is None:
                raise
            return Issued(x509.load_der_x509_certificate(prior[0].der), chain.chain, prior[0].serial, replayed=True)
        self._log(log_values)
        return Issued(cert, chain.chain, cert.serial_number)

    async def release_serials(self) -> int:
        """Give back the serials this process reserved and did not use (graceful stop)."""
        return await self.ledger.abandon_reserved(self.serials.drain())

