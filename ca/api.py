"""The protocol-neutral surface of the issuance core.

EST and SCEP turn their wire messages into an :class:`IssueRequest`, hand it to
:meth:`ca.issuer.Issuer.issue`, and turn the :data:`Outcome` back into their own answer
(docs/ARCHITECTURE.md, "The issuance contract"). Backends only sign what the core built
(:class:`CertificateTemplate`) and report their CA chain.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ca.errors import RejectReason


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


class Channel(enum.Enum):
    """The protocol a request came in on (audit and metrics only)."""

    EST = "est"
    SCEP = "scep"
    ADMIN = "admin"
    OFFLINE = "offline"  # `enroll issue` (enroll/offline.py): CSRs carried to an operator, no network
    IMPORT = "import"  # `enroll import`: certificates another instance issued, from a verified bundle


class AuthMethod(enum.Enum):
    """How the requester proved who it is."""

    NONE = "none"
    TLS_CLIENT_CERT = "tls-client-cert"  # RFC 7030 §3.3.2
    BASIC = "basic"  # RFC 7030 §3.2.3
    CHALLENGE = "challenge"  # static challengePassword, RFC 8894 §2.2
    ONE_TIME_CHALLENGE = "one-time-challenge"
    #: A per-device credential (``enroll credentials new``) offered as HTTP Basic (RFC 7617),
    #: bound to one profile and one device name, spent with the issuance it authorizes.
    ONE_TIME_CREDENTIAL = "one-time-credential"
    WEBHOOK = "webhook"
    RENEWAL_SIGNER = "renewal-signer"  # SCEP request signed by a certificate we issued
    OPERATOR = "operator"  # an admin approved it


class BindIdentity(enum.Enum):
    """How the names a certificate-authenticated requester asks for must relate to the
    certificate that authenticated it (``bind_identity``; :func:`ca.identity.check_binding`)."""

    NONE = "none"
    SERIAL_NUMBER = "serialNumber"  # same X.520 serialNumber (IDevID -> LDevID)
    SUBJECT = "subject"  # same subject DER, SANs among the certificate's own


@dataclass(frozen=True)
class Requester:
    """The authenticated identity behind a request.

    ``binding`` applies when ``certificate`` is what authenticated the request: the core refuses
    a template whose names the binding does not allow.
    """

    method: AuthMethod
    principal: str  # user name, certificate subject, "challenge", ...
    certificate: x509.Certificate | None = None
    remote: str | None = None  # peer address, for the audit trail
    binding: BindIdentity = BindIdentity.NONE


@dataclass(frozen=True)
class CertificatePolicy:
    """Which certificates authenticate on one label or SCEP profile (typed, from protocol config).

    ``trust``: the trust store names; ``client_profiles``: the profiles whose certificates (issued
    by us) are accepted; ``bind_identity``: how the requested names must relate to the
    certificate (:mod:`ca.identity`).
    """

    trust: tuple[str, ...]
    client_profiles: tuple[str, ...]
    bind_identity: BindIdentity = BindIdentity.NONE


#: Vouches for a request when the other proofs fail (a SCEP webhook): the protocol layer's own
#: check, run by the core only after the ledger-backed proofs are exhausted.
Voucher = Callable[[], Awaitable["Requester | None"]]


@dataclass(frozen=True)
class Claims:
    """What a requester offers to prove who it is; the core verifies it inside the unit of work
    (docs/ARCHITECTURE.md, "Authentication"), with the ledger facts of the same read.

    ``accept`` lists the alternatives the label or profile allows; an alternative needs every
    method it names (EST ``basic+client-cert``). ``identity`` and ``namespace`` key the throttle
    for secrets (the Basic user, or the SCEP subject).
    """

    accept: tuple[frozenset[AuthMethod], ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    policy: CertificatePolicy | None = None
    challenge: str | None = field(default=None, repr=False)
    voucher: Voucher | None = field(default=None, repr=False)
    remote: str | None = None
    identity: str | None = None
    namespace: str = ""


@dataclass(frozen=True)
class EnrollRequest:
    """A protocol's enrollment or renewal, not yet authenticated: the core authenticates
    ``claims``, checks ``renewal_of`` by the lifecycle rule, and issues in one unit of work."""

    csr: x509.CertificateSigningRequest
    profile: str
    channel: Channel
    claims: Claims
    transaction_id: str | None = None
    renewal_of: x509.Certificate | None = None
    nonce: tuple[str, bytes] | None = None


@dataclass(frozen=True)
class IssueRequest:
    """A CSR that a protocol layer has authenticated and wants a certificate for.

    ``transaction_id`` makes issuance idempotent: the same (profile, transaction_id, key) gets
    the same certificate again; the same transaction_id with another key is refused (RFC 8894
    §3.2.1.1). ``renewal_of`` links a renewal to the certificate it renews.
    """

    csr: x509.CertificateSigningRequest
    profile: str
    requester: Requester
    channel: Channel
    transaction_id: str | None = None
    renewal_of: x509.Certificate | None = None
    #: Recorded in the same commit as the certificate; a replay loses (RFC 8894 §3.2.1.5).
    nonce: tuple[str, bytes] | None = None
    #: A one-time challenge digest that authenticated the request, consumed in the same commit.
    one_time_challenge: str | None = None
    #: A one-time credential digest that authenticated the request: one use is consumed in the
    #: same commit as the certificate.
    one_time_credential: str | None = None


@dataclass(frozen=True)
class Issued:
    """The certificate was signed, stored and committed."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # issuer first, up to the trust anchor
    serial: int
    replayed: bool = False  # True when an earlier identical request's certificate was returned


