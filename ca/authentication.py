"""Authentication in the core: client certificates by the lifecycle rule, renewals, HTTP Basic
passwords, SCEP challenges and one-time credentials (docs/ARCHITECTURE.md, "Authentication").
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.api import (
    AuthMethod,
    CertificatePolicy,
    Claims,
    Channel,
    Requester,
)
from ca.ratelimit import Throttle
from ca.records import RowStatus, StoredRequester
from ca.unit_of_work import GateFacts, GateQuery
from ca.identity import Standing, lifecycle_refusal
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
    NotFoundError,
)
from ca.ledger import (
    CertRecord,
    CredentialRecord,
    serial_hex,
)
from ca.profile import (
    Profile,
)

from ca.issuer_base import Actor, IssuerBase, IssuingCA, actor, describe, sha256_hex, utc_now, valid_now

_DUMMY_HASH = hash_secret("no such user")


@dataclass(frozen=True)
class TrustedPath:
    """A client certificate's chain to one store, and which CA of ours signed it (if any)."""

    store: TrustStore
    path: list[x509.Certificate]
    ca: IssuingCA | None


def accepts(claims: Claims, method: AuthMethod) -> bool:
    return any(method in entry for entry in claims.accept)


def offers_secret(claims: Claims) -> bool:
    """True when the claims try a password or challenge (what the throttle counts)."""
    return (claims.password is not None and (accepts(claims, AuthMethod.BASIC)
                                             or accepts(claims, AuthMethod.ONE_TIME_CREDENTIAL))) or bool(
        claims.challenge and (accepts(claims, AuthMethod.CHALLENGE) or accepts(claims, AuthMethod.ONE_TIME_CHALLENGE)))


def stored_requester(stored: StoredRequester, remote: str | None) -> Requester:
    """The requester a ledger row recorded, for a retransmission of the same request."""
    if stored.method is None:
        # A row an older version wrote with a method this one does not know: authenticate
        # again rather than guess (fail closed).
        raise AuthenticationError(f"the stored requester {stored.principal[:64]!r} names no known method")
    return Requester(stored.method, stored.principal, None, remote)


#: The subject attributes a one-time credential can bind a device by (``enroll credentials new --bind``).
CREDENTIAL_BINDINGS: dict[str, x509.ObjectIdentifier] = {
    "serialNumber": x509.NameOID.SERIAL_NUMBER, "CN": x509.NameOID.COMMON_NAME}


def offered_credential(claims: Claims) -> str | None:
    """The digest of the one-time credential the claims offer as HTTP Basic, if the label accepts one."""
    if claims.user and claims.password is not None and accepts(claims, AuthMethod.ONE_TIME_CREDENTIAL):
        return credential_digest(claims.user, claims.password)
    return None


def check_credential_binding(cred: CredentialRecord, subject: x509.Name) -> None:
    """The certificate's subject (the template's, after the profile) must name the device the
    credential was made for: its ``bind`` attribute present, every value equal to ``device``."""
    values = [a.value for a in subject.get_attributes_for_oid(CREDENTIAL_BINDINGS[cred.bind])]
    if not values or any(v != cred.device for v in values):
        raise AuthorizationError(f"credential {cred.id} is bound to the device with {cred.bind} "
                                 f"{cred.device!r}; the request names another")


def standing(record: CertRecord) -> Standing:
    return Standing(serial=record.serial, profile=record.profile, revoked=record.revoked,
                    on_hold=record.on_hold, retired=record.retired, not_after=record.not_after)




