"""What every part of the issuance core shares: the issuing CAs, lookups, the audit trail.

:class:`IssuerBase` holds the ledger, CAs, profiles, users and trust stores; the authentication
(:mod:`ca.authentication`), lifecycle (:mod:`ca.lifecycle`) and issuance (:mod:`ca.issuer`)
parts build on it (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.api import (
    AuthMethod,
    CABackend,
    RollsOver,
    CAChain,
    Channel,
    Requester,
)
from ca import ocsp
from ca.serials import SerialPool
from ca.authz import (
    signed_by,
    TrustStore,
)
from ca.errors import (
    LedgerError,
    NotFoundError,
)
from ca.ledger import (
    CertRecord,
    Ledger,
    serial_hex,
)
from ca.ratelimit import RefusalSampler
from ca.profile import (
    Profile,
)

log = logging.getLogger("enroll.audit")


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


def describe(r: Requester | None) -> str | None:
    """``method:principal``: how the audit trail names a requester (display only, never parsed)."""
    return None if r is None else f"{r.method.value}:{r.principal}"


def requester_columns(r: Requester) -> dict[str, str | None]:
    """The ledger columns of a requester (:class:`ca.records.StoredRequester`): method, principal,
    and as evidence the SHA-256 of the certificate that authenticated it, when one did."""
    evidence = sha256_hex(r.certificate.public_bytes(serialization.Encoding.DER)) if r.certificate else None
    return {"auth_method": r.method.value, "requester": r.principal, "requester_evidence": evidence}


Actor = Requester | str | None


def actor(by: Actor) -> Requester | None:
    """An operator as the audit trail names it (a bare string is an operator principal)."""
    if by is None or isinstance(by, Requester):
        return by
    return Requester(AuthMethod.OPERATOR, by)


def valid_now(cert: x509.Certificate) -> bool:
    return cert.not_valid_before_utc <= utc_now() <= cert.not_valid_after_utc


def is_device_key(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


Observer = Callable[[str, str, str, float], None]  # (profile, channel, outcome, seconds)




class IssuerBase:
    """The core's state, its lookups and its audit trail (docs/ARCHITECTURE.md, step 7)."""

    def __init__(
        self,
        ledger: Ledger,
        cas: Mapping[str, IssuingCA],
        profiles: Mapping[str, Profile],
        *,
        users: Mapping[str, str] | None = None,
        static_challenges: Mapping[str, str] | None = None,
        trust: Mapping[str, TrustStore] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.ledger = ledger
        self.cas = dict(cas)
        self.profiles = dict(profiles)
        self.users = dict(users or {})
        #: profile name -> hash of its static challenge (AuthMethod.CHALLENGE), from the wiring
        self.static_challenges = dict(static_challenges or {})
        self.trust = dict(trust or {})
        self.observer = observer
        self.serials = SerialPool(ledger)

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
            nxt = ca.backend.successor(utc_now())
            if nxt is not None and nxt in self.cas:
                return self.cas[nxt]
        return ca

    async def ca_chain(self, profile_name: str) -> CAChain:
        """The chain of the CA a profile issues from (EST /cacerts, SCEP GetCACert)."""
        return await self._ca_of(self.profile(profile_name)).backend.ca_chain()

    async def _ca_for_certificate(self, cert: x509.Certificate) -> IssuingCA | None:
        for ca in self.cas.values():
            issuer = (await ca.backend.ca_chain()).issuer
            if cert.issuer == issuer.subject and signed_by(cert, issuer):
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

    async def find_certificate(self, issuer_name: x509.Name, serial: int) -> x509.Certificate | None:
        """An issued certificate by issuer name and serial (SCEP GetCert, RFC 8894 §3.3.4)."""
        for ca in self.cas.values():
            if (await ca.backend.ca_chain()).issuer.subject != issuer_name:
                continue
            rec = await self.ledger.find_by_serial(ca.name, serial)
            if rec is not None and rec.der is not None:
                return x509.load_der_x509_certificate(rec.der)
        return None

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
                                requester=describe(requester), reason=reason, csr_sha256=csr_sha256, serial=serial,
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

    async def remember_nonce(self, scope: str, nonce: bytes) -> bool:
        """Record a nonce; False if it was seen before (a replay)."""
        return await self.ledger.remember_nonce(scope, nonce.hex(), time.time())

    def verify_client_chain(self, leaf: x509.Certificate, trust: Sequence[str],
                            intermediates: Sequence[x509.Certificate] = ()) -> bool:
        """True when ``leaf`` chains to an anchor of one of the named trust stores."""
        return any(name in self.trust and self.trust[name].verify(leaf, intermediates) for name in trust)

