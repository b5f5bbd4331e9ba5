"""Running behind a load balancer: what a trusted proxy may tell us about the client.

Two shapes (packaging/nginx/):

1. **TLS passthrough** (the proxy routes TCP; enroll terminates TLS and sees the client's own
   certificate and channel binding). Nothing to configure; do not list such a proxy in
   ``trusted_proxies`` (the HTTP headers on that connection come from the client itself).
2. **TLS terminated at the proxy**, which forwards the client certificate it received in the
   header ``[server] client_cert_header`` (nginx ``$ssl_client_escaped_cert``: URL-escaped PEM;
   base64 DER is accepted too) and ``X-Forwarded-Proto: https``. From a peer in
   ``[server] trusted_proxies`` that certificate becomes the request's TLS client certificate
   (``est.http.FORWARDED_TLS``) and goes through the same trust-store and lifecycle checks as a
   handshake's; labels that require PoP linking refuse such requests (the channel binding of the
   client's session is the proxy's, RFC 7030 §3.5).

``X-Forwarded-For`` (rightmost address that is not itself a trusted proxy) becomes the
request's remote address, which the authentication throttle and the audit use. From any other
peer the forwarded headers are removed before a handler sees them.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from cryptography import x509
from multidict import CIMultiDict

from enroll.config import ServerConfig

log = logging.getLogger("enroll.proxy")

FORWARDED_FOR = "X-Forwarded-For"
FORWARDED_PROTO = "X-Forwarded-Proto"

#: A forwarded certificate larger than this is refused unparsed (a chain of one leaf fits easily).
MAX_CERT_HEADER = 16 * 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ProxyPolicy:
    """``[server] trusted_proxies`` and ``client_cert_header``."""

    networks: tuple[Network, ...]
    cert_header: str | None = None

    @classmethod
    def from_config(cls, server: ServerConfig) -> "ProxyPolicy":
        return cls(tuple(ipaddress.ip_network(n) for n in server.trusted_proxies), server.client_cert_header)

    def trusts(self, address: str | None) -> bool:
        """Whether ``address`` (the TCP peer or a hop of X-Forwarded-For) is a trusted proxy."""
        ip = _address(address)
        return ip is not None and any(ip in n for n in self.networks)


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443" as some proxies write it
        text = text[1:text.index("]")]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_address(forwarded_for: Sequence[str], peer: str, policy: ProxyPolicy) -> str:
    """The client's address from the X-Forwarded-For chain a trusted ``peer`` sent.

    Each proxy appends the address it received the request from, so the chain is read from the
    right: the first hop that is not a trusted proxy is the client (anything to its left was
    written by the client and proves nothing). An unparsable hop stops the walk at the last
    address a trusted proxy vouched for.
    """
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    current = peer
    for hop in reversed(hops):
        if not policy.trusts(current):
            break
        ip = _address(hop)
        if ip is None:
            break
        current = str(ip)
    return current


class BadForwardedCertificate(ValueError):
    """The proxy's client-certificate header is not a certificate."""


def decode_forwarded_certificate(value: str) -> x509.Certificate | None:
    """The certificate in a proxy's header: URL-escaped PEM (nginx ``$ssl_client_escaped_cert``),
    PEM, or base64 DER; None when empty (the client sent none)."""
    value = value.strip()
    if not value or value == "-":
        return None
    if len(value) > MAX_CERT_HEADER:
        raise BadForwardedCertificate("forwarded client certificate too large")
    text = urllib.parse.unquote(value) if "%" in value else value
    try:
        if "-----BEGIN" in text:
            return x509.load_pem_x509_certificate(text.encode())
        return x509.load_der_x509_certificate(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, binascii.Error) as exc:
        raise BadForwardedCertificate(f"forwarded client certificate unreadable: {type(exc).__name__}") from None


def _without(request: web.Request, names: Sequence[str]) -> web.Request:
    """The request without the named headers (clients may not speak for a proxy)."""
    present = [n for n in names if n in request.headers]
    if not present:
        return request
    headers = CIMultiDict(request.headers)
    for name in present:
        headers.popall(name)
    log.info(json.dumps({"event": "proxy-headers-dropped", "remote": request.remote, "headers": present}))
    return request.clone(headers=headers)


def middleware(policy: ProxyPolicy) -> Middleware:
    """The front middleware: believe forwarded facts from trusted proxies, drop them otherwise."""
    from est.http import FORWARDED_TLS, ForwardedTls

    forwarded_headers = [FORWARDED_FOR, FORWARDED_PROTO] + ([policy.cert_header] if policy.cert_header else [])

    @web.middleware
    async def proxy(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote or ""
        if not policy.trusts(peer):
            return await handler(_without(request, forwarded_headers))
        remote = client_address(request.headers.getall(FORWARDED_FOR, []), peer, policy)
        headers = None
        cert_header = policy.cert_header
        if cert_header and cert_header in request.headers:
            # consumed here: below this point only FORWARDED_TLS speaks for the proxy
            headers = CIMultiDict(request.headers)
            headers.popall(cert_header)
        forwarded = request.clone(remote=remote) if headers is None else request.clone(remote=remote, headers=headers)
        proto = request.headers.getall(FORWARDED_PROTO, [""])[-1].split(",")[-1].strip().lower()
        if cert_header and proto == "https":
            try:
                cert = decode_forwarded_certificate(",".join(request.headers.getall(cert_header, [])))
            except BadForwardedCertificate as exc:
                log.warning(json.dumps({"event": "proxy-bad-client-certificate", "proxy": peer, "remote": remote,
                                        "error": str(exc)}))
                return web.Response(status=400, text=f"{exc}\n", content_type="text/plain")
            forwarded[FORWARDED_TLS] = ForwardedTls(cert)
        return await handler(forwarded)

    return proxy
