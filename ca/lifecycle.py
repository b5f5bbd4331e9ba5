"""The certificate lifecycle after issuance: pending approvals, revocation and holds, devices and
retirement, CRLs (RFC 5280 §5) and OCSP (RFC 6960), reading an issued certificate back (SCEP
GetCert) and recording one our CA signed outside the ledger (``enroll certs import``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.api import (
    REASONS,
    AuthMethod,
    Channel,
    Requester,
    SupportsCRL,
)
from ca import ocsp
from ca.records import PendingStatus, RowStatus
from ca.errors import (
    CAError,
    LedgerError,
    NotFoundError,
    ParseError,
    RejectReason,
)
from ca.ledger import (
    AuditRecord,
    CertificateQuery,
    CertRecord,
    DeviceRecord,
    PendingRecord,
    serial_hex,
)

from ca.issuer_base import (
    Actor,
    IssuerBase,
    actor,
    describe,
    is_device_key,
    requester_columns,
    sha256_hex,
    spki_sha256,
    valid_now,
)
from ca.names import device_key, sans_of


class Lifecycle(IssuerBase):
    """Approve, revoke, hold, retire; publish what relying parties check."""

    async def list_pending(self, status: PendingStatus | None = PendingStatus.PENDING) -> list[PendingRecord]:
        """Requests waiting for (or decided by) an operator."""
        return await self.ledger.list_pending(status)

    async def approve(self, request_id: int, by: Actor) -> bool:
        """Approve a pending request; the client's next poll gets the certificate."""
        who = actor(by)
        rec = await self.ledger.get_pending(request_id)
        ok = await self.ledger.transition_pending(request_id, [PendingStatus.PENDING], PendingStatus.APPROVED, decided_at=time.time(),
                                                  decided_by=describe(who))
        await self.audit("approve", ok=ok, channel=Channel.ADMIN, profile=rec.profile if rec else None,
                         requester=who, reason="" if ok else "not pending", csr_sha256=rec.csr_sha256 if rec else None,
                         detail={"request_id": request_id})
        return ok

    async def reject(self, request_id: int, by: Actor, reason: str = "") -> bool:
        """Reject a pending request; the client's next poll is refused."""
        who = actor(by)
        rec = await self.ledger.get_pending(request_id)
        ok = await self.ledger.transition_pending(request_id, [PendingStatus.PENDING, PendingStatus.APPROVED],
                                                  PendingStatus.REJECTED,
                                                  decided_at=time.time(), decided_by=describe(who), reason=reason)
        await self.audit("reject", ok=ok, channel=Channel.ADMIN, profile=rec.profile if rec else None,
                         requester=who, reason=reason if ok else "not pending",
                         csr_sha256=rec.csr_sha256 if rec else None, detail={"request_id": request_id})
        return ok

    async def get_certificate(self, serial: int, ca: str | None = None) -> CertRecord:
        """The one issued certificate with this serial (NotFoundError, or CAError if ambiguous)."""
        rows = [r for r in await self.ledger.find_serial_any_issuer(serial)
                if r.status is RowStatus.ISSUED and (ca is None or r.issuer == ca)]
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
            await self.audit("revoke", ok=False, channel=Channel.ADMIN, profile=rec.profile, requester=actor(by),
                             reason=f"already revoked ({rec.revocation_reason})", serial=serial,
                             detail={"device": rec.device})
            raise CAError(f"certificate {serial_hex(serial)} is already revoked ({rec.revocation_reason})")
        await self.audit("hold" if reason == "certificate_hold" else "revoke", ok=True, channel=Channel.ADMIN,
                         profile=rec.profile, requester=actor(by), reason=reason, serial=serial,
                         detail={"device": rec.device})
        await self.crl_for_ca(rec.issuer, force=True)
        return (await self.ledger.find_by_serial(rec.issuer, serial)) or rec

    async def unhold(self, serial: int, ca: str | None = None, *, by: Actor = None) -> CertRecord:
        """Release a certificateHold: valid again, and absent from the CRL published now
        (RFC 5280 §5.3.1; a full CRL simply drops the entry, the removeFromCRL semantics)."""
        rec = await self.get_certificate(serial, ca)
        if not await self.ledger.release_hold(rec.issuer, serial):
            raise CAError(f"certificate {serial_hex(serial)} is not on hold")
        await self.audit("unhold", ok=True, channel=Channel.ADMIN, profile=rec.profile, requester=actor(by),
                         reason="remove_from_crl", serial=serial, detail={"device": rec.device})
        await self.crl_for_ca(rec.issuer, force=True)
        return (await self.ledger.find_by_serial(rec.issuer, serial)) or rec

    async def retire(self, serial: int, *, by: Actor = None) -> CertRecord:
        """Retire one certificate: it can no longer renew (revoke it separately)."""
        rec = await self.get_certificate(serial)
        await self.ledger.retire(rec.issuer, serial, time.time())
        await self.audit("retire", ok=True, channel=Channel.ADMIN, profile=rec.profile, requester=actor(by),
                         serial=serial, detail={"device": rec.device})
        return (await self.ledger.find_by_serial(rec.issuer, serial)) or rec

    async def get_device(self, device: str) -> DeviceRecord:
        """A device by its key (as `enroll devices list` shows it)."""
        rec = await self.ledger.get_device(device.lower()) if is_device_key(device.lower()) else None
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
                                 requester=actor(by), reason=reason, serial=rec.serial,
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
        who = actor(by)
        if not await self.ledger.retire_device(dev.device, time.time(), describe(who) or "", reason):
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
        if rec is None or rec.status is not RowStatus.ISSUED:
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
        await self.audit("crl-publish", ok=True, channel=Channel.ADMIN, profile=None, requester=actor(by),
                         detail={"ca": ca_name, "crl_number": number, "entries": len(crl)})
        return crl

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
        if record is None or record.status is not RowStatus.ISSUED or record.der is None:
            raise NotFoundError(f"no certificate {serial_hex(serial)} of CA {ca_name}", reason=RejectReason.BAD_CERT_ID)
        cert = x509.load_der_x509_certificate(record.der)
        signer_der = signer.public_bytes(serialization.Encoding.DER)
        entitled = signer_der == record.der or spki_sha256(signer.public_key()) == record.spki_sha256
        if not entitled and signer_rec is not None and signer_rec.der == signer_der and signer_rec.status is RowStatus.ISSUED \
                and not signer_rec.revoked and not signer_rec.retired and valid_now(signer):
            entitled = (signer_rec.device == record.device if record.device is not None and signer_rec.device
                        is not None else record.subject is not None and signer_rec.subject == record.subject)
        if not entitled:
            raise NotFoundError(f"signer {signer.subject.rfc4514_string()} may not read certificate "
                                f"{serial_hex(serial)}", reason=RejectReason.BAD_CERT_ID)
        return cert

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
        who = actor(by) or Requester(AuthMethod.OPERATOR, "")
        row_id = await self.ledger.reserve_serial(
            issuer=ca.name, serial=cert.serial_number, profile=profile.name, channel=channel.value,
            **dict(requester_columns(who), auth_method=AuthMethod.OPERATOR.value), csr_sha256=sha256_hex(der),
            spki_sha256=spki, transaction_id=None, renews_serial=None)
        if row_id is None:
            raise CAError(f"serial {serial_hex(cert.serial_number)} of CA {ca.name!r} is already recorded")
        sans = sans_of(cert.extensions)
        device = device_key(profile.name, cert.subject, sans)
        audit = dict(event="adopt" if channel is Channel.ADMIN else "import", ok=True, channel=channel.value, profile=profile.name,
                     requester=describe(who), reason="recorded", csr_sha256=None, serial=cert.serial_number,
                     detail={"device": device, "sha256": sha256_hex(der)})
        await self.ledger.store_issued(
            row_id, der=der, subject=cert.subject.rfc4514_string(), not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(), audit=audit, device=device, device_profile=profile.name,
            sans=sans)
        self._log(audit)
        record = await self.ledger.find_by_serial(ca.name, cert.serial_number)
        assert record is not None
        return record
