"""JSON views of ledger records and the JSON error answer of the admin API (one name per
state: :class:`ca.ledger.CertState`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.ledger import AuditRecord, CertRecord, DeviceRecord, PendingRecord, serial_hex
from ca.records import StoredRequester
from ca.names import sans_of
from ca.profile import key_type_of

#: Where the admin API lives.
API = "/admin/api/v1"


# --- JSON views of ledger records ----------------------------------------------------------------
def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC timestamp, or None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cert_state(r: CertRecord, now: float | None = None) -> str:
    """valid | on_hold | revoked | expired | retired (ca.ledger.CertState, as the CLI says)."""
    return r.state(now).value


def _method(who: StoredRequester) -> str | None:
    """How the requester authenticated, as JSON (None: a method this version does not know)."""
    return who.method.value if who.method is not None else None


def cert_json(r: CertRecord, now: float | None = None) -> dict[str, Any]:
    """The list view of a certificate."""
    return {
        "serial": serial_hex(r.serial), "ca": r.issuer, "profile": r.profile, "device": r.device,
        "subject": r.subject, "state": cert_state(r, now), "not_before": iso(r.not_before),
        "not_after": iso(r.not_after), "issued_at": iso(r.issued_at), "revoked_at": iso(r.revoked_at),
        "revocation_reason": r.revocation_reason, "retired": r.retired, "channel": r.channel,
        "requester": r.requester.principal, "auth_method": _method(r.requester),
        "requester_evidence": r.requester.evidence,
        "renews": serial_hex(r.renews_serial) if r.renews_serial is not None else None,
    }


def cert_detail_json(r: CertRecord) -> dict[str, Any]:
    """The detail view: the list view plus names, key, extensions, fingerprints and PEM."""
    out = cert_json(r)
    out.update({"transaction_id": r.transaction_id, "csr_sha256": r.csr_sha256, "spki_sha256": r.spki_sha256,
                "retired_at": iso(r.retired_at)})
    if r.der:
        cert = x509.load_der_x509_certificate(r.der)
        out.update({
            "sans": sans_of(cert.extensions),
            "issuer": cert.issuer.rfc4514_string(),
            "key_type": key_type_of(cert.public_key()),
            "sha256": hashlib.sha256(r.der).hexdigest(),
            "extensions": [{"oid": e.oid.dotted_string, "name": getattr(e.oid, "_name", e.oid.dotted_string),
                            "critical": e.critical} for e in cert.extensions],
            "pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
        })
    return out


def device_json(d: DeviceRecord) -> dict[str, Any]:
    """A device of the inventory."""
    return {"device": d.device, "profile": d.profile, "subject": d.subject, "sans": d.sans,
            "first_seen": iso(d.first_seen), "last_issued_at": iso(d.last_issued_at),
            "certificates": d.certificates, "active": d.active, "retired": d.retired,
            "retired_at": iso(d.retired_at), "retired_by": d.retired_by, "retire_reason": d.retire_reason}


def pending_json(p: PendingRecord) -> dict[str, Any]:
    """A request waiting for (or decided by) an operator, with the names it asks for."""
    sans: list[str] = []
    try:
        sans = sans_of(x509.load_der_x509_csr(p.csr_der).extensions)
    except Exception:  # noqa: BLE001 - shown for information only; the CSR was checked at request time
        pass
    return {"id": p.id, "profile": p.profile, "status": p.status, "channel": p.channel,
            "requester": p.requester.principal, "auth_method": _method(p.requester),
            "subject": p.subject, "sans": sans, "csr_sha256": p.csr_sha256, "transaction_id": p.transaction_id,
            "created_at": iso(p.created_at), "decided_at": iso(p.decided_at), "decided_by": p.decided_by,
            "reason": p.reason, "serial": serial_hex(p.serial) if p.serial is not None else None}


def audit_json(a: AuditRecord) -> dict[str, Any]:
    """One decision of the audit trail."""
    return {"id": a.id, "at": iso(a.at), "event": a.event, "ok": a.ok, "channel": a.channel, "profile": a.profile,
            "requester": a.requester, "reason": a.reason, "serial": a.serial, "csr_sha256": a.csr_sha256,
            "detail": a.detail}


# --- errors --------------------------------------------------------------------------------------
def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.HTTPException:
    """An HTTP error with a JSON body ``{"error": message}``."""
    cls = web.HTTPException
    for c in (web.HTTPBadRequest, web.HTTPUnauthorized, web.HTTPForbidden, web.HTTPNotFound, web.HTTPConflict,
              web.HTTPUnsupportedMediaType, web.HTTPServiceUnavailable):
        if c.status_code == status:
            cls = c
    exc = cls(text=json.dumps({"error": message}), content_type="application/json", headers=headers)
    return exc


