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

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509

from ca.api import Requester
from ca.errors import CAError, ConfigError, NotFoundError
from ca.issuer import Issuer
from ca.ledger import CertificateQuery, CertState, serial_hex
from ca.records import PendingStatus
from enroll.body import BodyError
from enroll.config import Config
from enroll.config_toml import load_certs, parse_duration

from enroll.admin_auth import AdminAuth, AdminCRL, same_origin
from enroll.admin_charts import chart_data
from enroll.admin_params import int_param, json_body, reason_field, serial_param, time_param
from enroll.admin_openapi import openapi
from enroll.admin_views import (
    API,
    audit_json,
    cert_detail_json,
    cert_json,
    device_json,
    iso,
    json_error,
    pending_json,
)
log = logging.getLogger("enroll.admin")

PAGE_DIR = Path(__file__).resolve().parent / "admin_page"
PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}

Handler = Callable[[web.Request, Requester], Awaitable[Any]]


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
        pending = len(await self.issuer.list_pending(PendingStatus.PENDING))
        return {"status": "ok", "ledger": "ok", "cas": cas, "pending": pending, "admin": who.principal}

    async def overview(self, request: web.Request, who: Requester) -> dict[str, Any]:
        now = time.time()
        counts = await self.issuer.ledger.counts_by_profile(now, [now + 7 * 86400, now + 30 * 86400])
        profiles = {}
        for name in sorted(set(self.issuer.profiles) | set(counts)):
            c = counts.get(name, {})
            profiles[name] = {**{st.value: c.get(st.value, 0) for st in CertState},
                              "expiring_7d": c.get("expiring_0", 0), "expiring_30d": c.get("expiring_1", 0)}
        recent = await self.issuer.ledger.query_certificates(CertificateQuery(limit=10), now)
        expiring = await self.issuer.expiring(30 * 86400, limit=10)
        return {"profiles": profiles, "pending": len(await self.issuer.list_pending(PendingStatus.PENDING)),
                "recent": [cert_json(r, now) for r in recent], "expiring": [cert_json(r, now) for r in expiring],
                "admin": who.principal}

    async def charts(self, request: web.Request, who: Requester) -> dict[str, Any]:
        """The admin page's charts: certificates issued per UTC day and profile (last 30 days),
        valid certificates expiring per week (next 13 weeks), refusals by reason class (30 days)."""
        return await chart_data(self.issuer, time.time())

    async def certificates(self, request: web.Request, who: Requester) -> dict[str, Any]:
        q = request.query
        state = q.get("state") or None
        if state is not None and state not in {st.value for st in CertState}:
            raise json_error(400, f"state must be {', '.join(st.value for st in CertState)}")
        limit = int_param(request, "limit", 50) or 50
        cursor = int_param(request, "cursor", None, 1, 2**62)
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
        rec = await self.issuer.get_certificate(serial_param(request.match_info["serial"]), request.query.get("ca"))
        return cert_detail_json(rec)

    async def revoke(self, request: web.Request, who: Requester) -> dict[str, Any]:
        body = await json_body(request)
        rec = await self.issuer.revoke(serial_param(request.match_info["serial"]), reason_field(body, "unspecified"),
                                       body.get("ca") if isinstance(body.get("ca"), str) else None, by=who)
        return cert_detail_json(rec)

    async def unhold(self, request: web.Request, who: Requester) -> dict[str, Any]:
        body = await json_body(request)
        rec = await self.issuer.unhold(serial_param(request.match_info["serial"]),
                                       body.get("ca") if isinstance(body.get("ca"), str) else None, by=who)
        return cert_detail_json(rec)

    async def devices(self, request: web.Request, who: Requester) -> dict[str, Any]:
        q = request.query
        limit = int_param(request, "limit", 50) or 50
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
        body = await json_body(request)
        done = await self.issuer.revoke_device(request.match_info["device"], reason_field(body, "unspecified"), by=who)
        return {"revoked": [serial_hex(r.serial) for r in done]}

    async def device_retire(self, request: web.Request, who: Requester) -> dict[str, Any]:
        body = await json_body(request)
        done = await self.issuer.retire_device(request.match_info["device"],
                                               reason_field(body, "cessation_of_operation"), by=who)
        dev = await self.issuer.get_device(request.match_info["device"])
        return {**device_json(dev), "revoked": [serial_hex(r.serial) for r in done]}

    async def pending(self, request: web.Request, who: Requester) -> dict[str, Any]:
        status = request.query.get("status", PendingStatus.PENDING.value)
        if status != "all" and status not in {s.value for s in PendingStatus}:
            raise json_error(400, f"status must be {', '.join(PendingStatus)} or all")
        rows = await self.issuer.list_pending(None if status == "all" else PendingStatus(status))
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
        await json_body(request)
        ok = await self.issuer.approve(int(request.match_info["id"]), who)
        return await self._pending_decision(request, ok)

    async def reject(self, request: web.Request, who: Requester) -> dict[str, Any]:
        body = await json_body(request)
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 500:
            raise json_error(400, "reason must be a string (at most 500 characters)")
        ok = await self.issuer.reject(int(request.match_info["id"]), who, reason)
        return await self._pending_decision(request, ok)

    async def challenge(self, request: web.Request, who: Requester) -> web.Response:
        body = await json_body(request)
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
        from enroll.credentials import credential_json, credentials_csv

        body = await json_body(request)
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
        limit = int_param(request, "limit", 500) or 500
        return {"items": [credential_json(r) for r in rows[:limit]], "next_cursor": None}

    async def credential_revoke(self, request: web.Request, who: Requester) -> dict[str, Any]:
        from enroll.credentials import credential_json

        await json_body(request)
        return credential_json(await self.issuer.revoke_credential(request.match_info["id"], by=who))

    async def publish_crl(self, request: web.Request, who: Requester) -> dict[str, Any]:
        await json_body(request)
        crl = await self.issuer.publish_crl(request.match_info["ca"], by=who)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        return {"ca": request.match_info["ca"], "crl_number": number,
                "this_update": iso(crl.last_update_utc.timestamp()),
                "next_update": iso(crl.next_update_utc.timestamp()) if crl.next_update_utc else None,
                "entries": len(crl)}

    async def audit(self, request: web.Request, who: Requester) -> dict[str, Any]:
        q = request.query
        limit = int_param(request, "limit", 100) or 100
        serials = [serial_param(q["serial"])] if q.get("serial") else None
        device = q.get("device") or None
        if device is not None:
            device = (await self.issuer.get_device(device)).device
            serials = [c.serial for c in await self.issuer.device_certificates(device)]
        rows = await self.issuer.ledger.audit_records(
            limit + 1, serials=serials, device=device, since=time_param(request, "since"),
            until=time_param(request, "until"),
            event=q.get("event") or None, before_id=int_param(request, "cursor", None, 1, 2**62))
        more = len(rows) > limit
        rows = rows[:limit]
        return {"items": [audit_json(a) for a in rows], "next_cursor": str(rows[-1].id) if more else None}


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
            if not same_origin(request):
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


