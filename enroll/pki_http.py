"""The PKI publication endpoints every relying party reads: CRLs (RFC 5280 §4.2.1.13), CA
certificates for AIA caIssuers (RFC 5280 §4.2.2.1) and the OCSP responder (RFC 6960 Appendix A)."""

from __future__ import annotations

import base64
import binascii
import time
import urllib.parse

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from ca import ocsp
from ca.errors import CAError
from ca.issuer import Issuer
from enroll.body import BodyError, read_body
from enroll.metrics import Metrics


def _http_date(ts: float) -> str:
    from email.utils import formatdate

    return formatdate(ts, usegmt=True)


OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"


def decode_ocsp_get(raw_path_tail: str) -> bytes | None:
    """The DER request of an OCSP GET (RFC 6960 Appendix A.1: base64 of the DER, URL-encoded).

    Percent-decoding keeps '+' (it is base64, not a form); the URL-safe alphabet, missing
    padding and whitespace are tolerated, as clients differ there.
    """
    text = urllib.parse.unquote(raw_path_tail)
    text = "".join(text.split()).replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class Publication:
    """The handlers of ``/crl/{ca}.crl``, ``/ca/{ca}.crt`` and ``/ocsp``, over one issuance core."""

    def __init__(self, issuer: Issuer, metrics: Metrics) -> None:
        self.issuer = issuer
        self.metrics = metrics

    def mount(self, app: web.Application) -> None:
        """Add the routes to ``app``."""
        app.router.add_get("/crl/{ca}.crl", self.crl)
        app.router.add_get("/ca/{ca}.crt", self.ca_cert)
        app.router.add_post("/ocsp", self.ocsp)
        app.router.add_post("/ocsp/", self.ocsp)
        app.router.add_get("/ocsp/{request:.+}", self.ocsp)

    async def crl(self, request: web.Request) -> web.Response:
        """The CRL named in issued certificates' CRL Distribution Points (RFC 5280 §4.2.1.13).

        Served from the ledger's copy (re-signed on revocation and at half its lifetime), with HTTP
        caching until nextUpdate so caches and relying parties do not refetch needlessly.
        """
        issuer = self.issuer
        name = request.match_info["ca"]
        if name not in issuer.cas:
            raise web.HTTPNotFound(text=f"no CA named {name!r}\n")
        try:
            crl = await issuer.crl_for_ca(name)
        except CAError as exc:
            raise web.HTTPServiceUnavailable(text=exc.detail + "\n") from None
        headers = {"Content-Type": "application/pkix-crl",
                   "Last-Modified": _http_date(crl.last_update_utc.timestamp())}
        if crl.next_update_utc is not None:
            # Half the remaining lifetime: a cache never holds a CRL past the point we re-sign it.
            age = max(0, int((crl.next_update_utc.timestamp() - time.time()) / 2))
            headers["Cache-Control"] = f"public, max-age={min(age, 3600)}, no-transform"
            headers["Expires"] = _http_date(crl.next_update_utc.timestamp())
        return web.Response(body=crl.public_bytes(serialization.Encoding.DER), headers=headers)

    async def ca_cert(self, request: web.Request) -> web.Response:
        """The CA certificate, DER, for AIA caIssuers (RFC 5280 §4.2.2.1)."""
        issuer = self.issuer
        name = request.match_info["ca"]
        if name not in issuer.cas:
            raise web.HTTPNotFound(text=f"no CA named {name!r}\n")
        chain = await issuer.cas[name].backend.ca_chain()
        return web.Response(body=chain.issuer.public_bytes(serialization.Encoding.DER),
                            headers={"Content-Type": "application/pkix-cert", "Cache-Control": "public, max-age=86400"})

    async def ocsp(self, request: web.Request) -> web.Response:
        """The OCSP responder (RFC 6960 Appendix A: GET with the request in the path, or POST)."""
        issuer, metrics = self.issuer, self.metrics
        if request.method == "POST":
            try:
                der: bytes | None = await read_body(request, ocsp.MAX_REQUEST_BYTES)
            except BodyError as exc:
                metrics.ocsp.labels("malformed").inc()
                return await exc.respond(request)
        else:
            tail = request.raw_path.split("?", 1)[0][len("/ocsp/"):]
            der = decode_ocsp_get(tail) if len(tail) <= 2 * ocsp.MAX_REQUEST_BYTES else None
        answer, outcome = await issuer.ocsp(der if der is not None else b"")
        metrics.ocsp.labels(outcome).inc()
        headers = {"Content-Type": OCSP_RESPONSE}
        if request.method == "GET" and outcome in ("good", "revoked", "unknown"):
            headers["Cache-Control"] = "max-age=60, public, no-transform, must-revalidate"
        else:
            headers["Cache-Control"] = "no-store"
        return web.Response(body=answer, headers=headers)
