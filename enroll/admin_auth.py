"""Who may use the admin API and page: bearer tokens (scrypt hashes) or admin client certificates
from anchors of their own, narrowed by an allow-list of fingerprints and a CRL (README, "Admin
API"; RFC 6797 HSTS on every HTTPS answer)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path

from aiohttp import web
from cryptography import x509

from ca.api import AuthMethod, Requester
from ca.authz import verify_secret
from ca.errors import ConfigError
from ca.issuer import Issuer
from enroll.config_admin import AdminConfig, fingerprint
from enroll.config_toml import load_crl

from enroll.admin_views import json_error

log = logging.getLogger("enroll.admin")


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


def same_origin(request: web.Request) -> bool:
    """No Origin (curl, scripts) or our own; a browser on another site sends its own Origin."""
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


