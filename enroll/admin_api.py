"""The admin HTTP API (``/admin/api/v1``) and the admin page (``/admin/``).

Every operation calls the same :class:`ca.issuer.Issuer` method as the CLI (one implementation
of each), with the authenticated admin as the actor, so the audit trail names who did it.

Authentication (fail closed): without an ``[admin]`` table every ``/admin`` path answers 404;
with one, only HTTPS requests are served, and each must carry a bearer token whose scrypt hash
is in ``[admin.tokens.NAME]`` or present a TLS client certificate chaining to a trust store in
``[admin] client_trust`` (a CA of the admins' own: config load refuses an anchor that is also
one of our CAs or a device-facing anchor), optionally narrowed by ``[admin]
allowed_fingerprints`` and ``[admin] crl``. Every /admin response carries nosniff, and HSTS on
HTTPS (RFC 6797). Mutating calls are POSTs with a JSON body (``Content-Type:
application/json``), which a cross-site form cannot send, and a foreign ``Origin`` is refused:
a browser holding an admin client certificate cannot be made to act by another site.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.api import AuthMethod, Requester
from ca.authz import verify_secret
from ca.errors import CAError, ConfigError, NotFoundError
from ca.api import REASONS
from ca.issuer import Issuer
from ca.ledger import AuditRecord, CertificateQuery, CertRecord, DeviceRecord, PendingRecord, serial_hex
from ca.profile import key_type_of, sans_of
from enroll.body import BodyError, read_body
from enroll.config import AdminConfig, Config, fingerprint, load_certs, load_crl, parse_duration

log = logging.getLogger("enroll.admin")

API = "/admin/api/v1"
PAGE_DIR = Path(__file__).resolve().parent / "admin_page"
PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
MAX_LIMIT = 500
MAX_BODY = 64 * 1024  # admin requests are small JSON objects

Handler = Callable[[web.Request, Requester], Awaitable[Any]]


# --- JSON views of ledger records ----------------------------------------------------------------
def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC timestamp, or None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cert_state(r: CertRecord, now: float | None = None) -> str:
    """valid | on_hold | revoked | expired | retired (ca.ledger.CertState, as the CLI says)."""
    return r.state(now).value


def cert_json(r: CertRecord, now: float | None = None) -> dict[str, Any]:
    """The list view of a certificate."""
    return {
        "serial": serial_hex(r.serial), "ca": r.issuer, "profile": r.profile, "device": r.device,
        "subject": r.subject, "state": cert_state(r, now), "not_before": iso(r.not_before),
        "not_after": iso(r.not_after), "issued_at": iso(r.issued_at), "revoked_at": iso(r.revoked_at),
        "revocation_reason": r.revocation_reason, "retired": r.retired, "channel": r.channel,
        "requester": r.requester, "renews": serial_hex(r.renews_serial) if r.renews_serial is not None else None,
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
    return {"id": p.id, "profile": p.profile, "status": p.status, "channel": p.channel, "requester": p.requester,
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


def _serial(text: str) -> int:
    t = text.lower().replace(":", "")
    t = t[2:] if t.startswith("0x") else t
    try:
        return int(t, 16)
    except ValueError:
        raise json_error(400, f"{text!r} is not a hex serial number") from None


def _int(request: web.Request, name: str, default: int | None, lo: int = 1, hi: int = MAX_LIMIT) -> int | None:
    v = request.query.get(name)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        raise json_error(400, f"{name} must be an integer") from None
    if not lo <= n <= hi:
        raise json_error(400, f"{name} must be between {lo} and {hi}")
    return n


def _when(request: web.Request, name: str) -> float | None:
    v = request.query.get(name)
    if not v:
        return None
    try:
        d = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise json_error(400, f"{name} must be an ISO 8601 date or time, e.g. 2026-01-31T12:00:00Z") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return d.timestamp()


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await read_body(request, MAX_BODY)  # BodyError: answered by _endpoint
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise json_error(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise json_error(400, "the body must be a JSON object")
    return data


def _reason(body: dict[str, Any], default: str) -> str:
    reason = body.get("reason", default)
    if not isinstance(reason, str) or reason not in REASONS:
        raise json_error(400, f"reason must be one of {', '.join(REASONS)}")
    return reason


# --- authentication ------------------------------------------------------------------------------
class AdminCRL:
    """``[admin] crl``: the admin CA's CRL, re-read when the file changes. Fail closed: an
    unreadable CRL, one not signed by an admin trust anchor, or one past its nextUpdate
    (RFC 5280 §5.1.2.5) refuses every admin client certificate."""

    def __init__(self, path: Path, anchors: list[x509.Certificate]) -> None:
        self.path = path
        self.anchors = anchors
        self._stamp: tuple[int, int] | None = None
        self._crl: x509.CertificateRevocationList | None = None
        self._problem = "not loaded"

    def _load(self) -> None:
        try:
            st = self.path.stat()
        except OSError as exc:
            self._stamp, self._crl, self._problem = None, None, f"admin CRL unreadable: {exc.strerror}"
            return
        if self._stamp == (st.st_mtime_ns, st.st_size):
            return
        self._stamp, self._crl = (st.st_mtime_ns, st.st_size), None
        try:
            crl = load_crl(self.path, "admin.crl")
        except ConfigError as exc:
            self._problem = exc.problem
            return
        if not any(a.subject == crl.issuer and crl.is_signature_valid(a.public_key())  # type: ignore[arg-type]
                   for a in self.anchors):
            self._problem = "admin CRL is not signed by an admin trust anchor"
            return
        self._crl, self._problem = crl, ""

    def load_problem(self) -> str:
        """Why the CRL file cannot be used ("" when it can)."""
        self._load()
        return "" if self._crl is not None else self._problem

    def refusal(self, cert: x509.Certificate, now: float | None = None) -> str | None:
        """Why ``cert`` may not authenticate, or None when the CRL clears it."""
        self._load()
        crl = self._crl
        if crl is None:
            return self._problem
        now = time.time() if now is None else now
        if crl.next_update_utc is None or crl.next_update_utc.timestamp() <= now:
            return "admin CRL is past its nextUpdate: publish a fresh one"
        if cert.issuer != crl.issuer:
            return "admin CRL does not cover this certificate's issuer"
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return "admin certificate is revoked"
        return None


class AdminAuth:
    """Bearer tokens (scrypt hashes from the config) and admin client certificates."""

    def __init__(self, cfg: AdminConfig, issuer: Issuer, anchors: list[x509.Certificate] | None = None) -> None:
        self.cfg = cfg
        self.issuer = issuer
        self.crl = AdminCRL(cfg.crl, anchors or []) if cfg.crl is not None else None
        self._known: dict[str, str] = {}  # sha256(token) -> token name, after one scrypt check
        # Wrong tokens cost one scrypt per configured token: bound how many run at once, so a
        # flood of bad tokens cannot take every executor thread.
        self._checks = asyncio.Semaphore(2)

    async def token_name(self, token: str) -> str | None:
        """The name of the configured token ``token`` matches, or None."""
        if not token or len(token) > 512:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        if key in self._known:
            return self._known[key]
        loop = asyncio.get_running_loop()
        async with self._checks:
            for name, stored in self.cfg.tokens.items():
                # scrypt takes tens of milliseconds: keep it off the event loop.
                if await loop.run_in_executor(None, verify_secret, token, stored):
                    self._known[key] = name
                    return name
        return None

    async def authenticate(self, request: web.Request) -> Requester:
        """The admin behind a request, or an HTTP error (403 plain HTTP, 401 no credentials)."""
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        if ssl_object is None:
            raise json_error(403, "the admin interface is served over HTTPS only")
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            name = await self.token_name(header[7:].strip())
            if name is None:
                log.warning(json.dumps({"event": "admin-auth-failed", "method": "bearer", "remote": request.remote}))
                raise json_error(401, "bearer token not accepted",
                                 {"WWW-Authenticate": 'Bearer realm="enroll-admin", error="invalid_token"'})
            return Requester(AuthMethod.OPERATOR, f"token:{name}", remote=request.remote)
        der = ssl_object.getpeercert(binary_form=True)
        if der and self.cfg.client_trust:
            cert = x509.load_der_x509_certificate(der)
            refusal = self.certificate_refusal(cert)
            if refusal is None:
                return Requester(AuthMethod.TLS_CLIENT_CERT, f"cert:{cert.subject.rfc4514_string()}", certificate=cert,
                                 remote=request.remote)
            log.warning(json.dumps({"event": "admin-auth-failed", "method": "client-cert", "remote": request.remote,
                                    "subject": cert.subject.rfc4514_string(), "reason": refusal}))
            raise json_error(401, f"admin client certificate not accepted: {refusal}",
                             {"WWW-Authenticate": 'Bearer realm="enroll-admin"'})
        raise json_error(401, "admin credentials required: a bearer token or an admin client certificate",
                         {"WWW-Authenticate": 'Bearer realm="enroll-admin"'})


    def certificate_refusal(self, cert: x509.Certificate) -> str | None:
        """Why an admin client certificate does not authenticate (None: it does): it must chain
        to ``[admin] client_trust``, be on ``allowed_fingerprints`` when that is set, and not be
        revoked by ``[admin] crl`` when that is set."""
        if not self.issuer.verify_client_chain(cert, self.cfg.client_trust):
            return "does not chain to an admin trust store"
        if self.cfg.allowed_fingerprints and fingerprint(cert) not in self.cfg.allowed_fingerprints:
            return "not in admin.allowed_fingerprints"
        if self.crl is not None:
            return self.crl.refusal(cert)
        return None


def _same_origin(request: web.Request) -> bool:
    """No Origin (curl, scripts) or our own; a browser on another site sends its own Origin."""
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


# --- the API -------------------------------------------------------------------------------------
class AdminAPI:
    """Handlers over one issuer; each returns JSON-able data."""

    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer

    async def health(self, request: web.Request, who: Requester) -> dict[str, Any]:
        cas = {}
        for name in self.issuer.cas:
            cur = await self.issuer.ledger.crl_current(name)
            cas[name] = {"crl_number": cur[0] if cur else None, "crl_this_update": iso(cur[1]) if cur else None,
                         "crl_next_update": iso(cur[2]) if cur else None}
        pending = len(await self.issuer.list_pending("pending"))
        return {"status": "ok", "ledger": "ok", "cas": cas, "pending": pending, "admin": who.principal}

    async def overview(self, request: web.Request, who: Requester) -> dict[str, Any]:
        now = time.time()
        counts = await self.issuer.ledger.counts_by_profile(now, [now + 7 * 86400, now + 30 * 86400])
        profiles = {}
        for name in sorted(set(self.issuer.profiles) | set(counts)):
            c = counts.get(name, {})
            profiles[name] = {"valid": c.get("valid", 0), "revoked": c.get("revoked", 0),
                              "expiring_7d": c.get("expiring_0", 0), "expiring_30d": c.get("expiring_1", 0)}
        recent = await self.issuer.ledger.query_certificates(CertificateQuery(limit=10), now)
        expiring = await self.issuer.expiring(30 * 86400, limit=10)
        return {"profiles": profiles, "pending": len(await self.issuer.list_pending("pending")),
                "recent": [cert_json(r, now) for r in recent], "expiring": [cert_json(r, now) for r in expiring],
                "admin": who.principal}

    async def charts(self, request: web.Request, who: Requester) -> dict[str, Any]:
        """The admin page's charts: certificates issued per UTC day and profile (last 30 days),
        valid certificates expiring per week (next 13 weeks), refusals by reason class (30 days)."""
        return await chart_data(self.issuer, time.time())

    async def certificates(self, request: web.Request, who: Requester) -> dict[str, Any]:
        q = request.query
        state = q.get("state") or None
        if state not in (None, "valid", "revoked", "on_hold", "retired", "expired"):
            raise json_error(400, "state must be valid, revoked, on_hold, retired or expired")
        limit = _int(request, "limit", 50) or 50
        cursor = _int(request, "cursor", None, 1, 2**62)
        expiring_before = None
        if q.get("expiring_within"):
            try:
                expiring_before = time.time() + parse_duration(q["expiring_within"])
            except ValueError as exc:
                raise json_error(400, str(exc)) from None
        now = time.time()
        rows = await self.issuer.ledger.query_certificates(CertificateQuery(
            profile=q.get("profile") or None, state=state, device=q.get("device") or None, text=q.get("q") or None,
            expiring_before=expiring_before, before_id=cursor, limit=limit + 1), now)
        more = len(rows) > limit and expiring_before is None
        rows = rows[:limit]
        return {"items": [cert_json(r, now) for r in rows], "next_cursor": str(rows[-1].id) if more else None}

    async def certificate(self, request: web.Request, who: Requester) -> dict[str, Any]:
        rec = await self.issuer.get_certificate(_serial(request.match_info["serial"]), request.query.get("ca"))
        return cert_detail_json(rec)

    async def revoke(self, request: web.Request, who: Requester) -> dict[str, Any]:
        body = await _body(request)
        rec = await self.issuer.revoke(_serial(request.match_info["serial"]), _reason(body, "unspecified"),
                                       body.get("ca") if isinstance(body.get("ca"), str) else None, by=who)
        return cert_detail_json(rec)

    async def unhold(self, request: web.Request, who: Requester) -> dict[str, Any]:
        body = await _body(request)
        rec = await self.issuer.unhold(_serial(request.match_info["serial"]),
                                       body.get("ca") if isinstance(body.get("ca"), str) else None, by=who)
        return cert_detail_json(rec)

    async def devices(self, request: web.Request, who: Requester) -> dict[str, Any]:
        q = request.query
        limit = _int(request, "limit", 50) or 50
        retired = {"true": True, "false": False}.get(q.get("retired", "").lower())
        rows = await self.issuer.ledger.list_devices(profile=q.get("profile") or None, text=q.get("q") or None,
                                                     retired=retired, after=q.get("cursor") or None, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"items": [device_json(d) for d in rows], "next_cursor": rows[-1].device if more else None}

    async def device(self, request: web.Request, who: Requester) -> dict[str, Any]:
        dev = await self.issuer.get_device(request.match_info["device"])
        certs = await self.issuer.device_certificates(dev.device)
        history = await self.issuer.device_history(dev.device)
        return {**device_json(dev), "items": [cert_json(c) for c in certs],
                "history": [audit_json(a) for a in history]}

    async def device_revoke(self, request: web.Request, who: Requester) -> dict[str, Any]:
        body = await _body(request)
        done = await self.issuer.revoke_device(request.match_info["device"], _reason(body, "unspecified"), by=who)
        return {"revoked": [serial_hex(r.serial) for r in done]}

    async def device_retire(self, request: web.Request, who: Requester) -> dict[str, Any]:
        body = await _body(request)
        done = await self.issuer.retire_device(request.match_info["device"],
                                               _reason(body, "cessation_of_operation"), by=who)
        dev = await self.issuer.get_device(request.match_info["device"])
        return {**device_json(dev), "revoked": [serial_hex(r.serial) for r in done]}

    async def pending(self, request: web.Request, who: Requester) -> dict[str, Any]:
        status = request.query.get("status", "pending")
        if status not in ("pending", "approved", "issuing", "issued", "rejected", "all"):
            raise json_error(400, "status must be pending, approved, issuing, issued, rejected or all")
        rows = await self.issuer.list_pending(None if status == "all" else status)
        return {"items": [pending_json(p) for p in rows], "next_cursor": None}

    async def _pending_decision(self, request: web.Request, ok: bool) -> dict[str, Any]:
        rid = int(request.match_info["id"])
        rec = await self.issuer.ledger.get_pending(rid)
        if rec is None:
            raise json_error(404, f"no request {rid}")
        if not ok:
            raise json_error(409, f"request {rid} is {rec.status}, not pending")
        after = await self.issuer.ledger.get_pending(rid)
        assert after is not None
        return pending_json(after)

    async def approve(self, request: web.Request, who: Requester) -> dict[str, Any]:
        await _body(request)
        ok = await self.issuer.approve(int(request.match_info["id"]), who)
        return await self._pending_decision(request, ok)

    async def reject(self, request: web.Request, who: Requester) -> dict[str, Any]:
        body = await _body(request)
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 500:
            raise json_error(400, "reason must be a string (at most 500 characters)")
        ok = await self.issuer.reject(int(request.match_info["id"]), who, reason)
        return await self._pending_decision(request, ok)

    async def challenge(self, request: web.Request, who: Requester) -> web.Response:
        body = await _body(request)
        profile, ttl = body.get("profile"), body.get("ttl", 3600)
        if not isinstance(profile, str):
            raise json_error(400, "profile is required")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= 30 * 86400:
            raise json_error(400, "ttl must be an integer number of seconds, at most 30 days")
        value = await self.issuer.create_one_time_challenge(profile, ttl, by=who)
        return web.json_response({"challenge": value, "profile": profile, "expires_at": iso(time.time() + ttl)},
                                 status=201, headers={"Cache-Control": "no-store"})

    async def credentials_new(self, request: web.Request, who: Requester) -> web.Response:
        """One-time EST credentials for one device or many; the passwords are in this answer only
        (JSON, or CSV with ``?format=csv`` for a provisioning station)."""
        from enroll.config import parse_duration
        from enroll.credentials import credential_json, credentials_csv

        body = await _body(request)
        profile, uses, bind = body.get("profile"), body.get("uses", 1), body.get("bind", "serialNumber")
        if not isinstance(profile, str):
            raise json_error(400, "profile is required")
        names = body.get("devices", [body["device"]] if "device" in body else None)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise json_error(400, "device (a string) or devices (a list of strings) is required")
        ttl = body.get("ttl", 7 * 86400)
        if isinstance(ttl, str):
            ttl = parse_duration(ttl)  # ValueError: 400
        if not isinstance(ttl, int) or isinstance(ttl, bool):
            raise json_error(400, "ttl must be seconds or a duration like 7d")
        if not isinstance(uses, int) or isinstance(uses, bool) or not isinstance(bind, str):
            raise json_error(400, "uses must be an integer and bind a string")
        made = await self.issuer.create_credentials(profile, names, ttl_seconds=ttl, uses=uses, bind=bind, by=who)
        headers = {"Cache-Control": "no-store"}
        if request.query.get("format") == "csv":
            headers["Content-Disposition"] = f'attachment; filename="credentials-{profile}.csv"'
            return web.Response(text=credentials_csv(made), content_type="text/csv", status=201, headers=headers)
        return web.json_response({"items": [credential_json(r, secret) for r, secret in made], "next_cursor": None},
                                 status=201,
                                 headers=headers)

    async def credentials(self, request: web.Request, who: Requester) -> dict[str, Any]:
        from enroll.credentials import credential_json

        unused = request.query.get("unused", "") in ("1", "true")
        rows = await self.issuer.list_credentials(request.query.get("profile") or None, unused=unused)
        limit = _int(request, "limit", 500) or 500
        return {"items": [credential_json(r) for r in rows[:limit]], "next_cursor": None}

    async def credential_revoke(self, request: web.Request, who: Requester) -> dict[str, Any]:
        from enroll.credentials import credential_json

        await _body(request)
        return credential_json(await self.issuer.revoke_credential(request.match_info["id"], by=who))

    async def publish_crl(self, request: web.Request, who: Requester) -> dict[str, Any]:
        await _body(request)
        crl = await self.issuer.publish_crl(request.match_info["ca"], by=who)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        return {"ca": request.match_info["ca"], "crl_number": number,
                "this_update": iso(crl.last_update_utc.timestamp()),
                "next_update": iso(crl.next_update_utc.timestamp()) if crl.next_update_utc else None,
                "entries": len(crl)}

    async def audit(self, request: web.Request, who: Requester) -> dict[str, Any]:
        q = request.query
        limit = _int(request, "limit", 100) or 100
        serials = [_serial(q["serial"])] if q.get("serial") else None
        device = q.get("device") or None
        if device is not None:
            device = (await self.issuer.get_device(device)).device
            serials = [c.serial for c in await self.issuer.device_certificates(device)]
        rows = await self.issuer.ledger.audit_records(
            limit + 1, serials=serials, device=device, since=_when(request, "since"), until=_when(request, "until"),
            event=q.get("event") or None, before_id=_int(request, "cursor", None, 1, 2**62))
        more = len(rows) > limit
        rows = rows[:limit]
        return {"items": [audit_json(a) for a in rows], "next_cursor": str(rows[-1].id) if more else None}


CHART_DAYS = 30
CHART_WEEKS = 13  # 91 days ahead


def _buckets(column: Any, edges: list[float]) -> list[Any]:
    """One ``count`` per [edges[i], edges[i+1]) of ``column``, computed by the database (portable
    SQL: SUM of CASE, as SQLite and PostgreSQL differ on date and floor functions)."""
    import sqlalchemy as sa

    return [sa.func.sum(sa.case((sa.and_(column >= lo, column < hi), 1), else_=0)) for lo, hi in zip(edges, edges[1:])]


async def chart_data(issuer: Issuer, now: float) -> dict[str, Any]:
    """Aggregates for the admin page's charts, counted in the ledger."""
    import sqlalchemy as sa

    from ca.ledger import audit_log, certificates
    from ca.ratelimit import reason_class

    c, a = certificates.c, audit_log.c
    today = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [today - dt.timedelta(days=CHART_DAYS - 1 - i) for i in range(CHART_DAYS)]
    day_edges = [d.timestamp() for d in days] + [(today + dt.timedelta(days=1)).timestamp()]
    ledger = issuer.ledger
    # The ledger has no aggregate queries of its own yet: read through its read path.
    rows: list[Any] = await ledger._read(sa.select(c.profile, *_buckets(c.issued_at, day_edges))  # noqa: SLF001
                                         .where(c.status == "issued", c.issued_at >= day_edges[0])
                                         .group_by(c.profile))
    per_day = {r[0]: [int(v or 0) for v in r[1:]] for r in rows}
    for name in issuer.profiles:
        per_day.setdefault(name, [0] * CHART_DAYS)
    week_edges = [now + i * 7 * 86400 for i in range(CHART_WEEKS + 1)]
    valid = sa.and_(c.status == "issued", c.revoked_at.is_(None), c.retired_at.is_(None),
                    c.not_after >= now, c.not_after < week_edges[-1])
    row = (await ledger._read(sa.select(*_buckets(c.not_after, week_edges)).where(valid)))[0]  # noqa: SLF001
    expiring = [int(row[i] or 0) for i in range(CHART_WEEKS)]
    since = now - CHART_DAYS * 86400
    refusals: dict[str, int] = {}
    counted: list[Any] = await ledger._read(  # noqa: SLF001
        sa.select(a.reason, sa.func.count()).where(a.ok.is_(False), a.at >= since,
                                                   a.event != "refusals-suppressed").group_by(a.reason))
    for r in counted:
        cls = reason_class(r[0] or "")
        refusals[cls] = refusals.get(cls, 0) + int(r[1])
    summaries: list[Any] = await ledger._read(  # noqa: SLF001
        sa.select(a.detail).where(a.event == "refusals-suppressed", a.at >= since))
    for r in summaries:
        for key, n in (json.loads(r[0] or "{}").get("suppressed") or {}).items():
            cls = key.rsplit(" ", 1)[-1]
            refusals[cls] = refusals.get(cls, 0) + int(n)
    return {
        "days": [d.date().isoformat() for d in days],
        "issued_per_day": dict(sorted(per_day.items())),
        "weeks": [iso(t) for t in week_edges[:-1]],
        "expiring_per_week": expiring,
        "refusals": [{"reason": k, "count": v} for k, v in sorted(refusals.items(), key=lambda kv: (-kv[1], kv[0]))],
        "since": iso(since),
    }


