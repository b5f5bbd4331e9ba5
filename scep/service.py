"""SCEP rules: operation dispatch, authorization, renewal, polling, idempotence (RFC 8894 §3, §4).

No aiohttp here: ``scep/http.py`` turns HTTP into calls of :class:`ScepService` and its results
(bytes plus a content type) back into responses. Every PKIOperation that parses gets a signed
CertRep, whatever goes wrong afterwards (RFC 8894 §3.3.2); only undecodable input raises
:class:`ScepDecodeError` (HTTP 400).

Authorization is per profile and fails closed (docs/ARCHITECTURE.md, "Authentication"):

* a request signed by a valid, unrevoked, unretired certificate that *we* issued under the same
  profile is a renewal, whatever its messageType (RFC 8894 §2.3, §3.3.1.2), inside the profile's
  renewal window; the CSR must keep the subject;
* otherwise the CSR's challengePassword must match the static challenge (scrypt, constant time),
  or consume a one-time challenge, or a webhook must answer an explicit ``{"allow": true}``;
* a self-signed signer proves possession of its key and nothing else: never authentication.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.api import AuthMethod, Channel, Claims, EnrollRequest, Issued, Pending, Rejected, Requester
from ca.errors import CAError, NotFoundError, RejectReason
from ca.issuer import Issuer
from scep import cms
from scep.answers import (
    CT_CA_CERT,
    CT_CA_RA_CERT,
    CT_NEXT_CA_CERT,
    CT_PKI_MESSAGE,
    Reply,
    fail_info_for,
    public_text,
)
from scep.asn1 import Capability, FailInfo, MessageType, PkiStatus
from scep.errors import (
    BadCertIdError,
    BadRequestError,
    MessageCheckError,
    ScepDecodeError,
    ScepError,
)
from scep.message import (
    CertRep,
    IssuerAndSerial,
    IssuerAndSubject,
    PkiMessage,
    challenge_password,
    decode_csr,
)
from scep.ra import RA
from scep.settings import ScepGlobal, ScepProfile

log = logging.getLogger("enroll.scep")

#: Message types that may reach a handler; everything else (UpdateReq 18!) is badRequest.
ALLOWED_TYPES = frozenset(
    {MessageType.PKCS_REQ, MessageType.RENEWAL_REQ, MessageType.CERT_POLL, MessageType.GET_CERT, MessageType.GET_CRL}
)

#: ``[profiles.NAME.scep] auth`` methods the core verifies (the webhook is a Claims voucher).

#: POSTs the JSON body to ``url`` and returns True only on an explicit allow (scep/http.py).
Webhook = Callable[[str, Mapping[str, Any], float, str | None], Awaitable[bool]]


class UnknownProfile(Exception):
    """No SCEP profile of that name (HTTP 404)."""


def _san_der(exts: x509.Extensions) -> bytes | None:
    """The subjectAltName extension value as DER, None when absent."""
    try:
        ext = exts.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    return bytes(ext.value.public_bytes())


def _spki_sha256(key: Any) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ScepService:
    """SCEP over one :class:`ca.issuer.Issuer`."""

    def __init__(
        self,
        issuer: Issuer,
        settings: ScepGlobal,
        profiles: Mapping[str, ScepProfile],
        ras: Mapping[str, RA],
        *,
        webhook: Webhook | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        self.issuer = issuer
        self.settings = settings
        self.profiles = dict(profiles)
        self.ras = dict(ras)  # by CA name
        self.webhook = webhook
        self.secrets = dict(secrets or {})  # webhook tokens by profile

    # --- lookups -------------------------------------------------------------------------------
    def profile(self, name: str | None) -> ScepProfile:
        """The SCEP profile for a path segment (None: ``[scep].default_profile``)."""
        name = name or self.settings.default_profile
        if name is None or name not in self.profiles:
            raise UnknownProfile(name or "")
        return self.profiles[name]

    def ra(self, profile: ScepProfile) -> RA:
        """The RA of the CA that the profile issues from."""
        return self.ras[self.issuer.profile(profile.name).ca]

    # --- GetCACaps (RFC 8894 §3.5.2) -------------------------------------------------------------
    async def capabilities(self, profile: ScepProfile) -> list[str]:
        """Only what is implemented and allowed for this profile."""
        caps = [Capability.AES, Capability.POST_PKI_OPERATION]
        if profile.renewal:
            caps.append(Capability.RENEWAL)
        caps += [Capability.SHA_256, Capability.SHA_384, Capability.SHA_512]
        if profile.allow_legacy:
            caps += [Capability.DES3, Capability.SHA_1]
        chain = await self.issuer.ca_chain(profile.name)
        if chain.next_issuer is not None:
            caps.append(Capability.GET_NEXT_CA_CERT)
        caps.append(Capability.SCEP_STANDARD)
        return [c.value for c in caps]

    # --- GetCACert / GetNextCACert (RFC 8894 §4.2, §4.7) --------------------------------------
    async def ca_certificates(self, profile: ScepProfile) -> Reply:
        """Single DER when the CA is its own RA; else RA certificate(s) first, then the chain."""
        ra = self.ra(profile)
        chain = await self.issuer.ca_chain(profile.name)
        if ra.is_ca and not ra.extra and ra.enc_cert is None:
            return Reply(chain.issuer.public_bytes(serialization.Encoding.DER), CT_CA_CERT)
        certs: list[x509.Certificate] = ra.published()
        for c in chain.chain:
            if c not in certs:
                certs.append(c)
        return Reply(cms.certs_only(certs), CT_CA_RA_CERT)

    async def next_ca_certificates(self, profile: ScepProfile) -> Reply | None:
        """The rollover CA certificate, signed by the RA (RFC 8894 §4.7); None without rollover."""
        chain = await self.issuer.ca_chain(profile.name)
        if chain.next_issuer is None:
            return None
        ra = self.ra(profile)
        certs = [chain.next_issuer, *chain.rollover]
        body = cms.sign_signed_data(cms.certs_only(certs), [], ra.cert, ra.key.sign, "sha256")
        return Reply(body, CT_NEXT_CA_CERT)

    # --- PKIOperation -----------------------------------------------------------------------------
    async def pki_operation(self, profile: ScepProfile, der: bytes, remote: str | None = None) -> Reply:
        """Answer one pkiMessage with a signed CertRep (raises ScepDecodeError only if unparsable)."""
        msg = PkiMessage.parse(der)  # ScepDecodeError -> HTTP 400
        ra = self.ra(profile)
        digest = msg.digest if msg.digest in profile.digests else "sha256"
        try:
            rep = await self._dispatch(profile, ra, msg, remote)
        except ScepError as exc:
            await self._audit_failure(profile, msg, remote, exc.fail_info, exc.detail)
            rep = self._failure(msg, exc.fail_info, exc.public_text)
        except CAError as exc:
            fail_info = fail_info_for(exc.reason)
            await self._audit_failure(profile, msg, remote, fail_info, exc.detail)
            rep = self._failure(msg, fail_info, public_text(exc.reason))
        except Exception:  # noqa: BLE001  (a parsed message always gets a CertRep)
            log.exception("SCEP PKIOperation failed")
            rep = self._failure(msg, FailInfo.BAD_REQUEST, "internal error")
        body = rep.build(signer_cert=ra.cert, sign=ra.key.sign, digest=digest,
                         certificates=await self._signer_chain(profile, ra))
        return Reply(body, CT_PKI_MESSAGE)

    async def _signer_chain(self, profile: ScepProfile, ra: RA) -> list[x509.Certificate]:
        """The CertRep signer and its chain, so that verifiers that trust only the root succeed."""
        certs = [ra.cert, *ra.extra]
        if not ra.is_ca:
            for c in (await self.issuer.ca_chain(profile.name)).chain:
                if c not in certs and c.subject != c.issuer:
                    certs.append(c)
        return certs

    @staticmethod
    def _failure(msg: PkiMessage, fail_info: FailInfo, text: str) -> CertRep:
        return CertRep(
            status=PkiStatus.FAILURE,
            transaction_id=msg.transaction_id,
            recipient_nonce=msg.sender_nonce,
            fail_info=fail_info,
            fail_info_text=text[:200],
        )

    async def _audit_failure(
        self, profile: ScepProfile, msg: PkiMessage, remote: str | None, fail_info: FailInfo, detail: str
    ) -> None:
        await self.issuer.audit(
            "scep-pkioperation",
            ok=False,
            channel=Channel.SCEP,
            profile=profile.name,
            requester=Requester(AuthMethod.NONE, _principal(msg.signer), msg.signer, remote),
            reason=f"{fail_info.name}: {detail}",
            detail={"transaction_id": msg.transaction_id, "message_type": msg.message_type},
        )

    async def _dispatch(self, profile: ScepProfile, ra: RA, msg: PkiMessage, remote: str | None) -> CertRep:
        if msg.message_type not in ALLOWED_TYPES:
            raise BadRequestError(f"messageType {msg.message_type} not supported", public_text="unsupported messageType")
        msg.verify(allowed_digests=profile.digests)  # MessageCheckError / BadAlgError
        signer = msg.signer
        assert signer is not None  # verify() refuses a message without one
        opened = self._open(profile, ra, msg)
        mtype = MessageType(msg.message_type)
        if mtype in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
            return await self._enroll(profile, msg, signer, opened, remote)
        if mtype is MessageType.CERT_POLL:
            return await self._poll(profile, msg, signer, opened, remote)
        if mtype is MessageType.GET_CERT:
            return await self._get_cert(profile, msg, signer, opened)
        return await self._get_crl(profile, msg, signer, opened)

    @staticmethod
    def _open(profile: ScepProfile, ra: RA, msg: PkiMessage) -> cms.Decrypted:
        """Decrypt with the encryption RA's key when the request is addressed to that certificate
        (NDES layout), else with the signing RA's (RFC 8894 §2.1.2: the RA may have two keys)."""
        if ra.enc_cert is not None and ra.enc_key is not None and msg.addressed_to(ra.enc_cert):
            return msg.open(ra.enc_key.decrypt, [ra.enc_cert], profile.ciphers)
        return msg.open(ra.key.decrypt, [ra.cert], profile.ciphers)

    # --- PKCSReq / RenewalReq (RFC 8894 §3.3.1) ---------------------------------------------------
    async def _enroll(
        self, profile: ScepProfile, msg: PkiMessage, signer: x509.Certificate, opened: cms.Decrypted,
        remote: str | None,
    ) -> CertRep:
        """PKCSReq / RenewalReq: the core authenticates (challenge, one-time challenge, webhook, or
        the renewing certificate by the lifecycle rule) and issues in one unit of work."""
        csr = decode_csr(opened.plaintext)
        renewal_of = await self._renewal_signer(profile, signer, csr)
        if renewal_of is None:
            if msg.message_type == MessageType.RENEWAL_REQ:
                raise BadRequestError("RenewalReq not signed by a valid certificate we issued",
                                      public_text="renewal requires a valid certificate issued by this CA")
            if _spki_sha256(signer.public_key()) != _spki_sha256(csr.public_key()):
                # RFC 8894 §2.3: without a certificate of ours, the request is signed with the
                # key being certified (a self-signed certificate over the CSR's key).
                raise MessageCheckError("PKCSReq signer key is not the CSR's key and the signer is not "
                                        "a certificate this CA issued")
        # A renewal is its own transaction even when the client keeps its transactionID (scepclient
        # and certmonger derive it from the unchanged key): scope it by the certificate renewed, so
        # a retransmitted renewal is still idempotent but never returns the old certificate.
        txid = msg.transaction_id if renewal_of is None else (
            f"{msg.transaction_id}#renew-{renewal_of.serial_number:x}")
        outcome = await self.issuer.enroll(EnrollRequest(
            csr=csr, profile=profile.name, channel=Channel.SCEP, claims=self._claims(profile, msg, csr, remote,
                                                                                     renewal_of),
            transaction_id=txid, renewal_of=renewal_of, nonce=(f"scep:{profile.name}", msg.sender_nonce)))
        if renewal_of is not None and isinstance(outcome, Rejected) and \
                outcome.reason is RejectReason.NOT_AUTHORIZED:
            return self._failure(msg, FailInfo.BAD_REQUEST, "renewal not allowed for this certificate now")
        return self._outcome(profile, msg, signer, opened, outcome)

    def _claims(self, profile: ScepProfile, msg: PkiMessage, csr: x509.CertificateSigningRequest,
                remote: str | None, renewal_of: x509.Certificate | None) -> Claims:
        """What the request offers: the renewing certificate, or the challengePassword (static,
        one-time) and, last, the webhook's verdict (RFC 8894 §2.2)."""
        if renewal_of is not None:
            return Claims(accept=(frozenset({AuthMethod.RENEWAL_SIGNER}),), certificate=renewal_of, remote=remote)
        accept = tuple(frozenset({a}) for a in profile.auth if a is not AuthMethod.WEBHOOK)
        challenge = challenge_password(csr)
        voucher = None
        if AuthMethod.WEBHOOK in profile.auth and self.webhook is not None and profile.webhook_url:
            url, webhook = profile.webhook_url, self.webhook
            payload = {"profile": profile.name, "transaction_id": msg.transaction_id,
                       "csr": csr.public_bytes(serialization.Encoding.PEM).decode(), "challenge": challenge,
                       "message_type": msg.message_type}
            token = self.secrets.get(profile.name)

            async def vouch() -> Requester | None:
                if await webhook(url, payload, profile.webhook_timeout, token):
                    return Requester(AuthMethod.WEBHOOK, url, None, remote)
                return None

            voucher = vouch
        return Claims(accept=accept, challenge=challenge, voucher=voucher, remote=remote,
                      identity=csr.subject.rfc4514_string(), namespace=f"scep:{profile.name}")

    async def _renewal_signer(
        self, profile: ScepProfile, signer: x509.Certificate, csr: x509.CertificateSigningRequest
    ) -> x509.Certificate | None:
        """The certificate being renewed: the signer, when one of our CAs signed it and it is in
        its validity period (the core then applies the lifecycle rule). No ledger access."""
        if signer.issuer == signer.subject:
            return None  # self-signed: proves possession of its key, nothing else (RFC 8894 §2.3)
        now = dt.datetime.now(dt.timezone.utc)
        if not (signer.not_valid_before_utc <= now <= signer.not_valid_after_utc):
            return None  # expired: authenticates nothing; enrol afresh
        if not await self.issuer.issued_by_us(signer):
            return None
        if not profile.renewal:
            raise BadRequestError("renewal disabled for this profile", public_text="renewal not allowed")
        # Byte-equal subject and subjectAltName, the rule EST reenroll applies (RFC 7030 §4.2.2).
        if csr.subject.public_bytes() != signer.subject.public_bytes():
            raise BadRequestError("renewal changes the subject", public_text="renewal must keep the subject")
        try:
            csr_san = _san_der(csr.extensions)
        except ValueError:
            raise BadRequestError("the CSR's extension request does not parse") from None
        if csr_san != _san_der(signer.extensions):
            raise BadRequestError("renewal changes the subjectAltName",
                                  public_text="renewal must keep the subjectAltName")
        return signer

    def _outcome(
        self, profile: ScepProfile, msg: PkiMessage, signer: x509.Certificate, opened: cms.Decrypted,
        outcome: Issued | Pending | Rejected,
    ) -> CertRep:
        if isinstance(outcome, Issued):
            certs = [outcome.certificate, *(outcome.chain if profile.certrep_chain else ())]
            return self._success(msg, signer, opened, cms.certs_only(certs))
        if isinstance(outcome, Pending):
            return CertRep(status=PkiStatus.PENDING, transaction_id=msg.transaction_id,
                           recipient_nonce=msg.sender_nonce)
        fail_info = fail_info_for(outcome.reason)
        return self._failure(msg, fail_info, public_text(outcome.reason))

    @staticmethod
    def _success(msg: PkiMessage, signer: x509.Certificate, opened: cms.Decrypted, payload: bytes) -> CertRep:
        """Encrypt to the request's signer with the client's own cipher and key transport."""
        envelope = CertRep.success_envelope(payload, signer, opened.cipher, opened.key_transport)
        return CertRep(status=PkiStatus.SUCCESS, transaction_id=msg.transaction_id,
                       recipient_nonce=msg.sender_nonce, envelope=envelope)

    # --- CertPoll (RFC 8894 §3.3.3) ---------------------------------------------------------------
    async def _poll(
        self, profile: ScepProfile, msg: PkiMessage, signer: x509.Certificate, opened: cms.Decrypted,
        remote: str | None,
    ) -> CertRep:
        """CertPoll: correlated by transactionID and signer key (:meth:`ca.issuer.Issuer.poll`)."""
        IssuerAndSubject.from_der(opened.plaintext)  # well-formed; correlation is by transactionID
        outcome = await self.issuer.poll(profile.name, msg.transaction_id, signer, channel=Channel.SCEP, remote=remote)
        if isinstance(outcome, Rejected) and outcome.reason is RejectReason.BAD_CERT_ID:
            return self._failure(msg, FailInfo.BAD_CERT_ID, "unknown transaction")
        if isinstance(outcome, Issued) and outcome.replayed:
            return self._success(msg, signer, opened, cms.certs_only([outcome.certificate]))
        return self._outcome(profile, msg, signer, opened, outcome)

    # --- GetCert / GetCRL (RFC 8894 §3.3.4) -------------------------------------------------------
    async def _ca_named(self, profile: ScepProfile, name: x509.Name) -> str | None:
        """The CA an IssuerAndSerialNumber means by ``name``, or None.

        Each CA's own subject names it. sscep builds the IssuerAndSerialNumber of GetCert and
        GetCRL from the first certificate GetCACert returned, which is our RA (RFC 8894 §4.2
        puts the RA first); serial numbers are random and unique per CA (docs/ARCHITECTURE.md, issuance contract step 5), so
        the subject of the profile's RA certificates or of any certificate in the profile's CA
        chain names the profile's CA.
        """
        der = name.public_bytes()
        for ca_name, ca in self.issuer.cas.items():
            subject = (await ca.backend.ca_chain()).issuer.subject
            if subject.public_bytes() == der or subject == name:
                return ca_name
        ra = self.ra(profile)
        chain = await self.issuer.ca_chain(profile.name)
        for c in (*ra.published(), *chain.chain):
            if c.subject.public_bytes() == der or c.subject == name:
                return self.issuer.profile(profile.name).ca
        return None

    async def _get_cert(
        self, profile: ScepProfile, msg: PkiMessage, signer: x509.Certificate, opened: cms.Decrypted
    ) -> CertRep:
        """GetCert: the certificate named by issuer and serial, for an entitled signer only
        (:meth:`ca.issuer.Issuer.certificate_for`); the issuer may be named by the RA
        (:meth:`_ca_named`). Unknown, not issued, and not entitled all get the same badCertId
        and no certificate."""
        ias = IssuerAndSerial.from_der(opened.plaintext)
        ca_name = await self._ca_named(profile, ias.issuer)
        if ca_name is None:
            raise BadCertIdError(f"GetCert names an issuer we do not know: {ias.issuer.rfc4514_string()}",
                                 public_text="no such certificate")
        try:
            cert = await self.issuer.certificate_for(ca_name, ias.serial, signer)
        except NotFoundError as exc:
            raise BadCertIdError(exc.detail, public_text="no such certificate") from None
        return self._success(msg, signer, opened, cms.certs_only([cert]))

    async def _get_crl(
        self, profile: ScepProfile, msg: PkiMessage, signer: x509.Certificate, opened: cms.Decrypted
    ) -> CertRep:
        """GetCRL: the current CRL of the CA named as issuer (or by its RA, :meth:`_ca_named`).
        A CRL is public (it is also published at the CDP), so the signer needs no entitlement."""
        ias = IssuerAndSerial.from_der(opened.plaintext)
        ca_name = await self._ca_named(profile, ias.issuer)
        if ca_name is None:
            raise BadCertIdError("GetCRL for another issuer", public_text="unknown issuer")
        crl = await self.issuer.crl_for_ca(ca_name)
        return self._success(msg, signer, opened, cms.certs_only([], [crl]))


def _principal(cert: x509.Certificate | None) -> str:
    return cert.subject.rfc4514_string() if cert is not None else "unknown"


__all__ = [
    "ScepDecodeError",
    "ScepService",
    "UnknownProfile",
    "Webhook",
]
