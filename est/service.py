"""EST rules (RFC 7030 §3-4, RFC 8951): labels to profiles, authentication, re-enrollment
checks, pending answers, and the order of the steps of every operation. The steps with a module
of their own: PoP linking (est/pop.py), what /csrattrs advertises (est/csrattrs.py), the key
mechanics of /serverkeygen (est/serverkeygen.py).

Input is already-extracted request facts (:class:`TlsInfo`, :class:`Credentials`, body bytes);
output is an :class:`EstResponse` or an :class:`~est.errors.EstError`. No aiohttp here: only
``est/http.py`` speaks HTTP (docs/ARCHITECTURE.md, conventions 4-5).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.api import (
    AuthMethod,
    CertificatePolicy,
    Channel,
    Claims,
    EnrollRequest,
    IssueRequest,
    Issued,
    Pending,
    Rejected,
    Requester,
)
from ca.errors import CAError, RejectReason
from est import asn1, quirks, serverkeygen, wire
from est.csrattrs import csrattrs_items
from est.pop import check_pop
from est.settings import PASSWORD_METHODS, EstSettings, LabelRule
from est.errors import (
    BadRequest,
    EstError,
    Forbidden,
    NotFound,
    NotImplementedOperation,
    Unauthorized,
    UnsupportedMediaType,
    from_ca_error,
    from_reject,
)

# --- request facts (filled in by http.py) ---------------------------------------------------


@dataclass(frozen=True)
class TlsInfo:
    """What the TLS layer knows about the connection (RFC 7030 §3.3, §3.5)."""

    version: str | None = None  # "TLSv1.2", "TLSv1.3"
    peer_certificate: x509.Certificate | None = None  # verified by the handshake (CERT_OPTIONAL)
    tls_unique: bytes | None = None  # RFC 5929 §3, TLS <= 1.2 only
    tls_exporter: bytes | None = None  # RFC 9266, when the TLS stack can export it
    remote: str | None = None
    # The client's TLS session ended at a trusted TLS-terminating proxy ([server] trusted_proxies);
    # peer_certificate is the one it forwarded, and no channel binding of that session is known here.
    via_proxy: bool = False


@dataclass(frozen=True)
class Credentials:
    """HTTP Basic credentials (RFC 7617) as sent; ``malformed`` for an unparsable header."""

    user: str
    password: str = field(repr=False)
    malformed: bool = False


@dataclass(frozen=True)
class EstResponse:
    """An answer for http.py to send as is: status, exact headers, body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


# --- the issuer surface EST uses (ca/issuer.py) -----------------------------------------------


class IssuerLike(Protocol):
    """The part of :class:`ca.issuer.Issuer` EST calls."""

    def profile(self, name: str) -> Any: ...
    async def ca_chain(self, profile_name: str) -> Any: ...
    async def issue(self, request: IssueRequest) -> Any: ...
    async def enroll(self, request: EnrollRequest) -> Any: ...
    async def verify_password(self, user: str, password: str) -> bool: ...
    async def authenticate(self, claims: Claims, profile_name: str, channel: Channel) -> Requester: ...
    async def audit(self, event: str, *, ok: bool, channel: Channel, profile: str | None,
                    requester: Requester | None, reason: str = "", csr_sha256: str | None = None,
                    serial: int | None = None, detail: dict[str, Any] | None = None,
                    remote: str | None = None) -> None: ...


# --- the service ------------------------------------------------------------------------------


def _text(status: int, text: str, headers: Mapping[str, str] | None = None) -> EstResponse:
    return EstResponse(status, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})},
                       (text.rstrip("\n") + "\n").encode())


def cmc_answer(status: int, der: bytes, headers: Mapping[str, str]) -> EstResponse:
    """A Full PKI Response (RFC 7030 §4.3.2): base64 ``application/pkcs7-mime;
    smime-type=CMC-response``, also for refusals (4xx/5xx with the CMC failure as body)."""
    return EstResponse(status, {"Content-Type": wire.CT_CMC_RESPONSE, "Content-Transfer-Encoding": "base64",
                                **headers}, wire.encode_base64(der, line_length=64))


def _issued_certs(outcome: Issued, rule: LabelRule) -> list[x509.Certificate]:
    """The issued certificate, then its chain when the label says ``include_chain``."""
    certs = [outcome.certificate]
    if rule.include_chain:
        certs += [c for c in outcome.chain if c != outcome.certificate]
    return certs


def _san_bytes(exts: x509.Extensions) -> bytes | None:
    try:
        ext = exts.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    return bytes(ext.value.public_bytes())


