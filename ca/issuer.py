"""The issuance core: one object that runs the issuance contract for every protocol.

EST and SCEP authenticate their requester, then call :meth:`Issuer.issue`; it verifies proof of
possession, applies the profile, handles manual approval and idempotence, reserves a random
serial in the ledger, has the CA backend sign, re-checks and stores the certificate and audits
the decision, all before the protocol answers (docs/ARCHITECTURE.md, "The issuance contract").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.api import (
    REASONS,
    AuthMethod,
    BindIdentity,
    CABackend,
    CertificatePolicy,
    CertificateTemplate,
    Claims,
    EnrollRequest,
    IssuesOwnSerial,
    RollsOver,
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
from ca.serials import SerialPool
from ca.ratelimit import Throttle
from ca.unit_of_work import GateFacts, GateQuery, IssueCommit, LostRace, audit_values
from ca.identity import Standing, check_binding, lifecycle_refusal
from ca.authz import (
    TrustStore,
    challenge_digest,
    credential_digest,
    hash_secret,
    new_challenge,
    verify_secret_async,
)
from ca.errors import (
    AuthenticationError,
    AuthorizationError,
    ThrottledError,
    CAError,
    LedgerError,
    NotFoundError,
    ParseError,
    PolicyError,
    RejectReason,
)
from ca.ledger import (
    AuditRecord,
    CertificateQuery,
    CertRecord,
    CredentialRecord,
    DeviceRecord,
    Ledger,
    PendingRecord,
    serial_hex,
)
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


@dataclass(frozen=True)
class _TrustedPath:
    """A client certificate's chain to one store, and which CA of ours signed it (if any)."""

    store: TrustStore
    path: list[x509.Certificate]
    ca: IssuingCA | None


def _accepts(claims: Claims, method: AuthMethod) -> bool:
    return any(method in entry for entry in claims.accept)


def _offers_secret(claims: Claims) -> bool:
    """True when the claims try a password or challenge (what the throttle counts)."""
    return (claims.password is not None and (_accepts(claims, AuthMethod.BASIC)
                                             or _accepts(claims, AuthMethod.ONE_TIME_CREDENTIAL))) or bool(
        claims.challenge and (_accepts(claims, AuthMethod.CHALLENGE) or _accepts(claims, AuthMethod.ONE_TIME_CHALLENGE)))


def _stored_requester(text: str, method: str | None, remote: str | None) -> Requester:
    """The requester a ledger row recorded (``method:principal``), for a retransmission."""
    kind, _, principal = text.partition(":")
    try:
        auth = AuthMethod(method or kind)
    except ValueError:
        # A row this version did not write: authenticate again rather than guess (fail closed).
        raise AuthenticationError(f"the stored requester {text[:64]!r} names no known method") from None
    return Requester(auth, principal or text, None, remote)


#: The subject attributes a one-time credential can bind a device by (``enroll credentials new --bind``).
CREDENTIAL_BINDINGS: dict[str, x509.ObjectIdentifier] = {
    "serialNumber": x509.NameOID.SERIAL_NUMBER, "CN": x509.NameOID.COMMON_NAME}


def _offered_credential(claims: Claims) -> str | None:
    """The digest of the one-time credential the claims offer as HTTP Basic, if the label accepts one."""
    if claims.user and claims.password is not None and _accepts(claims, AuthMethod.ONE_TIME_CREDENTIAL):
        return credential_digest(claims.user, claims.password)
    return None


def check_credential_binding(cred: CredentialRecord, subject: x509.Name) -> None:
    """The certificate's subject (the template's, after the profile) must name the device the
    credential was made for: its ``bind`` attribute present, every value equal to ``device``."""
    values = [a.value for a in subject.get_attributes_for_oid(CREDENTIAL_BINDINGS[cred.bind])]
    if not values or any(v != cred.device for v in values):
        raise AuthorizationError(f"credential {cred.id} is bound to the device with {cred.bind} "
                                 f"{cred.device!r}; the request names another")


def _as_issue(req: EnrollRequest, requester: Requester) -> IssueRequest:
    return IssueRequest(req.csr, req.profile, requester, req.channel, req.transaction_id, req.renewal_of, req.nonce)