class Authentication(IssuerBase):
    """Who a requester is, decided with the ledger's facts (one rule for EST and SCEP)."""

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
                            intermediates: Sequence[x509.Certificate] = ()) -> TrustedPath:
        """The chain to one of the policy's stores (no I/O); AuthenticationError when none."""
        now = utc_now()
        for name in policy.trust:
            store = self.trust.get(name)
            path = store.path(cert, intermediates, now) if store is not None else None
            if store is not None and path is not None:
                return TrustedPath(store, path, await self._ca_for_certificate(cert))
        raise AuthenticationError("the client certificate does not chain to a trust store of this label")

    async def _certificate_verdict(self, cert: x509.Certificate, policy: CertificatePolicy, trusted: TrustedPath,
                                   record: CertRecord | None, *, channel: Channel, profile: str | None,
                                   remote: str | None) -> Requester:
        """The lifecycle rule on a trusted path, with our ledger row (read by the caller)."""
        if trusted.ca is not None:
            record = await self._checked_record(trusted.ca, cert, record, channel=channel, profile=profile,
                                                remote=remote)
            refusal = lifecycle_refusal(standing(record), cert, policy.client_profiles, utc_now())
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
        if record is None or record.der != der or record.status is not RowStatus.ISSUED:
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
        if ca is None or not valid_now(cert):
            return None
        record = await self.ledger.find_by_serial(ca.name, cert.serial_number)
        return await self._renewal_verdict(cert, profile, ca, record, channel=channel, remote=remote)

    async def _renewal_verdict(self, cert: x509.Certificate, profile: Profile, ca: IssuingCA,
                               record: CertRecord | None, *, channel: Channel, remote: str | None) -> CertRecord:
        """:meth:`renewable`'s rule on a ledger row already read."""
        record = await self._checked_record(ca, cert, record, channel=channel, profile=profile.name, remote=remote)
        now = utc_now()
        refusal = lifecycle_refusal(standing(record), cert, (profile.name,), now)
        if refusal is not None:
            raise AuthorizationError(refusal)
        window = profile.renewal_window_days
        if window is not None and now < cert.not_valid_after_utc - dt.timedelta(days=window):
            raise AuthorizationError(f"too early to renew: profile {profile.name!r} renews within "
                                     f"{window} days of expiry")
        return record

    async def authenticate(self, claims: Claims, profile_name: str, channel: Channel) -> Requester:
        """Verify ``claims`` alone (one gate read; a failed secret is recorded for the throttle),
        for an operation that issues through :meth:`issue` afterwards (EST serverkeygen)."""
        profile = self.profile(profile_name)
        trusted: TrustedPath | None = None
        if claims.certificate is not None and claims.policy is not None and accepts(claims, AuthMethod.TLS_CLIENT_CERT):
            try:
                trusted = await self._trusted_path(claims.certificate, claims.policy)
            except AuthenticationError:
                trusted = None
        throttle = Throttle(self.ledger)
        keys = throttle.keys(claims.remote, claims.identity, claims.namespace) if offers_secret(claims) else []
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

    async def _authenticate(self, claims: Claims, facts: GateFacts, profile: Profile, channel: Channel,
                            trusted: TrustedPath | None, one_time: str | None) -> tuple[Requester, str | None]:
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
        if claims.password is not None and claims.user is not None and accepts(claims, AuthMethod.BASIC):
            if await self.verify_password(claims.user, claims.password):
                ok[AuthMethod.BASIC] = Requester(AuthMethod.BASIC, claims.user,
                                                 claims.certificate if AuthMethod.TLS_CLIENT_CERT in ok else None,
                                                 claims.remote)
        cred = facts.credential
        if cred is not None and claims.user == cred.id and accepts(claims, AuthMethod.ONE_TIME_CREDENTIAL):
            ok[AuthMethod.ONE_TIME_CREDENTIAL] = Requester(AuthMethod.ONE_TIME_CREDENTIAL, cred.id, None,
                                                           claims.remote)
        if claims.challenge:
            if accepts(claims, AuthMethod.CHALLENGE) and await self.check_static_challenge(profile.name,
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

    async def verify_password(self, user: str, password: str) -> bool:
        """HTTP Basic (RFC 7617) against the configured scrypt hashes, constant-time; scrypt runs
        off the event loop (:func:`ca.authz.verify_secret_async`)."""
        stored = self.users.get(user)
        ok = await verify_secret_async(password, stored or _DUMMY_HASH)
        return ok and stored is not None

    async def check_static_challenge(self, profile_name: str, challenge: str) -> bool:
        """Compare a static challenge (SCEP challengePassword, RFC 8894 §2.2) with the profile's
        stored hash (fail closed); scrypt runs off the event loop."""
        self.profile(profile_name)
        stored = self.static_challenges.get(profile_name)
        if not stored:
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
        await self.audit("challenge-new", ok=True, channel=Channel.ADMIN, profile=profile_name, requester=actor(by),
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
        now, who = time.time(), describe(actor(by))
        out: list[tuple[CredentialRecord, str]] = []
        rows: list[dict[str, Any]] = []
        for device in devices:
            user, secret = "c" + new_challenge(15), new_challenge(24)
            rec = CredentialRecord(id=user, profile=profile_name, bind=bind, device=device, uses=uses, uses_left=uses,
                                   created_at=now, expires_at=now + ttl_seconds, created_by=who)
            rows.append(dict(vars(rec), digest=credential_digest(user, secret)))
            out.append((rec, secret))
        await self.ledger.add_credentials(rows)
        await self.audit("credential-new", ok=True, channel=Channel.ADMIN, profile=profile_name, requester=actor(by),
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
                         requester=actor(by), detail={"id": cred_id, "bound_to": rec.device})
        return (await self.ledger.get_credential(cred_id)) or rec

