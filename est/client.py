"""Async EST client (RFC 7030 §4, RFC 8951) on aiohttp.

- The server is authenticated against an **explicit** trust anchor only (RFC 7030 §3.6.1):
  there is no "insecure" switch; hostname checking stays on.
- HTTP Basic (RFC 7030 §3.2.3) is sent only over that authenticated TLS session.
- TLS client certificates (RFC 7030 §3.3.2) for enrollment and re-enrollment.
- PoP linking (RFC 7030 §3.5): the CSR's challengePassword is base64(tls-unique) of the very
  TLS session that carries it. tls-unique exists on TLS 1.2 only (RFC 9266 §1), and the stdlib
  cannot export keying material for tls-exporter (python/cpython#82133), so PoP linking pins
  the session to TLS 1.2 -- unless ``pop_binding="tls-exporter"``: then each PoP-linked POST
  goes on its own TLS 1.3 connection made with pyOpenSSL (est/client_tls13.py), whose RFC 9266
  exporter the CSR carries.
- 202 + Retry-After (RFC 7030 §4.2.3) is polled by re-POSTing the same CSR, bounded by
  ``max_polls`` and ``max_wait``.

One cohesive thing: the client side of every EST operation on one aiohttp session, with the
session-bound PoP linking and 202 polling that make one CSR POST; the TLS 1.3 exporter POST is
est/client_tls13.py.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import AttributeOID

from est import asn1, client_tls13, cmc, serverkeygen_cms, wire
from est.errors import EstError, ProtocolError

POP_BINDINGS = ("tls-unique", "tls-exporter")

#: A CSR, or a function building one from the PoP challenge (None when PoP is off).
CsrInput = x509.CertificateSigningRequest | Callable[[bytes | None], x509.CertificateSigningRequest]


class EnrollmentPending(EstError):
    """The server still answers 202 after the polling budget (RFC 7030 §4.2.3)."""

    status = 202

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


@dataclass(frozen=True)
class EnrollResult:
    """Certificates from a certs-only answer; ``certificate`` matches the CSR's key."""

    certificate: x509.Certificate
    certificates: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class ServerKeygenResult:
    """A /serverkeygen outcome: the private key the server generated and its certificate."""

    private_key: PrivateKeyTypes
    certificate: x509.Certificate
    certificates: tuple[x509.Certificate, ...]
    encrypted: bool


def est_base_url(url: str, label: str | None = None) -> str:
    """Normalise ``https://host[:port][/.well-known/est[/label]]`` to the operation base
    (RFC 7030 §3.2.2). A ``label`` argument replaces any label in the URL."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ValueError("EST runs over https only (RFC 7030 §3.2.1)")
    path = parts.path.rstrip("/")
    marker = "/.well-known/est"
    if marker in path:
        prefix = path[: path.index(marker) + len(marker)]
        rest = path[len(prefix) :].strip("/")
    else:
        prefix, rest = path + marker, ""
    if label is not None:
        rest = label.strip("/")
    if "/" in rest:
        raise ValueError("an EST label is exactly one path segment (RFC 7030 §3.2.2)")
    full = prefix + (f"/{rest}" if rest else "")
    return urlunsplit((parts.scheme, parts.netloc, full, "", ""))


def build_csr(
    key: CertificateIssuerPrivateKeyTypes,
    subject: x509.Name,
    *,
    sans: list[x509.GeneralName] | None = None,
    challenge: bytes | None = None,
    extra_attributes: list[tuple[str, bytes]] | None = None,
) -> x509.CertificateSigningRequest:
    """A PKCS#10 request (RFC 2986) with an optional challengePassword and extra OCTET STRING
    attributes such as DecryptKeyIdentifier (RFC 7030 §4.4.1.1)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge)
    for oid, value in extra_attributes or []:
        builder = builder.add_attribute(
            x509.ObjectIdentifier(oid), value, _tag=x509.name._ASN1Type.OctetString
        )
    return builder.sign(key, wire.csr_signature_hash(key))