def _valid_now(cert: x509.Certificate) -> bool:
    return cert.not_valid_before_utc <= _now() <= cert.not_valid_after_utc


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
        self.serials = SerialPool(ledger)

    # --- lookups ---------------------------------------------------------------------------
    def profile(self, name: str) -> Profile:
        """The profile called ``name``."""
        try:
            return self.profiles[name]
        except KeyError:
            raise NotFoundError(f"no profile {name!r}") from None

    def _ca_of(self, profile: Profile) -> IssuingCA:
        """The CA a profile issues from now: its own, or its successor once a rollover is
        active (:class:`ca.api.RollsOver`, RFC 4210 §4.4)."""
        ca = self.cas[profile.ca]
        if isinstance(ca.backend, RollsOver):
            nxt = ca.backend.successor(_now())
            if nxt is not None and nxt in self.cas:
                return self.cas[nxt]
        return ca

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

    async def issued_by_us(self, cert: x509.Certificate) -> bool:
        """True when one of our CAs signed ``cert`` (a signature check; no ledger access)."""
        return await self._ca_for_certificate(cert) is not None

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
        trusted = await self._trusted_path(cert, policy, intermediates)
        record = None
        if trusted.ca is not None:
            record = await self.ledger.find_by_serial(trusted.ca.name, cert.serial_number)
        return await self._certificate_verdict(cert, policy, trusted, record, channel=channel, profile=profile,
                                               remote=remote)

    async def _trusted_path(self, cert: x509.Certificate, policy: CertificatePolicy,
                            intermediates: Sequence[x509.Certificate] = ()) -> _TrustedPath:
        """The chain to one of the policy's stores (no I/O); AuthenticationError when none."""
        now = _now()
        for name in policy.trust:
            store = self.trust.get(name)
            path = store.path(cert, intermediates, now) if store is not None else None
            if store is not None and path is not None:
                return _TrustedPath(store, path, await self._ca_for_certificate(cert))
        raise AuthenticationError("the client certificate does not chain to a trust store of this label")

    async def _certificate_verdict(self, cert: x509.Certificate, policy: CertificatePolicy, trusted: _TrustedPath,
                                   record: CertRecord | None, *, channel: Channel, profile: str | None,
                                   remote: str | None) -> Requester:
        """The lifecycle rule on a trusted path, with our ledger row (read by the caller)."""
        if trusted.ca is not None:
            record = await self._checked_record(trusted.ca, cert, record, channel=channel, profile=profile,
                                                remote=remote)
            refusal = lifecycle_refusal(_standing(record), cert, policy.client_profiles, _now())
            if refusal is not None:
                raise AuthorizationError(refusal)
        elif trusted.store.revocation is not None:
            await trusted.store.revocation.check(cert, trusted.path[1] if len(trusted.path) > 1 else cert)
        return Requester(AuthMethod.TLS_CLIENT_CERT, cert.subject.rfc4514_string(), cert, remote,
                         policy.bind_identity)

    async def _own_record(self, ca: IssuingCA, cert: x509.Certificate, *, channel: Channel,
                          profile: str | None, remote: str | None) -> CertRecord:
        """Our ledger row for a certificate our CA signed (:meth:`_checked_record`)."""
        record = await self.ledger.find_by_serial(ca.name, cert.serial_number)
        return await self._checked_record(ca, cert, record, channel=channel, profile=profile, remote=remote)

    async def _checked_record(self, ca: IssuingCA, cert: x509.Certificate, record: CertRecord | None, *,
                              channel: Channel, profile: str | None, remote: str | None) -> CertRecord:
        """``record`` if it is exactly this certificate, issued; a certificate of our CA that the
        ledger does not know is audited as an anomaly (a leaked key or a lost record) and refused."""
        der = cert.public_bytes(serialization.Encoding.DER)
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
        ca = await self._ca_for_certificate(cert)
        if ca is None or not _valid_now(cert):
            return None
        record = await self.ledger.find_by_serial(ca.name, cert.serial_number)
        return await self._renewal_verdict(cert, profile, ca, record, channel=channel, remote=remote)

    async def _renewal_verdict(self, cert: x509.Certificate, profile: Profile, ca: IssuingCA,
                               record: CertRecord | None, *, channel: Channel, remote: str | None) -> CertRecord:
        """:meth:`renewable`'s rule on a ledger row already read."""
        record = await self._checked_record(ca, cert, record, channel=channel, profile=profile.name, remote=remote)
        now = _now()
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
                draft = build_template(csr, profile, chain.issuer, 1, _now(), **ca.template_urls())
                sans = sans_of(draft.extensions)
                device = device_key(profile.name, draft.subject, sans)
            except CAError as exc:
                deferred = exc
            # What the proofs need from the ledger, found without it.
            trusted: _TrustedPath | None = None
            cert_ca: IssuingCA | None = None
            if req.renewal_of is not None:
                cert_ca = await self._ca_for_certificate(req.renewal_of)
                if cert_ca is None or not _valid_now(req.renewal_of):
                    raise AuthorizationError("the certificate being renewed was not issued by this server "
                                             "or is outside its validity period")
            elif claims.certificate is not None and claims.policy is not None \
                    and _accepts(claims, AuthMethod.TLS_CLIENT_CERT):
                try:
                    trusted = await self._trusted_path(claims.certificate, claims.policy)
                    cert_ca = trusted.ca
                except AuthenticationError:
                    trusted = None  # chains to none of the stores: the certificate proves nothing here
            authenticating = req.renewal_of if req.renewal_of is not None else claims.certificate
            if authenticating is not None and (cert_ca is not None or trusted is not None):
                # A certificate that chains to our stores names who is refused: always audited.
                requester = Requester(AuthMethod.TLS_CLIENT_CERT if req.channel is Channel.EST
                                      else AuthMethod.RENEWAL_SIGNER, authenticating.subject.rfc4514_string(),
                                      authenticating, claims.remote)
            throttle = Throttle(self.ledger)
            keys = throttle.keys(claims.remote, claims.identity, claims.namespace) if _offers_secret(claims) else []
            one_time = (challenge_digest(claims.challenge)
                        if claims.challenge and _accepts(claims, AuthMethod.ONE_TIME_CHALLENGE) else None)
            offered = _offered_credential(claims)
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
                    requester = _stored_requester(facts.prior.requester, facts.prior.auth_method, claims.remote)
                    return await self._replayed(profile, _as_issue(req, requester), facts.prior, spki, csr_sha)
                if facts.pending is not None and facts.pending.spki_sha256 == spki:
                    requester = _stored_requester(facts.pending.requester, None, claims.remote)
                    return await self._pending_flow(_as_issue(req, requester), profile, facts.pending, csr_sha, spki)
            if facts.nonce_seen:
                raise PolicyError("replayed senderNonce", reason=RejectReason.BAD_REQUEST)
            consume: str | None = None
            if req.renewal_of is not None:
                assert cert_ca is not None
                await self._renewal_verdict(req.renewal_of, profile, cert_ca, facts.certificate, channel=req.channel,
                                            remote=claims.remote)
                method = next(iter(claims.accept[0])) if claims.accept and claims.accept[0] else \
                    AuthMethod.RENEWAL_SIGNER
                requester = Requester(method, req.renewal_of.subject.rfc4514_string(), req.renewal_of, claims.remote)
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

    async def authenticate(self, claims: Claims, profile_name: str, channel: Channel) -> Requester:
        """Verify ``claims`` alone (one gate read; a failed secret is recorded for the throttle),
        for an operation that issues through :meth:`issue` afterwards (EST serverkeygen)."""
        profile = self.profile(profile_name)
        trusted: _TrustedPath | None = None
        if claims.certificate is not None and claims.policy is not None and _accepts(claims, AuthMethod.TLS_CLIENT_CERT):
            try:
                trusted = await self._trusted_path(claims.certificate, claims.policy)
            except AuthenticationError:
                trusted = None
        throttle = Throttle(self.ledger)
        keys = throttle.keys(claims.remote, claims.identity, claims.namespace) if _offers_secret(claims) else []
        cert = claims.certificate
        facts = await self.ledger.gate(GateQuery(
            profile=profile.name, throttle_keys=tuple(keys), throttle_since=throttle.clock() - throttle.window,
            certificate=(trusted.ca.name, cert.serial_number) if trusted is not None and trusted.ca is not None
            and cert is not None else None))
        wait = throttle.wait(facts.throttle, claims.remote, claims.identity, claims.namespace) if keys else 0.0
        if wait > 0:
            raise ThrottledError("too many failed authentication attempts from this client or for this identity; "
                                 "retry later", retry_after=max(1, math.ceil(wait)))
        try:
            requester, _ = await self._authenticate(claims, facts, profile, channel, trusted, None)
        except AuthenticationError:
            if keys:
                await self.ledger.record_refusal(keys, None)
            raise
        return requester

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
                        and rec.status == "issued" and not rec.revoked and not rec.retired and _valid_now(signer))
                if not (mine and pending.subject is not None and signer.subject.rfc4514_string() == pending.subject):
                    raise NotFoundError("CertPoll signer does not match the request", reason=RejectReason.BAD_CERT_ID)
            requester = _stored_requester(pending.requester, None, remote)
            csr = x509.load_der_x509_csr(pending.csr_der)
            return await self._pending_flow(IssueRequest(csr, profile.name, requester, channel, transaction_id),
                                            profile, pending, pending.csr_sha256, pending.spki_sha256)
        except CAError as exc:
            await self.audit("poll", ok=False, channel=channel, profile=profile.name,
                             requester=Requester(AuthMethod.NONE, signer.subject.rfc4514_string(), signer, remote),
                             reason=f"{exc.reason.value}: {exc.detail}", detail={"transaction_id": transaction_id})
            return Rejected(exc.reason, exc.detail)

    async def certificate_for(self, ca_name: str, serial: int, signer: x509.Certificate) -> x509.Certificate:
        """An issued certificate for a requester entitled to it (SCEP GetCert, RFC 8894 §3.3.4,
        which leaves the rule to the CA): the signer is the certificate itself, or holds its
        key, or is a certificate of ours valid now, not revoked or retired, for the same device
        (the same subject when the ledger has no device). Anything else, unknown or not
        entitled, is one :class:`NotFoundError` (no oracle)."""
        signer_ca = await self._ca_for_certificate(signer)
        keys = [(ca_name, serial)] + ([(signer_ca.name, signer.serial_number)] if signer_ca is not None else [])
        found = await self.ledger.find_by_serials(keys)
        record, signer_rec = found[0], (found[1] if len(found) > 1 else None)
        if record is None or record.status != "issued" or record.der is None:
            raise NotFoundError(f"no certificate {serial_hex(serial)} of CA {ca_name}", reason=RejectReason.BAD_CERT_ID)
        cert = x509.load_der_x509_certificate(record.der)
        signer_der = signer.public_bytes(serialization.Encoding.DER)
        entitled = signer_der == record.der or spki_sha256(signer.public_key()) == record.spki_sha256
        if not entitled and signer_rec is not None and signer_rec.der == signer_der and signer_rec.status == "issued" \
                and not signer_rec.revoked and not signer_rec.retired and _valid_now(signer):
            entitled = (signer_rec.device == record.device if record.device is not None and signer_rec.device
                        is not None else record.subject is not None and signer_rec.subject == record.subject)
        if not entitled:
            raise NotFoundError(f"signer {signer.subject.rfc4514_string()} may not read certificate "
                                f"{serial_hex(serial)}", reason=RejectReason.BAD_CERT_ID)
        return cert

    async def _authenticate(self, claims: Claims, facts: GateFacts, profile: Profile, channel: Channel,
                            trusted: _TrustedPath | None, one_time: str | None) -> tuple[Requester, str | None]:
        """The requester ``claims`` prove, with the gate's facts; the one-time challenge digest to
        consume in the commit (None when none was used). Raises the refusal that says most."""
        ok: dict[AuthMethod, Requester] = {}
        cert_refusal: AuthorizationError | None = None
        if trusted is not None and claims.certificate is not None and claims.policy is not None:
            try:
                ok[AuthMethod.TLS_CLIENT_CERT] = await self._certificate_verdict(
                    claims.certificate, claims.policy, trusted, facts.certificate, channel=channel,
                    profile=profile.name, remote=claims.remote)
            except AuthorizationError as exc:
                cert_refusal = exc
        if claims.password is not None and claims.user is not None and _accepts(claims, AuthMethod.BASIC):
            if await self.verify_password(claims.user, claims.password):
                ok[AuthMethod.BASIC] = Requester(AuthMethod.BASIC, claims.user,
                                                 claims.certificate if AuthMethod.TLS_CLIENT_CERT in ok else None,
                                                 claims.remote)
        cred = facts.credential
        if cred is not None and claims.user == cred.id and _accepts(claims, AuthMethod.ONE_TIME_CREDENTIAL):
            ok[AuthMethod.ONE_TIME_CREDENTIAL] = Requester(AuthMethod.ONE_TIME_CREDENTIAL, cred.id, None,
                                                           claims.remote)
        if claims.challenge:
            if _accepts(claims, AuthMethod.CHALLENGE) and await self.check_static_challenge(profile.name,
                                                                                          claims.challenge):
                ok[AuthMethod.CHALLENGE] = Requester(AuthMethod.CHALLENGE, "challenge", None, claims.remote)
            elif one_time is not None and facts.challenge_valid:
                ok[AuthMethod.ONE_TIME_CHALLENGE] = Requester(AuthMethod.ONE_TIME_CHALLENGE, "one-time-challenge",
                                                              None, claims.remote)
        for entry in claims.accept:
            if not entry or not entry <= ok.keys():
                continue
            if AuthMethod.TLS_CLIENT_CERT in entry:
                who = ok[AuthMethod.TLS_CLIENT_CERT]
                if AuthMethod.BASIC in entry:
                    who = replace(who, principal=f"{claims.user} ({who.principal})")
                return who, None
            method = next(iter(entry))
            return ok[method], one_time if method is AuthMethod.ONE_TIME_CHALLENGE else None
        if claims.voucher is not None:
            vouched = await claims.voucher()
            if vouched is not None:
                return vouched, None
        if cert_refusal is not None:
            raise cert_refusal
        cert_ok = AuthMethod.TLS_CLIENT_CERT in ok
        if any(AuthMethod.BASIC in e and (AuthMethod.TLS_CLIENT_CERT not in e or cert_ok) for e in claims.accept):
            raise AuthenticationError("password authentication required" if claims.password is None
                                      else "password authentication failed")
        if any(AuthMethod.ONE_TIME_CREDENTIAL in e for e in claims.accept):
            raise AuthenticationError("password authentication required" if claims.password is None
                                      else "password authentication failed (unknown, spent, revoked or expired "
                                           "one-time credential, or one for another profile)")
        if any(e & {AuthMethod.CHALLENGE, AuthMethod.ONE_TIME_CHALLENGE} for e in claims.accept):
            raise AuthenticationError("challenge missing or wrong")
        if claims.certificate is None:
            raise AuthorizationError("a client certificate is required (RFC 7030 §3.3.2)")
        raise AuthorizationError("the client certificate does not chain to a trust store of this label")

    async def _refused(self, req: EnrollRequest, requester: Requester, exc: CAError, csr_sha: str,
                       failed_keys: Sequence[tuple[str, str]]) -> None:
        """A refusal's one write: the throttle's failure keys and the audit row (sampled when the
        requester authenticated nobody, :meth:`audit`)."""
        values: dict[str, Any] = dict(
            event="issue", ok=False, channel=req.channel.value, profile=req.profile, requester=_describe(requester),
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
            draft = build_template(csr, profile, chain.issuer, 1, _now(), **ca.template_urls())
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
        approved = replace(req, csr=x509.load_der_x509_csr(rec.csr_der))  # issue what was approved
        draft = build_template(approved.csr, profile, chain.issuer, 1, _now(), **ca.template_urls())
        sans = sans_of(draft.extensions)
        device = device_key(profile.name, draft.subject, sans)
        try:
            return await self._issue_now(approved, profile, ca, chain, draft, rec.csr_sha256, rec.spki_sha256,
                                         device, sans, pending_id=rec.id)
        except BaseException:
            await self.ledger.transition_pending(rec.id, ["issuing"], "approved")
            raise

    async def _issue_now(self, req: IssueRequest, profile: Profile, ca: IssuingCA, chain: CAChain,
                         draft: CertificateTemplate, csr_sha: str, spki: str, device: str, sans: list[str],
                         pending_id: int | None = None) -> Issued:
        """Take a reserved serial, sign once, and commit everything in one write."""
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
        if req.renewal_of is not None:
            detail["renews"] = serial_hex(req.renewal_of.serial_number)
        log_values: dict[str, Any] = dict(event="renew" if req.renewal_of is not None else "issue", ok=True,
                          channel=req.channel.value, profile=profile.name, requester=_describe(req.requester),
                          reason="issued", csr_sha256=csr_sha, serial=cert.serial_number, detail=detail)
        values: dict[str, Any] = dict(
            profile=profile.name, channel=req.channel.value, requester=_describe(req.requester) or "",
            auth_method=req.requester.method.value, csr_sha256=csr_sha, spki_sha256=spki,
            transaction_id=req.transaction_id,
            renews_serial=serial_hex(req.renewal_of.serial_number) if req.renewal_of is not None else None,
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

    async def adopt(self, cert: x509.Certificate, profile_name: str, *, by: Actor = None,
                    channel: Channel = Channel.ADMIN) -> CertRecord:
        """Record a certificate one of our CAs signed outside the ledger (``enroll certs import``:
        the development PKI's example client, certificates from before the ledger existed), so
        that it authenticates, appears on CRLs and OCSP, and can be revoked like any other.

        Refused when no CA of ours signed it or its serial is already recorded. With ``channel``
        :attr:`Channel.IMPORT` it records one from another instance's verified bundle (``enroll import``).
        """
        profile = self.profile(profile_name)
        ca = await self._ca_for_certificate(cert)
        if ca is None:
            raise CAError("the certificate was not signed by any CA of this server")
        der = cert.public_bytes(serialization.Encoding.DER)
        spki = spki_sha256(cert.public_key())
        who = _actor(by)
        row_id = await self.ledger.reserve_serial(
            issuer=ca.name, serial=cert.serial_number, profile=profile.name, channel=channel.value,
            requester=_describe(who) or "", auth_method=AuthMethod.OPERATOR.value, csr_sha256=sha256_hex(der),
            spki_sha256=spki, transaction_id=None, renews_serial=None)
        if row_id is None:
            raise CAError(f"serial {serial_hex(cert.serial_number)} of CA {ca.name!r} is already recorded")
        sans = sans_of(cert.extensions)
        device = device_key(profile.name, cert.subject, sans)
        audit = dict(event="adopt" if channel is Channel.ADMIN else "import", ok=True, channel=channel.value, profile=profile.name,
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

    async def release_serials(self) -> int:
        """Give back the serials this process reserved and did not use (graceful stop)."""
        return await self.ledger.abandon_reserved(self.serials.drain())

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

    async def crl_for_ca(self, ca_name: str, force: bool = False,
                         progress: Callable[[str, int, int], None] | None = None) -> x509.CertificateRevocationList:
        """The current CRL of a CA, re-signed when forced or past half its lifetime (RFC 5280 §5).
        ``progress(step, done, total)`` hears about long work (a CRL of a large ledger)."""
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
        revoked = await self.ledger.revoked_entries(ca_name)
        for i, (serial, revoked_at, reason) in enumerate(revoked):
            if progress is not None and i % 10_000 == 0:
                progress("entries", i, len(revoked))
            b = (x509.RevokedCertificateBuilder().serial_number(serial)
                 .revocation_date(dt.datetime.fromtimestamp(int(revoked_at), dt.timezone.utc)))
            flag = REASONS.get(reason or "unspecified", x509.ReasonFlags.unspecified)
            if flag is not x509.ReasonFlags.unspecified:
                b = b.add_extension(x509.CRLReason(flag), False)
            entries.append(b.build())
        this_update = dt.datetime.fromtimestamp(int(now), dt.timezone.utc)
        next_update = this_update + dt.timedelta(hours=ca.crl_validity_hours)
        if progress is not None:
            progress("signing", len(revoked), len(revoked))
        crl = await ca.backend.sign_crl(entries, number, this_update, next_update)
        await self.ledger.crl_store(ca_name, number, this_update.timestamp(), next_update.timestamp(),
                                    crl.public_bytes(serialization.Encoding.DER))
        return crl

    async def publish_crl(self, ca_name: str, *, by: Actor = None,
                          progress: Callable[[str, int, int], None] | None = None) -> x509.CertificateRevocationList:
        """Sign and publish a new CRL now (an operator's "force publish"), audited."""
        if ca_name not in self.cas:
            raise NotFoundError(f"no CA named {ca_name!r}")
        crl = await self.crl_for_ca(ca_name, force=True, progress=progress)
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

    async def create_credentials(self, profile_name: str, devices: Sequence[str], *, ttl_seconds: int = 7 * 86400,
                                 uses: int = 1, bind: str = "serialNumber",
                                 by: Actor = None) -> list[tuple[CredentialRecord, str]]:
        """Fresh one-time (or ``uses``-times) enrollment credentials, one per device name, bound
        to a profile and to the subject attribute ``bind`` (serialNumber or CN) equal to the
        device name; stored by digest only. Returns each record with its secret, the only time
        the secret exists outside the device (HTTP Basic user = record id, password = secret)."""
        self.profile(profile_name)
        if bind not in CREDENTIAL_BINDINGS:
            raise CAError(f"bind must be one of {', '.join(CREDENTIAL_BINDINGS)}")
        if not 1 <= ttl_seconds <= 366 * 86400:
            raise CAError("a credential lives between 1 second and 366 days")
        if not 1 <= uses <= 1000:
            raise CAError("a credential allows between 1 and 1000 uses")
        if not 1 <= len(devices) <= 10000:
            raise CAError("name between 1 and 10000 devices")
        if len(set(devices)) != len(devices):
            raise CAError("a device is named twice")
        for device in devices:
            if not device or len(device) > 200 or device != device.strip() \
                    or any(ord(ch) < 32 or ord(ch) == 127 for ch in device):
                raise CAError(f"{device[:40]!r} is not a device name (1-200 printable characters)")
        now, who = time.time(), _describe(_actor(by))
        out: list[tuple[CredentialRecord, str]] = []
        rows: list[dict[str, Any]] = []
        for device in devices:
            user, secret = "c" + new_challenge(15), new_challenge(24)
            rec = CredentialRecord(id=user, profile=profile_name, bind=bind, device=device, uses=uses, uses_left=uses,
                                   created_at=now, expires_at=now + ttl_seconds, created_by=who)
            rows.append(dict(vars(rec), digest=credential_digest(user, secret)))
            out.append((rec, secret))
        await self.ledger.add_credentials(rows)
        await self.audit("credential-new", ok=True, channel=Channel.ADMIN, profile=profile_name, requester=_actor(by),
                         detail={"count": len(out), "ttl": ttl_seconds, "uses": uses, "bind": bind,
                                 "ids": [r.id for r, _ in out][:100]})
        return out

    async def list_credentials(self, profile: str | None = None, *, unused: bool = False) -> list[CredentialRecord]:
        """Enrollment credentials, newest first; ``unused``: only those still usable."""
        return await self.ledger.list_credentials(profile=profile, usable_at=time.time() if unused else None)

    async def revoke_credential(self, cred_id: str, *, by: Actor = None) -> CredentialRecord:
        """Revoke an enrollment credential: it authenticates nothing from now on."""
        rec = await self.ledger.get_credential(cred_id)
        if rec is None:
            raise NotFoundError(f"no credential {cred_id!r}")
        if not await self.ledger.revoke_credential(cred_id, time.time()):
            raise CAError(f"credential {cred_id} is already revoked")
        await self.audit("credential-revoke", ok=True, channel=Channel.ADMIN, profile=rec.profile,
                         requester=_actor(by), detail={"id": cred_id, "bound_to": rec.device})
        return (await self.ledger.get_credential(cred_id)) or rec

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