#: (method, path below API, handler name, mutating)
ROUTES: tuple[tuple[str, str, str, bool], ...] = (
    ("GET", "/health", "health", False),
    ("GET", "/overview", "overview", False),
    ("GET", "/charts", "charts", False),
    ("GET", "/certificates", "certificates", False),
    ("GET", "/certificates/{serial}", "certificate", False),
    ("POST", "/certificates/{serial}/revoke", "revoke", True),
    ("POST", "/certificates/{serial}/unhold", "unhold", True),
    ("GET", "/devices", "devices", False),
    ("GET", "/devices/{device}", "device", False),
    ("POST", "/devices/{device}/revoke", "device_revoke", True),
    ("POST", "/devices/{device}/retire", "device_retire", True),
    ("GET", "/pending", "pending", False),
    ("POST", "/pending/{id}/approve", "approve", True),
    ("POST", "/pending/{id}/reject", "reject", True),
    ("POST", "/challenges", "challenge", True),
    ("GET", "/credentials", "credentials", False),
    ("POST", "/credentials", "credentials_new", True),
    ("POST", "/credentials/{id}/revoke", "credential_revoke", True),
    ("POST", "/crl/{ca}/publish", "publish_crl", True),
    ("GET", "/audit", "audit", False),
)


def _endpoint(auth: AdminAuth, fn: Handler, mutating: bool) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        who = await auth.authenticate(request)
        if mutating:
            if request.content_type != "application/json":
                raise json_error(415, "send a JSON body (Content-Type: application/json)")
            if not _same_origin(request):
                raise json_error(403, "cross-origin admin requests are refused")
        try:
            result = await fn(request, who)
        except BodyError as exc:
            return await exc.respond(request, web.json_response({"error": exc.detail}, status=exc.status))
        except NotFoundError as exc:
            raise json_error(404, exc.detail) from None
        except CAError as exc:
            raise json_error(409, exc.detail) from None
        except ValueError as exc:
            raise json_error(400, str(exc)) from None
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result, headers={"Cache-Control": "no-store"})

    return handler