def _retry_after_seconds(value: str | None, default: int) -> int:
    """Retry-After as delta-seconds or HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0, int(when.timestamp() - time.time()))


class EstClient:
    """One EST server (one label). Use as ``async with EstClient(...) as est:``."""

    def __init__(
        self,
        url: str,
        *,
        trust_anchor: str | Path | bytes,
        label: str | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        username: str | None = None,
        password: str | None = None,
        pop: bool = False,
        timeout: float = 30.0,
        max_polls: int = 10,
        max_wait: float = 600.0,
        min_poll_interval: float = 1.0,
        max_poll_interval: float = 300.0,
        server_hostname: str | None = None,
        pop_binding: str = "tls-unique",
    ) -> None:
        if pop_binding not in POP_BINDINGS:
            raise ValueError(f"pop_binding must be one of {', '.join(POP_BINDINGS)}")
        self.base = est_base_url(url, label)
        self.pop_binding = pop_binding
        self.trust_anchor = trust_anchor
        self.client_cert = client_cert
        self.client_key = client_key
        self.username = username
        self.password = password
        self.pop = pop
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_polls = max_polls
        self.max_wait = max_wait
        self.min_poll_interval = min_poll_interval
        self.max_poll_interval = max_poll_interval
        self.server_hostname = server_hostname
        self.ssl = self._ssl_context(trust_anchor, client_cert, client_key, pop)
        self._session: aiohttp.ClientSession | None = None

    @staticmethod
    def _ssl_context(
        trust_anchor: str | Path | bytes,
        client_cert: str | Path | None,
        client_key: str | Path | None,
        pop: bool,
    ) -> ssl.SSLContext:
        """Explicit trust anchor database only (RFC 7030 §3.6.1): no system roots, no
        ``CERT_NONE``, hostname verified."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if isinstance(trust_anchor, bytes):
            ctx.load_verify_locations(cadata=trust_anchor.decode("ascii"))
        else:
            ctx.load_verify_locations(cafile=str(trust_anchor))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        if client_cert is not None:
            ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        if pop:
            # tls-unique is only defined up to TLS 1.2 (RFC 5929 §3, RFC 9266 §1).
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    async def __aenter__(self) -> EstClient:
        # limit=1 keeps every request of this client on one TLS session when the server allows
        # keep-alive: PoP linking needs the CSR to travel on the session it names.
        connector = aiohttp.TCPConnector(ssl=self.ssl, limit=1)
        headers = {}
        if self.username is not None:
            # Pre-emptive Basic is safe here: the TLS handshake already authenticated the server
            # against the explicit trust anchor (RFC 7030 §3.2.3, §3.6.1).
            headers["Authorization"] = aiohttp.encode_basic_auth(self.username, self.password or "")
        self._session = aiohttp.ClientSession(
            connector=connector, headers=headers, timeout=self.timeout, auto_decompress=False
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use EstClient as an async context manager")
        return self._session

    def url(self, op: str) -> str:
        """The URL of an EST operation (RFC 7030 §3.2.2)."""
        return f"{self.base}/{op}"

    def _req_kwargs(self) -> dict[str, Any]:
        return {"server_hostname": self.server_hostname} if self.server_hostname else {}

    # --- operations ---------------------------------------------------------------------

    async def cacerts(self) -> tuple[x509.Certificate, ...]:
        """GET /cacerts (RFC 7030 §4.1): the CA certificates, anonymous."""
        async with self.session.get(self.url("cacerts"), **self._req_kwargs()) as resp:
            body = await resp.read()
            self._raise_for_status(resp, body)
        return wire.decode_certs_only(self._b64(body))

    async def csrattrs(self) -> tuple[asn1.AttrOrOid, ...]:
        """GET /csrattrs (RFC 7030 §4.5); 204/404 mean nothing to advertise."""
        async with self.session.get(self.url("csrattrs"), **self._req_kwargs()) as resp:
            body = await resp.read()
            if resp.status in (204, 404):
                return ()
            self._raise_for_status(resp, body)
        if not body.strip(b"\x00\r\n \t"):
            return ()
        try:
            return asn1.decode_csrattrs(self._b64(body))
        except EstError as exc:
            raise ProtocolError(f"csrattrs: {exc.detail}") from None

    async def enroll(self, csr: CsrInput) -> EnrollResult:
        """POST /simpleenroll (RFC 7030 §4.2.1)."""
        return await self._enroll("simpleenroll", csr)

    async def reenroll(self, csr: CsrInput) -> EnrollResult:
        """POST /simplereenroll (RFC 7030 §4.2.2); the client certificate must be the one being
        renewed, and the CSR must repeat its subject and SAN."""
        return await self._enroll("simplereenroll", csr)

    async def enroll_cmc(self, csr: CsrInput, *, transaction_id: int | None = None,
                         sender_nonce: bytes | None = None) -> cmc.CmcResponse:
        """POST a Full PKI Request (RFC 7030 §4.3, RFC 5272 §3.2): one PKCS#10 request with a
        transactionId and senderNonce (random when not given); a pending answer is polled by
        re-sending the same request (same transactionId and key) within the polling budget.
        Returns the decoded PKIResponse; an HTTP error with a CMC body raises EstError."""
        import secrets

        tid = secrets.randbits(63) if transaction_id is None else transaction_id
        nonce = secrets.token_bytes(16) if sender_nonce is None else sender_nonce
        deadline = time.monotonic() + self.max_wait
        polls = 0
        while True:
            if isinstance(csr, x509.CertificateSigningRequest):
                current = csr
            else:
                if self.pop and self.pop_binding == "tls-exporter":
                    raise ProtocolError("fullcmc with tls-exporter PoP linking is not supported by this client")
                binding = await self._prime_session() if self.pop else None
                current = csr(base64.b64encode(binding) if binding is not None else None)
            der = cmc.build_request(current.public_bytes(serialization.Encoding.DER),
                                    transaction_id=tid, sender_nonce=nonce)
            status, body = await self.fullcmc(der)
            try:
                resp = cmc.parse_response(self._b64(body))
            except (ValueError, TypeError, KeyError):
                text = body.decode("utf-8", "replace").strip()[:500]
                raise EstError(f"HTTP {status}: {text}", status=status) from None
            if resp.recipient_nonce != nonce:
                raise ProtocolError("fullcmc: the recipientNonce does not echo our senderNonce (RFC 5272 §6.6)")
            if resp.status is cmc.Status.PENDING:
                polls += 1
                wait = min(max(60.0, self.min_poll_interval), self.max_poll_interval)
                if polls > self.max_polls or time.monotonic() + wait > deadline:
                    raise EnrollmentPending(resp.status_string or "request pending", retry_after=int(wait))
                await asyncio.sleep(wait)
                continue
            if resp.status is not cmc.Status.SUCCESS or status != 200:
                raise EstError(f"HTTP {status}: CMC {resp.status.name.lower()}"
                               f" (failInfo {resp.fail_info}): {resp.status_string or ''}".rstrip(),
                               status=status if status >= 400 else 400)
            self._matching(resp.certificates, current.public_key())
            return resp

    async def serverkeygen(
        self,
        csr: CsrInput,
        *,
        kek: serverkeygen_cms.KekRecipient | None = None,
        decrypt_key: PrivateKeyTypes | None = None,
    ) -> ServerKeygenResult:
        """POST /serverkeygen (RFC 7030 §4.4). With ``kek`` (DecryptKeyIdentifier) or
        ``decrypt_key`` (AsymmetricDecryptKeyIdentifier) the key comes back encrypted and is
        opened here; the caller must have put the identifier into the CSR."""
        ctype, body, _ = await self._post_csr("serverkeygen", csr)
        mtype, _params = wire.parse_media_type(ctype)
        if mtype != wire.CT_MULTIPART_MIXED:
            raise ProtocolError(f"serverkeygen answered {ctype!r}, not multipart/mixed")
        result = wire.parse_serverkeygen_response(ctype, body)
        if result.encrypted:
            opened = serverkeygen_cms.open_server_generated_key(
                result.key_der, kek=kek, private_key=decrypt_key
            )
            key = opened.private_key
        else:
            try:
                key = serialization.load_der_private_key(result.key_der, password=None)
            except (ValueError, TypeError) as exc:
                raise ProtocolError(f"serverkeygen key part does not load: {exc}") from None
        cert = self._matching(result.certificates, key.public_key())
        return ServerKeygenResult(key, cert, result.certificates, result.encrypted)

    async def fullcmc(self, body: bytes) -> tuple[int, bytes]:
        """POST /fullcmc raw (RFC 7030 §4.3): returns (status, body) for conformance checks."""
        async with self.session.post(
            self.url("fullcmc"),
            data=wire.encode_base64(body),
            headers={"Content-Type": wire.CT_CMC_REQUEST},
            **self._req_kwargs(),
        ) as resp:
            return resp.status, await resp.read()

    # --- internals ----------------------------------------------------------------------

    async def _enroll(self, op: str, csr: CsrInput) -> EnrollResult:
        ctype, body, sent = await self._post_csr(op, csr)
        mtype, _ = wire.parse_media_type(ctype)
        if mtype != wire.CT_CACERTS:
            raise ProtocolError(f"{op} answered {ctype!r}, not application/pkcs7-mime")
        certs = wire.decode_certs_only(self._b64(body))
        return EnrollResult(self._matching(certs, sent.public_key()), certs)

    @staticmethod
    def _matching(certs: tuple[x509.Certificate, ...], public_key: Any) -> x509.Certificate:
        want = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for cert in certs:
            got = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            if got == want:
                return cert
        raise ProtocolError("no returned certificate carries the requested public key")

    @staticmethod
    def _b64(body: bytes) -> bytes:
        try:
            return wire.decode_base64_body(body)
        except EstError as exc:
            raise ProtocolError(f"response body: {exc.detail}") from None

    @staticmethod
    def _raise_for_status(resp: aiohttp.ClientResponse, body: bytes) -> None:
        EstClient._raise_for_status_code(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)

    @staticmethod
    def _raise_for_status_code(status: int, headers: dict[str, str], body: bytes) -> None:
        if status == 200:
            return
        text = body.decode("utf-8", "replace").strip()[:500]
        names = {"www-authenticate": "WWW-Authenticate", "allow": "Allow", "retry-after": "Retry-After"}
        kept = {names[k]: v for k, v in headers.items() if k in names}
        raise EstError(f"HTTP {status}: {text}", status=status, headers=kept)

    @staticmethod
    def _tls_unique(resp: aiohttp.ClientResponse) -> bytes | None:
        """tls-unique of the TLS session that carried ``resp``.

        aiohttp releases the connection as soon as a short body is complete, so
        ``resp.connection`` may already be None; the response's protocol object keeps the
        transport (private attribute, checked for, never required)."""
        transport = None
        proto = getattr(resp, "_protocol", None)
        if proto is not None:
            transport = getattr(proto, "transport", None)
        if transport is None and resp.connection is not None:
            transport = resp.connection.transport
        if transport is None:
            return None
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is None or sslobj.version() != "TLSv1.2":
            return None
        value = sslobj.get_channel_binding("tls-unique")
        return bytes(value) if value else None

    async def _prime_session(self) -> bytes:
        """Open the TLS session and read its tls-unique (RFC 5929 §3) with an anonymous
        GET /cacerts, leaving the connection in the pool for the POST that follows."""
        async with self.session.get(self.url("cacerts"), **self._req_kwargs()) as resp:
            binding = self._tls_unique(resp)
            await resp.read()
        if binding is None:
            raise ProtocolError("PoP linking needs a TLS 1.2 session with tls-unique")
        return binding

    async def _post_csr(
        self, op: str, csr: CsrInput
    ) -> tuple[str, bytes, x509.CertificateSigningRequest]:
        """POST a CSR, rebuilding it per session when PoP-linked, polling 202 answers."""
        deadline = time.monotonic() + self.max_wait
        polls = 0
        pop_retries = 0
        fixed: x509.CertificateSigningRequest | None = None
        if isinstance(csr, x509.CertificateSigningRequest):
            fixed = csr
        elif not self.pop:
            fixed = csr(None)
        while True:
            binding: bytes | None = None
            if fixed is None and self.pop_binding == "tls-exporter":
                assert callable(csr)
                status, headers, payload, current = await self._post_tls13(op, csr)
                used = None
            else:
                if fixed is not None:
                    current = fixed
                else:
                    assert callable(csr)
                    binding = await self._prime_session()
                    current = csr(base64.b64encode(binding))
                body = wire.encode_base64(current.public_bytes(serialization.Encoding.DER))
                async with self.session.post(
                    self.url(op),
                    data=body,
                    headers={"Content-Type": wire.CT_PKCS10, "Content-Transfer-Encoding": "base64"},
                    **self._req_kwargs(),
                ) as resp:
                    used = self._tls_unique(resp) if binding is not None else None
                    payload = await resp.read()
                    status = resp.status
                    headers = {k.lower(): v for k, v in resp.headers.items()}
            ctype = headers.get("content-type", "")
            if status == 200:
                return ctype, payload, current
            if status == 202:
                polls += 1
                wait: float = _retry_after_seconds(headers.get("retry-after"), 60)
                wait = min(max(wait, self.min_poll_interval), self.max_poll_interval)
                if polls > self.max_polls or time.monotonic() + wait > deadline:
                    raise EnrollmentPending(
                        payload.decode("utf-8", "replace").strip() or "request pending",
                        retry_after=int(wait),
                    )
            elif binding is not None and used != binding and pop_retries < 2:
                # The server closed the primed session and the CSR went out on another one:
                # its challengePassword named the wrong session. Rebuild and retry.
                pop_retries += 1
                continue
            else:
                self._raise_for_status_code(status, headers, payload)
            await asyncio.sleep(wait)

    async def _post_tls13(
        self, op: str, csr: Callable[[bytes | None], x509.CertificateSigningRequest]
    ) -> tuple[int, dict[str, str], bytes, x509.CertificateSigningRequest]:
        """One PoP-linked POST on a fresh TLS 1.3 connection (est/client_tls13.py) whose RFC 9266
        tls-exporter the CSR carries as challengePassword (RFC 7030 §3.5)."""
        headers = {"User-Agent": "enroll-est-client"}
        if self.username is not None:
            headers["Authorization"] = aiohttp.encode_basic_auth(self.username, self.password or "")
        context = client_tls13.openssl_context(self.trust_anchor, self.client_cert, self.client_key)
        return await client_tls13.post_csr(self.url(op), csr, context=context, server_name=self.server_hostname,
                                           timeout=self.timeout.total, headers=headers)