class EstService:
    """All EST decisions for one process; one instance shared by every request."""

    def __init__(self, settings: EstSettings, issuer: IssuerLike) -> None:
        self.settings = settings
        self.issuer = issuer

    # --- routing facts ------------------------------------------------------------------
    def rule(self, label: str) -> LabelRule:
        """The rule for a label ("" = no label); unknown labels are 404 (RFC 7030 §3.2.2)."""
        rule = self.settings.rules.get(label)
        if rule is None:
            if label:
                raise NotFound(f"unknown EST label {label!r}")
            raise NotFound("no default EST profile: use /.well-known/est/<label>/<operation>")
        return rule

    def client_quirks(self, user_agent: str | None, key_types: Sequence[str] = ()) -> quirks.ClientQuirks:
        """How an answer to this client must look (est/quirks.py); an explicit ``[est]
        base64_line_length`` fixes the base64 layout for every client."""
        return quirks.for_client(user_agent, key_types, self.settings.line_length)

    def _encode(self, der: bytes, user_agent: str | None = None) -> bytes:
        """Base64 of a response body in the client's layout (RFC 8951 §3.1)."""
        return self.client_quirks(user_agent).framing.encode(der)

    # --- anonymous operations -----------------------------------------------------------
    async def cacerts(self, label: str, user_agent: str | None = None) -> EstResponse:
        """/cacerts (RFC 7030 §4.1.3): the issuing CA up to the trust anchor plus the
        rollover certificates while a CA key rollover is configured."""
        rule = self.rule(label)
        try:
            chain = await self.issuer.ca_chain(rule.profile)
        except CAError as exc:
            raise from_ca_error(exc, realm=self.settings.realm) from None
        certs: list[x509.Certificate] = []
        upcoming = (chain.next_issuer,) if chain.next_issuer is not None else ()
        for cert in (*chain.chain, *chain.rollover, *upcoming):  # the next CA too (RFC 7030 §4.1.3)
            if cert not in certs:
                certs.append(cert)
        if not certs:
            certs = [chain.issuer]
        return EstResponse(200, {"Content-Type": wire.CT_CACERTS, "Content-Transfer-Encoding": "base64"},
                           self._encode(wire.encode_certs_only(certs), user_agent))

    async def csrattrs(self, label: str, user_agent: str | None = None) -> EstResponse:
        """/csrattrs (RFC 7030 §4.5): 204 when there is nothing to ask for."""
        rule = self.rule(label)
        items = csrattrs_items(rule, lambda name: self.issuer.profile(name))  # looked up only for "auto"
        if not items:
            return EstResponse(204, {}, b"")
        return EstResponse(200, {"Content-Type": wire.CT_CSRATTRS, "Content-Transfer-Encoding": "base64"},
                           self._encode(asn1.encode_csrattrs(items), user_agent))

    async def fullcmc(self, label: str, body: bytes, tls: TlsInfo, creds: Credentials | None,
                      user_agent: str | None = None, *, content_type: str | None = None) -> EstResponse:
        """/fullcmc (RFC 7030 §4.3, RFC 5272): one PKCS#10 TaggedRequest in a PKIData, enrolled
        like /simpleenroll (same label authentication, PoP, profile, audit, one core unit of
        work); the CMC transactionId, scoped to the requester, makes the request idempotent and
        pollable. Refusals after authentication are CMC failures with the HTTP status of the
        core's reason (RFC 7030 §4.3.2); an HTTP 401 before parsing stays text/plain."""
        from est import cmc

        rule = self.rule(label)
        try:
            media, params = wire.parse_media_type(content_type or "")
            if media != "application/pkcs7-mime" or params.get("smime-type", "CMC-request").lower() != "cmc-request":
                raise UnsupportedMediaType("fullcmc takes Content-Type application/pkcs7-mime; "
                                           "smime-type=CMC-request (RFC 7030 §4.3.1)")
            self.precheck(rule, tls, creds)
        except EstError as err:
            await self._refuse("est-fullcmc", rule, err, None, None, tls.remote)
            raise
        req: cmc.CmcRequest | None = None
        csr = None
        try:
            try:
                req = cmc.parse_request(wire.decode_base64_body(body))
                csr = wire.parse_csr(req.csr_der)
            except EstError as err:
                raise cmc.CmcError(err.detail, body_part=req.body_part_id if req else 0) from None
            if req.signer is not None and req.signer != tls.peer_certificate:
                raise cmc.CmcError("the PKIData is signed by a certificate other than the TLS client certificate",
                                   fail_info=cmc.FailInfo.BAD_IDENTITY, body_part=req.body_part_id)
            cert_required = all(AuthMethod.TLS_CLIENT_CERT in e for e in rule.auth)
            try:
                check_pop(rule.pop, csr, tls, tls.peer_certificate if cert_required else None)
            except EstError as err:
                raise cmc.CmcError(err.detail, fail_info=cmc.FailInfo.POP_FAILED, body_part=req.body_part_id) from None
        except cmc.CmcError as err:
            await self._refuse("est-fullcmc", rule, BadRequest(err.detail), None, csr, tls.remote)
            return cmc_answer(400, cmc.failure_response(err, req), {})
        assert req is not None and csr is not None
        tid = None if req.transaction_id is None else cmc.scoped_transaction_id(
            req.transaction_id, creds.user if creds is not None and not creds.malformed else None, tls.peer_certificate)
        try:
            outcome = await self.issuer.enroll(EnrollRequest(csr, rule.profile, Channel.EST,
                                                             self.claims(rule, tls, creds), transaction_id=tid))
        except CAError as exc:
            outcome = Rejected(exc.reason, exc.detail, getattr(exc, "retry_after", None))
        tx, nonce = req.transaction_id, req.sender_nonce
        if isinstance(outcome, Issued):
            certs = _issued_certs(outcome, rule)
            return cmc_answer(200, cmc.build_response(cmc.Status.SUCCESS, req.body_part_id, certificates=certs,
                                                      transaction_id=tx, recipient_nonce=nonce), {})
        if isinstance(outcome, Pending):
            wait = max(1, int(outcome.retry_after))
            return cmc_answer(200, cmc.build_response(
                cmc.Status.PENDING, req.body_part_id, pend_token=str(outcome.request_id).encode(),
                pend_time=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=wait),
                status_string="pending approval: re-send the same request (same transactionId and key) later",
                transaction_id=tx, recipient_nonce=nonce), {"Retry-After": str(wait)})
        if isinstance(outcome, Rejected):
            refusal = self._refusal(outcome.reason, outcome.detail, outcome.retry_after)
            return cmc_answer(refusal.status, cmc.build_response(
                cmc.Status.FAILED, req.body_part_id, fail_info=cmc.fail_info_for(outcome.reason),
                status_string=refusal.detail, transaction_id=tx, recipient_nonce=nonce), refusal.headers)
        raise EstError("unexpected issuance outcome", status=500)

    # --- authentication (RFC 7030 §3.2.3, §3.3.2) -----------------------------------------
    async def authenticate(self, rule: LabelRule, tls: TlsInfo, creds: Credentials | None) -> Requester:
        """The requester the label's methods prove (RFC 7030 §3.2.3, §3.3.2), verified by the core
        (:meth:`ca.issuer.Issuer.authenticate`), for operations that issue afterwards."""
        self.precheck(rule, tls, creds)
        try:
            return await self.issuer.authenticate(self.claims(rule, tls, creds), rule.profile, Channel.EST)
        except CAError as exc:
            raise self._refusal(exc.reason, exc.detail, getattr(exc, "retry_after", None)) from None

    def precheck(self, rule: LabelRule, tls: TlsInfo, creds: Credentials | None) -> None:
        """401 / 403 for a request that offers nothing the label could accept, before the CSR
        is parsed and without touching the ledger (RFC 7030 §3.2.3, §3.3.2)."""
        if (creds is not None and not creds.malformed) or tls.peer_certificate is not None:
            return
        if any(e & PASSWORD_METHODS for e in rule.auth):
            raise Unauthorized("HTTP Basic authentication required", realm=self.settings.realm)
        raise Forbidden("a TLS client certificate is required for this label (RFC 7030 §3.3.2)")

    def claims(self, rule: LabelRule, tls: TlsInfo, creds: Credentials | None) -> Claims:
        """What this request offers, for the core to verify against the label's methods."""
        usable = creds is not None and not creds.malformed
        return Claims(
            accept=rule.auth,
            user=creds.user if usable and creds is not None else None,
            password=creds.password if usable and creds is not None else None,
            certificate=tls.peer_certificate if rule.client_trust else None,
            policy=self.certificate_policy(rule) if rule.client_trust else None,
            remote=tls.remote, identity=creds.user if usable and creds is not None else None, namespace="est")

    @staticmethod
    def certificate_policy(rule: LabelRule) -> CertificatePolicy:
        """The typed policy the core applies to this label's client certificates."""
        return CertificatePolicy(rule.client_trust, rule.client_profiles or (rule.profile,), rule.bind_identity)

    # --- request media type (RFC 7030 §4.2.1, §4.4.1) ----------------------------------------
    async def check_content_type(self, label: str, op: str, content_type: str | None,
                                 remote: str | None = None) -> None:
        """A CSR is ``application/pkcs10`` (parameters allowed); anything else is 415, audited."""
        if wire.is_pkcs10(content_type):
            return
        media = (content_type or "").split(";", 1)[0].strip().lower()
        err = UnsupportedMediaType(f"{op} takes Content-Type application/pkcs10 (RFC 7030 §4.2.1), "
                                   f"not {media or 'none'!r}"[:200])
        await self._refuse(f"est-{op.removeprefix('simple')}", self.rule(label), err,
                           Requester(AuthMethod.NONE, "unauthenticated", None, remote), None)
        raise err

    # --- enrollment ---------------------------------------------------------------------
    def _csr(self, body: bytes, *, verify: bool = True) -> x509.CertificateSigningRequest:
        csr = wire.parse_csr(wire.decode_base64_body(body))
        if verify and not wire.csr_signature_valid(csr):
            raise BadRequest("the CSR signature does not verify (RFC 2986 proof of possession)")
        return csr

    def _outcome(self, outcome: Any, rule: LabelRule, user_agent: str | None = None) -> EstResponse:
        if isinstance(outcome, Issued):
            return EstResponse(200, {"Content-Type": wire.CT_CERTS_ONLY, "Content-Transfer-Encoding": "base64"},
                               self._encode(wire.encode_certs_only(_issued_certs(outcome, rule)), user_agent))
        if isinstance(outcome, Pending):
            return _text(202, f"request {outcome.request_id} is pending approval; "
                              f"re-send the same CSR after {outcome.retry_after} seconds",
                         {"Retry-After": str(max(1, int(outcome.retry_after)))})
        if isinstance(outcome, Rejected):
            raise self._refusal(outcome.reason, outcome.detail, outcome.retry_after)
        raise EstError("unexpected issuance outcome", status=500)

    def _refusal(self, reason: RejectReason, detail: str, retry_after: int | None) -> EstError:
        """The EST answer for a core refusal: 429 + Retry-After when throttled, 401 with
        WWW-Authenticate when unauthenticated (RFC 7030 §3.2.3), else by reason."""
        if reason is RejectReason.THROTTLED:
            return EstError(detail, status=429, headers={"Retry-After": str(max(1, retry_after or 1))})
        if reason is RejectReason.UNAUTHENTICATED:
            detail = detail.replace("password authentication", "HTTP Basic authentication")
        return from_reject(reason, detail, realm=self.settings.realm)

    async def _refuse(self, event: str, rule: LabelRule, err: EstError, requester: Requester | None,
                      csr: x509.CertificateSigningRequest | None, remote: str | None = None) -> None:
        sha = hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest() if csr else None
        await self.issuer.audit(event, ok=False, channel=Channel.EST, profile=rule.profile,
                                requester=requester, reason=f"{err.status}: {err.detail}", csr_sha256=sha,
                                remote=remote)

    async def simpleenroll(self, label: str, body: bytes, tls: TlsInfo,
                           creds: Credentials | None, user_agent: str | None = None) -> EstResponse:
        """/simpleenroll (RFC 7030 §4.2.1): the core authenticates the label's methods and issues
        in one unit of work (:meth:`ca.issuer.Issuer.enroll`)."""
        rule = self.rule(label)
        csr = None
        try:
            self.precheck(rule, tls, creds)
            csr = self._csr(body, verify=False)  # the core verifies the signature, once
            cert_required = all(AuthMethod.TLS_CLIENT_CERT in e for e in rule.auth)
            check_pop(rule.pop, csr, tls, tls.peer_certificate if cert_required else None)
        except EstError as err:
            await self._refuse("est-enroll", rule, err, None, csr, tls.remote)
            raise
        outcome = await self.issuer.enroll(EnrollRequest(csr, rule.profile, Channel.EST, self.claims(rule, tls, creds)))
        return self._outcome(outcome, rule, user_agent)

    async def simplereenroll(self, label: str, body: bytes, tls: TlsInfo,
                             creds: Credentials | None, user_agent: str | None = None) -> EstResponse:
        """/simplereenroll (RFC 7030 §4.2.2): the TLS client certificate must be one we issued,
        not revoked, held or retired, for this profile (the core's lifecycle rule); the CSR
        repeats its subject and SAN."""
        rule = self.rule(label)
        cert = tls.peer_certificate
        csr = None
        try:
            if not rule.reenroll:
                raise Forbidden("re-enrollment is disabled for this label")
            if cert is None:
                raise Forbidden("re-enrollment requires the TLS client certificate being renewed "
                                "(RFC 7030 §4.2.2)")
            csr = self._csr(body, verify=False)
            self.check_names(rule, csr, cert)
            check_pop(rule.pop, csr, tls, cert)
        except EstError as err:
            requester = Requester(AuthMethod.NONE, cert.subject.rfc4514_string(), cert, tls.remote) if cert else None
            await self._refuse("est-reenroll", rule, err, requester, csr, tls.remote)
            raise
        claims = Claims(accept=(frozenset({AuthMethod.TLS_CLIENT_CERT}),), certificate=cert, remote=tls.remote)
        outcome = await self.issuer.enroll(EnrollRequest(csr, rule.profile, Channel.EST, claims, renewal_of=cert))
        return self._outcome(outcome, rule, user_agent)

    def check_names(self, rule: LabelRule, csr: x509.CertificateSigningRequest,
                    cert: x509.Certificate) -> None:
        """RFC 7030 §4.2.2: Subject and SubjectAltName identical to the certificate being
        renewed (byte-equal DER), unless a ChangeSubjectName attribute (RFC 6402 §2.10) names the
        current ones and the label allows renaming."""
        change = asn1.csr_attribute_der(csr, asn1.Oid.CHANGE_SUBJECT_NAME)
        cert_san = _san_bytes(cert.extensions)
        try:
            csr_san = _san_bytes(csr.extensions)
        except ValueError:
            raise BadRequest("the CSR's extension request does not parse") from None
        if change is not None:
            if not rule.allow_change_subject_name:
                raise Forbidden("ChangeSubjectName is not allowed for this label")
            try:
                old_subject, old_alt = asn1.change_subject_name(change)
            except ValueError:
                raise BadRequest("ChangeSubjectName does not parse") from None
            if old_subject is not None and old_subject != cert.subject.public_bytes():
                raise Forbidden("ChangeSubjectName.subject is not the current certificate's subject")
            if old_alt is not None and cert_san is not None and old_alt != cert_san:
                raise Forbidden("ChangeSubjectName.subjectAlt is not the current certificate's SAN")
            return
        if csr.subject.public_bytes() != cert.subject.public_bytes():
            raise Forbidden("re-enrollment must repeat the subject of the certificate being renewed "
                            "(RFC 7030 §4.2.2)")
        if csr_san != cert_san:
            raise Forbidden("re-enrollment must repeat the subjectAltName of the certificate being renewed "
                            "(RFC 7030 §4.2.2)")

    # --- server-side key generation (RFC 7030 §4.4) ---------------------------------------
    async def serverkeygen(self, label: str, body: bytes, tls: TlsInfo,
                           creds: Credentials | None, user_agent: str | None = None) -> EstResponse:
        """/serverkeygen: the server makes the key per profile, has it certified, returns key
        then certificate, and keeps nothing (RFC 7030 §4.4.2)."""
        rule = self.rule(label)
        requester: Requester | None = None
        csr = None
        try:
            if not rule.serverkeygen:
                raise NotImplementedOperation("/serverkeygen is not enabled for this label")
            requester = await self.authenticate(rule, tls, creds)
            csr = self._csr(body)
            check_pop(rule.pop, csr, tls, requester.certificate)
            recipient = serverkeygen.recipient(rule, self.settings, csr, tls)
        except EstError as err:
            await self._refuse("est-serverkeygen", rule, err, requester, csr)
            raise
        from ca.profile import generate_key

        profile = self.issuer.profile(rule.profile)
        client = self.client_quirks(user_agent, profile.key_types)
        if client.serverkeygen_key_type is not None:  # quirk ok/libest-serverkeygen-rsa-key
            profile = replace(profile, key_types=(client.serverkeygen_key_type,))
        key = generate_key(profile)
        try:
            outcome = await self.issuer.issue(
                IssueRequest(serverkeygen.rebuild_csr(csr, key), rule.profile, requester, Channel.EST))
            if not isinstance(outcome, Issued):
                if isinstance(outcome, Pending):
                    # The key is dropped here; a later poll would get a different key. Profiles
                    # with manual approval are refused at config time for this reason.
                    raise Forbidden("serverkeygen cannot wait for approval")
                return self._outcome(outcome, rule, user_agent)
            ctype, payload = serverkeygen.answer(key, _issued_certs(outcome, rule), recipient, self.settings,
                                                 client.framing)
            return EstResponse(200, {"Content-Type": ctype}, payload)
        finally:
            del key  # the server keeps no copy (RFC 7030 §4.4.2)