def _security_headers(resp: web.StreamResponse) -> None:
    resp.headers["Content-Security-Policy"] = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                               "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                                               "form-action 'none'; frame-ancestors 'none'")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cache-Control"] = "no-store"


#: RFC 6797 §6.1: one year, sent only over HTTPS (§7.2: never on plain HTTP).
HSTS = "max-age=31536000"


async def _admin_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every /admin response (API, page, errors): no MIME sniffing; HSTS on HTTPS."""
    if request.path != "/admin" and not request.path.startswith("/admin/"):
        return
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.transport is not None and request.transport.get_extra_info("ssl_object") is not None:
        response.headers["Strict-Transport-Security"] = HSTS


def validate(config: Config) -> None:
    """``enroll config check``: the [admin] table was checked when the config loaded; the page
    files must be installed and ``[admin] crl`` must be signed by an admin trust anchor."""
    if config.admin is None:
        return
    if not (PAGE_DIR / "index.html").is_file():
        raise ConfigError("admin", f"the admin page is missing from the installation ({PAGE_DIR})")
    if config.admin.crl is not None:
        crl = AdminCRL(config.admin.crl, _anchors(config))
        problem = crl.load_problem()
        if problem:
            raise ConfigError("admin.crl", problem)


def _anchors(config: Config) -> list[x509.Certificate]:
    """The certificates of the admin trust stores."""
    assert config.admin is not None
    return [c for name in config.admin.client_trust for p in config.trust.get(name, ())
            for c in load_certs(p, f"trust.{name}.certs")]


def mount(app: web.Application, config: Config, issuer: Issuer) -> None:
    """Add ``/admin/api/v1/...`` and ``/admin/`` (or 404 everywhere when not configured)."""
    app.on_response_prepare.append(_admin_headers)
    if config.admin is None:
        async def not_configured(request: web.Request) -> web.Response:
            return web.Response(status=404, text="the admin interface is not configured: add an [admin] table "
                                                  "to the config (README, \"Admin API\")\n")

        app.router.add_route("*", "/admin", not_configured)
        app.router.add_route("*", "/admin/{tail:.*}", not_configured)
        return
    auth = AdminAuth(config.admin, issuer, _anchors(config))
    api = AdminAPI(issuer)
    for method, path, name, mutating in ROUTES:
        app.router.add_route(method, API + path, _endpoint(auth, getattr(api, name), mutating))

    async def openapi_doc(request: web.Request) -> web.Response:
        await auth.authenticate(request)
        return web.json_response(openapi(), headers={"Cache-Control": "no-store"})

    async def page(request: web.Request) -> web.StreamResponse:
        # The page itself holds no data; it needs no credentials, but only over HTTPS.
        if request.transport is None or request.transport.get_extra_info("ssl_object") is None:
            raise web.HTTPForbidden(text="the admin interface is served over HTTPS only\n")
        name = request.match_info.get("file", "index.html") or "index.html"
        if name not in PAGE_FILES and name != "index.html":
            raise web.HTTPNotFound(text="not found\n")
        ctype = PAGE_FILES.get(name, "text/html")
        resp = web.Response(body=(PAGE_DIR / name).read_bytes(), content_type=ctype, charset="utf-8")
        _security_headers(resp)
        return resp

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/admin/")

    async def api_not_found(request: web.Request) -> web.Response:
        await auth.authenticate(request)
        raise json_error(404, f"no admin API endpoint {request.method} {request.path}")

    app.router.add_get(API + "/openapi.json", openapi_doc)
    app.router.add_route("*", API + "/{tail:.*}", api_not_found)
    app.router.add_get("/admin", redirect)
    app.router.add_get("/admin/", page)
    app.router.add_get("/admin/{file:[a-z]+\\.(?:js|css|svg)}", page)


# --- OpenAPI -------------------------------------------------------------------------------------
def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page_of(name: str) -> dict[str, Any]:
    return {"type": "object", "required": ["items", "next_cursor"],
            "properties": {"items": {"type": "array", "items": _ref(name)},
                           "next_cursor": {"type": ["string", "null"],
                                           "description": "pass as ?cursor= for the next page"}}}


_TS = {"type": ["string", "null"], "format": "date-time"}
_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 description of ``/admin/api/v1`` (served at ``/admin/api/v1/openapi.json``)."""
    reasons = {"type": "string", "enum": list(REASONS)}

    def q(name: str, desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": desc, "schema": schema or _STR}

    def p(name: str, desc: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "description": desc, "schema": _STR}

    def ok(schema: dict[str, Any], desc: str = "OK") -> dict[str, Any]:
        return {"description": desc, "content": {"application/json": {"schema": schema}}}

    errors = {str(c): {"description": d, "content": {"application/json": {"schema": _ref("Error")}}}
              for c, d in ((400, "bad parameter"), (401, "no or wrong credentials"),
                           (403, "plain HTTP or cross-origin"), (404, "not found"),
                           (409, "not possible in the current state"))}

    def op(summary: str, response: dict[str, Any], params: list[dict[str, Any]] | None = None,
           body: dict[str, Any] | None = None, op_id: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {"summary": summary, "operationId": op_id, "parameters": params or [],
                               "responses": {"200": response, **errors}}
        if body is not None:
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        return out

    serial = p("serial", "certificate serial number in hex, as `openssl x509 -serial` prints it")
    device = p("device", "device key (32 hex characters)")
    reason_body = {"type": "object", "properties": {"reason": reasons, "ca": _STR}}
    paths: dict[str, Any] = {
        "/health": {"get": op("Service health: ledger, CRL state per CA, pending count",
                              ok(_ref("Health")), op_id="health")},
        "/overview": {"get": op("Fleet overview: counts by profile, expiring soon, recent enrollments",
                                ok(_ref("Overview")), op_id="overview")},
        "/charts": {"get": op("Chart data: issued per day and profile (30 days), expiring per week (13 weeks), "
                              "refusals by reason class (30 days)", ok(_ref("Charts")), op_id="charts")},
        "/certificates": {"get": op("List issued certificates, newest first (or soonest expiring)",
                                    ok(_page_of("Certificate")), [
                                        q("profile", "only this profile"),
                                        q("state", "valid, revoked, on_hold, retired or expired",
                                          {"type": "string",
                                           "enum": ["valid", "revoked", "on_hold", "retired", "expired"]}),
                                        q("device", "only this device"),
                                        q("q", "substring of the subject"),
                                        q("expiring_within", "valid and expiring within, e.g. 30d, 12h"),
                                        q("limit", "page size (1-500)", {"type": "integer"}),
                                        q("cursor", "next_cursor of the previous page")],
                                    op_id="listCertificates")},
        "/certificates/{serial}": {"get": op("One certificate with its PEM", ok(_ref("CertificateDetail")),
                                             [serial, q("ca", "CA name when the serial exists under several")],
                                             op_id="getCertificate")},
        "/certificates/{serial}/revoke": {"post": op(
            "Revoke (reason certificate_hold suspends); publishes a new CRL", ok(_ref("CertificateDetail")),
            [serial], reason_body, "revokeCertificate")},
        "/certificates/{serial}/unhold": {"post": op(
            "Release a certificateHold; the certificate leaves the CRL", ok(_ref("CertificateDetail")),
            [serial], {"type": "object", "properties": {"ca": _STR}}, "unholdCertificate")},
        "/devices": {"get": op("Device inventory", ok(_page_of("Device")), [
            q("profile", "only this profile"), q("q", "substring of subject or SAN, or a device key"),
            q("retired", "true or false", {"type": "string", "enum": ["true", "false"]}),
            q("limit", "page size (1-500)", {"type": "integer"}), q("cursor", "next_cursor of the previous page")],
            op_id="listDevices")},
        "/devices/{device}": {"get": op("A device, its certificates and its history", ok(_ref("DeviceDetail")),
                                        [device], op_id="getDevice")},
        "/devices/{device}/revoke": {"post": op("Revoke every certificate of a device", ok(_ref("Revoked")),
                                                [device], reason_body, "revokeDevice")},
        "/devices/{device}/retire": {"post": op(
            "Retire a device: revoke all its certificates, refuse its future enrollments and renewals",
            ok(_ref("Device")), [device], reason_body, "retireDevice")},
        "/pending": {"get": op("Requests waiting for approval", ok(_page_of("Pending")), [
            q("status", "pending (default), approved, issuing, issued, rejected or all")], op_id="listPending")},
        "/pending/{id}/approve": {"post": op("Approve; the client's next poll gets its certificate",
                                             ok(_ref("Pending")), [p("id", "request id")],
                                             {"type": "object"}, "approvePending")},
        "/pending/{id}/reject": {"post": op("Reject; the client's next poll is refused", ok(_ref("Pending")),
                                            [p("id", "request id")],
                                            {"type": "object", "properties": {"reason": _STR}}, "rejectPending")},
        "/challenges": {"post": {**op("Issue a one-time SCEP challenge", ok(_ref("Challenge")), [],
                                      {"type": "object", "required": ["profile"],
                                       "properties": {"profile": _STR, "ttl": {"type": "integer", "minimum": 1}}},
                                      "createChallenge"),
                                 "responses": {"201": ok(_ref("Challenge"), "Created"), **errors}}},
        "/credentials": {
            "get": op("One-time EST credentials (never their passwords), newest first", ok(_page_of("Credential")), [
                q("profile", "only this profile"), q("unused", "1: only those that can still enroll"),
                q("limit", "at most this many (1-500)", {"type": "integer"})], op_id="listCredentials"),
            "post": {**op("Make one-time EST credentials, one per device; the passwords are in this answer only",
                          ok(_page_of("NewCredential")),
                          [q("format", "csv: answer text/csv (user,password,profile,bind,device,uses,expires_at)",
                             {"type": "string", "enum": ["json", "csv"]})],
                          {"type": "object", "required": ["profile"], "properties": {
                              "profile": _STR, "device": _STR, "devices": {"type": "array", "items": _STR},
                              "bind": {"type": "string", "enum": ["serialNumber", "CN"]},
                              "ttl": {"type": ["integer", "string"]}, "uses": {"type": "integer", "minimum": 1}}},
                          "createCredentials"),
                     "responses": {"201": ok(_page_of("NewCredential"), "Created"), **errors}}},
        "/credentials/{id}/revoke": {"post": op("Revoke a one-time EST credential", ok(_ref("Credential")),
                                                [p("id", "credential id (its HTTP Basic user name)")],
                                                {"type": "object"}, "revokeCredential")},
        "/crl/{ca}/publish": {"post": op("Sign and publish a new CRL now", ok(_ref("CRL")), [p("ca", "CA name")],
                                         {"type": "object"}, "publishCrl")},
        "/audit": {"get": op("The decision log, newest first", ok(_page_of("AuditRecord")), [
            q("serial", "only records about this certificate"), q("device", "only records about this device"),
            q("since", "ISO 8601 time, inclusive"), q("until", "ISO 8601 time, exclusive"),
            q("event", "issue, renew, revoke, hold, unhold, approve, reject, retire-device, ..."),
            q("limit", "page size (1-500)", {"type": "integer"}), q("cursor", "next_cursor of the previous page")],
            op_id="listAudit")},
        "/openapi.json": {"get": op("This document", ok({"type": "object"}), op_id="openapi")},
    }
    cert_props = {"serial": _STR, "ca": _STR, "profile": _STR, "device": _NSTR, "subject": _NSTR,
                  "state": {"type": "string", "enum": ["valid", "on_hold", "revoked", "expired", "retired"]},
                  "not_before": _TS, "not_after": _TS, "issued_at": _TS, "revoked_at": _TS,
                  "revocation_reason": _NSTR, "retired": {"type": "boolean"}, "channel": _STR, "requester": _STR,
                  "renews": _NSTR}
    device_props = {"device": _STR, "profile": _STR, "subject": _STR, "sans": {"type": "array", "items": _STR},
                    "first_seen": _TS, "last_issued_at": _TS, "certificates": {"type": "integer"},
                    "active": {"type": "integer"}, "retired": {"type": "boolean"}, "retired_at": _TS,
                    "retired_by": _NSTR, "retire_reason": _NSTR}
    credential_props = {"id": _STR, "profile": _STR, "bind": _STR, "device": _STR, "uses": {"type": "integer"},
                        "uses_left": {"type": "integer"}, "created_at": _TS, "expires_at": _TS,
                        "last_used_at": _TS, "revoked_at": _TS, "created_by": _NSTR}
    schemas = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": _STR}},
        "Certificate": {"type": "object", "properties": cert_props},
        "CertificateDetail": {"type": "object", "properties": {
            **cert_props, "sans": {"type": "array", "items": _STR}, "issuer": _STR, "key_type": _STR,
            "sha256": _STR, "pem": _STR, "transaction_id": _NSTR, "csr_sha256": _STR, "spki_sha256": _STR,
            "retired_at": _TS, "extensions": {"type": "array", "items": {"type": "object"}}}},
        "Device": {"type": "object", "properties": device_props},
        "DeviceDetail": {"type": "object", "properties": {
            **device_props, "items": {"type": "array", "items": _ref("Certificate")},
            "history": {"type": "array", "items": _ref("AuditRecord")}}},
        "Revoked": {"type": "object", "properties": {"revoked": {"type": "array", "items": _STR}}},
        "Pending": {"type": "object", "properties": {
            "id": {"type": "integer"}, "profile": _STR, "status": _STR, "channel": _STR, "requester": _STR,
            "subject": _NSTR, "sans": {"type": "array", "items": _STR}, "csr_sha256": _STR,
            "transaction_id": _NSTR, "created_at": _TS, "decided_at": _TS, "decided_by": _NSTR, "reason": _NSTR,
            "serial": _NSTR}},
        "AuditRecord": {"type": "object", "properties": {
            "id": {"type": "integer"}, "at": _TS, "event": _STR, "ok": {"type": "boolean"}, "channel": _NSTR,
            "profile": _NSTR, "requester": _NSTR, "reason": _NSTR, "serial": _NSTR, "csr_sha256": _NSTR,
            "detail": {"type": ["object", "null"]}}},
        "Challenge": {"type": "object", "properties": {"challenge": _STR, "profile": _STR, "expires_at": _TS}},
        "Credential": {"type": "object", "properties": credential_props},
        "NewCredential": {"type": "object", "properties": {**credential_props, "user": _STR, "password": _STR}},
        "CRL": {"type": "object", "properties": {"ca": _STR, "crl_number": {"type": "integer"},
                                                 "this_update": _TS, "next_update": _TS,
                                                 "entries": {"type": "integer"}}},
        "Health": {"type": "object", "properties": {"status": _STR, "ledger": _STR, "cas": {"type": "object"},
                                                    "pending": {"type": "integer"}, "admin": _STR}},
        "Charts": {"type": "object", "properties": {
            "days": {"type": "array", "items": _STR},
            "issued_per_day": {"type": "object", "additionalProperties": {"type": "array",
                                                                          "items": {"type": "integer"}}},
            "weeks": {"type": "array", "items": _TS},
            "expiring_per_week": {"type": "array", "items": {"type": "integer"}},
            "refusals": {"type": "array", "items": {"type": "object", "properties": {
                "reason": _STR, "count": {"type": "integer"}}}},
            "since": _TS}},
        "Overview": {"type": "object", "properties": {
            "profiles": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                "valid": {"type": "integer"}, "revoked": {"type": "integer"},
                "expiring_7d": {"type": "integer"}, "expiring_30d": {"type": "integer"}}}},
            "pending": {"type": "integer"}, "recent": {"type": "array", "items": _ref("Certificate")},
            "expiring": {"type": "array", "items": _ref("Certificate")}, "admin": _STR}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "enroll admin API", "version": "1",
                 "description": "Certificate lifecycle operations. Authenticate with a bearer token from "
                                "[admin.tokens] or an admin client certificate. Mutating calls are POSTs with "
                                "a JSON body and are audited with the admin's identity."},
        "servers": [{"url": API}],
        "security": [{"bearer": []}, {"adminCertificate": []}],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "adminCertificate": {"type": "mutualTLS",
                                 "description": "a client certificate chaining to [admin] client_trust"}}},
    }
