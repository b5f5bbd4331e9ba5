"""Thin aiohttp handlers for EST (RFC 7030 §3.2): routing, method and size checks, extraction of
TLS facts and Basic credentials, and rendering of :class:`EstResponse` / :class:`EstError`.
Every rule lives in ``est/service.py`` and the modules it calls (est/pop.py, est/csrattrs.py,
est/serverkeygen.py)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from cryptography import x509

from ca.errors import CAError
from est.errors import (
    EstError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    from_ca_error,
)
from est.service import Credentials, EstResponse, EstService, TlsInfo
from est.settings import METHODS

log = logging.getLogger("enroll.est")

EST_PREFIX = "/.well-known/est"
EST_SERVICE = web.AppKey("est_service", EstService)


@dataclass(frozen=True)
class ForwardedTls:
    """The TLS facts a trusted TLS-terminating proxy forwarded: the client certificate it
    received (unverified: the core checks it like a handshake's, RFC 7030 §3.3.2), or None."""

    certificate: x509.Certificate | None


#: Set only by the front middleware (enroll/proxy.py) for a request from ``[server]
#: trusted_proxies`` that the proxy says arrived over HTTPS.
FORWARDED_TLS = web.RequestKey("est_forwarded_tls", ForwardedTls)


def tls_info(request: web.Request) -> TlsInfo | None:
    """TLS facts of the request's connection, or None on plain HTTP.

    Behind a trusted TLS-terminating proxy they are the forwarded ones: the client's certificate
    and ``via_proxy`` (the client's session has no channel binding we could check)."""
    forwarded = request.get(FORWARDED_TLS)
    if forwarded is not None:
        return TlsInfo(version=None, peer_certificate=forwarded.certificate, remote=request.remote, via_proxy=True)
    transport = request.transport
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if sslobj is None:
        return None
    version = sslobj.version()
    peer = None
    der = sslobj.getpeercert(binary_form=True)
    if der:
        try:
            peer = x509.load_der_x509_certificate(der)
        except ValueError:
            peer = None
    tls_unique = None
    if version == "TLSv1.2":
        # RFC 5929 §3; on TLS 1.3 the stdlib still returns bytes, but they bind nothing
        # (python/cpython#95341), so they are never read there.
        value = sslobj.get_channel_binding("tls-unique")
        tls_unique = bytes(value) if value else None
    tls_exporter = None
    export = getattr(sslobj, "export_keying_material", None)
    if version == "TLSv1.3" and export is not None:
        # RFC 9266 §2: "EXPORTER-Channel-Binding", zero-length context, 32 bytes. Only a TLS
        # stack that can export offers this ([tls] engine = "pyopenssl"); Python's ssl cannot.
        tls_exporter = bytes(export(b"EXPORTER-Channel-Binding", 32, b""))
    return TlsInfo(version=version, peer_certificate=peer, tls_unique=tls_unique,
                   tls_exporter=tls_exporter, remote=request.remote)


def basic_credentials(request: web.Request) -> Credentials | None:
    """HTTP Basic credentials (RFC 7617 §2) or None when no Basic header was sent."""
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return Credentials("", "", malformed=True)
    user, sep, password = decoded.partition(":")
    if not sep:
        return Credentials("", "", malformed=True)
    return Credentials(user, password)


#: Seconds a client has to send its whole body once the head is in (a slow-POST attack holds a
#: connection and a handler for as long as the body trickles).
BODY_TIMEOUT = 30.0


async def read_body(request: web.Request, cap: int, timeout: float | None = None) -> bytes:
    """Read at most ``cap`` bytes within ``timeout`` seconds; larger bodies are 413 before any
    parsing, slower ones 408."""
    if request.content_length is not None and request.content_length > cap:
        raise PayloadTooLarge(f"request body larger than {cap} bytes")
    timeout = BODY_TIMEOUT if timeout is None else timeout
    chunks = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await request.content.read(min(65536, cap + 1 - len(chunks)))
                if not chunk:
                    break
                chunks += chunk
                if len(chunks) > cap:
                    raise PayloadTooLarge(f"request body larger than {cap} bytes")
    except TimeoutError:
        raise EstError(f"request body not received within {timeout:g} seconds", status=408,
                       headers={"Connection": "close"}) from None
    return bytes(chunks)


def render(resp: EstResponse) -> web.Response:
    """Send exactly the service's headers (byte-exact Content-Type, RFC 7030 §4)."""
    return web.Response(status=resp.status, body=resp.body, headers=dict(resp.headers))


def render_error(err: EstError) -> web.Response:
    """Errors are text/plain (RFC 8951 §3.2 / erratum 5108) with their status headers."""
    headers = {"Content-Type": "text/plain; charset=utf-8", **err.headers}
    return web.Response(status=err.status, body=(err.detail.rstrip("\n") + "\n").encode(),
                        headers=headers)


def make_handler(service: EstService, *, require_tls: bool = True
                 ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The single EST handler for ``/.well-known/est[/<label>]/<op>``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        label = request.match_info.get("label", "")
        op = request.match_info["op"]
        try:
            if op not in METHODS:
                raise NotFound(f"unknown EST operation {op!r}")
            service.rule(label)  # unknown label: 404 before anything else
            method = METHODS[op]
            allowed = (method, "HEAD") if method == "GET" else (method,)
            if request.method not in allowed:
                raise MethodNotAllowed(f"{op} takes {method}", allow=", ".join(allowed))
            tls = tls_info(request)
            if tls is None:
                if require_tls:
                    raise Forbidden("EST is served over HTTPS only (RFC 7030 §3.2.1)")
                tls = TlsInfo(remote=request.remote)
            # the answer's base64 layout follows the client (est/quirks.py)
            agent = request.headers.get("User-Agent")
            if op == "cacerts":
                return render(await service.cacerts(label, agent))
            if op == "csrattrs":
                return render(await service.csrattrs(label, agent))
            if op in ("simpleenroll", "simplereenroll", "serverkeygen"):
                await service.check_content_type(label, op, request.headers.get("Content-Type"), request.remote)
            body = await read_body(request, service.settings.max_body_bytes)
            creds = basic_credentials(request)
            if op == "fullcmc":
                return render(await service.fullcmc(label, body, tls, creds, agent,
                                                    content_type=request.headers.get("Content-Type")))
            if op == "simpleenroll":
                return render(await service.simpleenroll(label, body, tls, creds, agent))
            if op == "simplereenroll":
                return render(await service.simplereenroll(label, body, tls, creds, agent))
            return render(await service.serverkeygen(label, body, tls, creds, agent))
        except EstError as err:
            if err.status >= 500 and err.status != 501:
                log.error("est %s %s: %s", op, label or "-", getattr(err, "cause", err.detail))
            return render_error(err)
        except CAError as err:
            mapped = from_ca_error(err, realm=service.settings.realm)
            if mapped.status >= 500:
                log.error("est %s %s: %s", op, label or "-", err.detail)
            return render_error(mapped)

    return handle


def setup(app: web.Application, service: EstService, *, require_tls: bool = True) -> None:
    """Add the EST routes (RFC 7030 §3.2.2) to ``app``."""
    app[EST_SERVICE] = service
    handler = make_handler(service, require_tls=require_tls)
    app.router.add_route("*", EST_PREFIX + "/{op}", handler)
    app.router.add_route("*", EST_PREFIX + "/{label}/{op}", handler)