@dataclass(frozen=True)
class Pending:
    """The request waits for an operator (EST 202 + Retry-After, SCEP PENDING)."""

    request_id: int
    retry_after: int  # seconds


@dataclass(frozen=True)
class Rejected:
    """The request was refused; nothing was issued."""

    reason: RejectReason
    detail: str
    retry_after: int | None = None  # THROTTLED: seconds before another attempt is considered


Outcome = Issued | Pending | Rejected


@dataclass(frozen=True)
class CAChain:
    """What a CA publishes (EST /cacerts, SCEP GetCACert).

    ``issuer`` signs end-entity certificates; ``chain`` is ``issuer`` first then each parent up
    to and including the trust anchor; ``rollover`` holds OldWithNew / NewWithOld / NewWithNew
    certificates while a CA key rollover is configured (RFC 7030 §4.1.3).
    """

    issuer: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    rollover: tuple[x509.Certificate, ...] = ()
    next_issuer: x509.Certificate | None = None  # SCEP GetNextCACert (RFC 8894 §3.5.2)


@dataclass(frozen=True)
class CertificateTemplate:
    """Everything a backend needs to sign, decided by the core from the profile."""

    subject: x509.Name
    public_key: CertificatePublicKeyTypes
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = field(default=())  # (value, critical)
    profile: str = ""
    #: The device's request as received: a backend that cannot sign the template itself (an
    #: upstream EST server, RFC 7030 §2.5; an external command) forwards it unchanged.
    csr: x509.CertificateSigningRequest | None = None


@runtime_checkable
class CABackend(Protocol):
    """A certificate authority the core can issue from (local file key, HSM, remote CA)."""

    name: str

    async def ca_chain(self) -> CAChain:
        """The CA's published chain."""
        ...

    async def sign(self, template: CertificateTemplate) -> x509.Certificate:
        """Sign exactly the template (serial, names, validity, extensions) and return it."""
        ...


@runtime_checkable
class SupportsCRL(Protocol):
    """A backend that can sign CRLs (RFC 5280 §5)."""

    async def sign_crl(
        self,
        revoked: list[x509.RevokedCertificate],
        number: int,
        this_update: dt.datetime,
        next_update: dt.datetime,
    ) -> x509.CertificateRevocationList:
        """Sign a CRL listing ``revoked`` with CRL number ``number``."""
        ...


@runtime_checkable
class IssuesOwnSerial(Protocol):
    """A backend whose CA chooses the serial number itself, so the template's serial cannot be
    honoured (an upstream EST server in RA mode, RFC 7030 §2.5, §3.7). The core then records the
    certificate under the serial the CA chose (unique per issuer by the ledger's constraint) and
    re-checks everything else against the template."""

    def issues_own_serial(self) -> bool:
        """True when the serial of a returned certificate is the CA's, not the template's."""
        ...


@runtime_checkable
class RollsOver(Protocol):
    """A CA with a configured successor (CA key rollover, RFC 4210 §4.4): from
    :meth:`successor` on, the profiles of this CA issue from the named CA; this one keeps
    answering for (CRLs, OCSP, renewals) the certificates it signed until they expire."""

    def successor(self, now: dt.datetime) -> str | None:
        """The name of the CA that issues instead of this one at ``now``, or None."""
        ...
