"""The EST client's PoP-linked POST over TLS 1.3 (RFC 7030 §3.5 with RFC 9266 tls-exporter):
Python's ssl module cannot export keying material (python/cpython#82133), so this one request
goes on its own connection made with pyOpenSSL over memory BIOs on an asyncio TCP stream; the
server is verified against the explicit trust anchor (RFC 7030 §3.6.1) and by name
(RFC 6125 §6). est/client.py decides when it is used.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from est import wire
from est.errors import ProtocolError

#: RFC 9266 §2: the tls-exporter label (zero-length context, 32 bytes).
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
#: The largest answer read (a certs-only PKCS#7 is a few kilobytes).
MAX_ANSWER = 1 << 20


def openssl_context(trust_anchor: str | Path | bytes, client_cert: str | Path | None,
                    client_key: str | Path | None) -> SSL.Context:
    """TLS 1.3 only; the server verified against the explicit trust anchor (RFC 7030
    §3.6.1) by OpenSSL, its name by :func:`verify_server_name`."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    pem = trust_anchor if isinstance(trust_anchor, bytes) else Path(trust_anchor).read_bytes()
    store = ctx.get_cert_store()
    assert store is not None
    for anchor in x509.load_pem_x509_certificates(pem):
        store.add_cert(crypto.X509.from_cryptography(anchor))
    ctx.set_verify(SSL.VERIFY_PEER)
    if client_cert is not None:
        ctx.use_certificate_chain_file(str(client_cert))
        ctx.use_privatekey_file(str(client_key or client_cert))
    return ctx


async def post_csr(
    url: str, csr: Callable[[bytes | None], x509.CertificateSigningRequest], *, context: SSL.Context,
    server_name: str | None, timeout: float | None, headers: Mapping[str, str],
) -> tuple[int, dict[str, str], bytes, x509.CertificateSigningRequest]:
    """One POST of ``csr(base64(tls-exporter))`` to ``url`` on a fresh TLS 1.3 connection: the
    CSR carries the connection's RFC 9266 channel binding as challengePassword (RFC 7030 §3.5).
    Returns (status, headers with lower-case names, body, CSR sent)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, parts.port or 443)
        try:
            tls = OpenSSLStream(context, server_name or host, reader, writer)
            await tls.handshake()
            binding = tls.conn.export_keying_material(EXPORTER_LABEL, 32, b"")
            current = csr(base64.b64encode(binding))
            body = wire.encode_base64(current.public_bytes(serialization.Encoding.DER))
            head = {"Host": parts.netloc, "Content-Type": wire.CT_PKCS10,
                    "Content-Transfer-Encoding": "base64", "Content-Length": str(len(body)),
                    "Connection": "close", **headers}
            await tls.send(f"POST {parts.path} HTTP/1.1\r\n".encode()
                           + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode("latin-1")
                           + b"\r\n" + body)
            raw = await tls.read_to_eof(MAX_ANSWER)
        finally:
            writer.close()
    status, answer_headers, payload = parse_http_response(raw)
    return status, answer_headers, payload, current


class OpenSSLStream:
    """A TLS 1.3 client connection: pyOpenSSL over memory BIOs on an asyncio TCP stream (the
    caller bounds it in time)."""

    def __init__(self, ctx: SSL.Context, server_name: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_connect_state()
        self.server_name = server_name
        if not is_ip(server_name):
            self.conn.set_tlsext_host_name(server_name.encode("idna"))
        self.reader = reader
        self.writer = writer

    async def _flush(self) -> None:
        while True:
            try:
                out = self.conn.bio_read(65536)
            except SSL.WantReadError:
                break
            self.writer.write(out)
        await self.writer.drain()

    async def _fill(self) -> bool:
        data = await self.reader.read(65536)
        if data:
            self.conn.bio_write(data)
        return bool(data)

    async def handshake(self) -> None:
        """Handshake, then check the server's name (OpenSSL has verified its chain)."""
        for _ in range(100):
            try:
                self.conn.do_handshake()
                break
            except SSL.WantReadError:
                await self._flush()
                if not await self._fill():
                    raise ProtocolError("the server closed the connection during the TLS 1.3 handshake") from None
            except SSL.Error as exc:
                raise ProtocolError(f"TLS 1.3 handshake failed: {exc}") from None
        else:
            raise ProtocolError("TLS 1.3 handshake did not complete")
        await self._flush()
        chain = self.conn.get_peer_cert_chain(as_cryptography=True) or []
        if not chain:
            raise ProtocolError("the server sent no certificate")
        verify_server_name(chain[0], self.server_name)

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self.conn.send(view[:16384].tobytes())
            view = view[n:]
        await self._flush()

    async def read_to_eof(self, limit: int) -> bytes:
        """Application data until close_notify or TCP EOF, at most ``limit`` bytes."""
        buf = bytearray()
        while len(buf) <= limit:
            try:
                buf += self.conn.recv(65536)
                continue
            except SSL.WantReadError:
                pass
            except (SSL.ZeroReturnError, SSL.SysCallError):
                break
            except SSL.Error as exc:
                raise ProtocolError(f"TLS error while reading the answer: {exc}") from None
            await self._flush()  # e.g. a KeyUpdate answer
            if not await self._fill():
                break
        if len(buf) > limit:
            raise ProtocolError(f"answer larger than {limit} bytes")
        return bytes(buf)


def is_ip(name: str) -> bool:
    """Whether ``name`` is an IPv4 or IPv6 address literal (no SNI for those, RFC 6066 §3)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def verify_server_name(cert: x509.Certificate, name: str) -> None:
    """The server certificate names ``name`` in subjectAltName (RFC 9110 §4.3.4, RFC 6125 §6):
    an IP address exactly, a DNS name exactly or by a left-most ``*`` label."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ProtocolError("the server certificate has no subjectAltName") from None
    if is_ip(name):
        if ipaddress.ip_address(name) in san.get_values_for_type(x509.IPAddress):
            return
    else:
        want = name.lower().rstrip(".")
        for dns in san.get_values_for_type(x509.DNSName):
            dns = dns.lower().rstrip(".")
            if dns == want:
                return
            if dns.startswith("*.") and "." in want and want.split(".", 1)[1] == dns[2:]:
                return
    raise ProtocolError(f"the server certificate does not name {name!r}")


def parse_http_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of an HTTP/1.1 answer read to EOF."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP answer: {raw[:80]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.strip()}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while body:
            size_line, _, body = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            out += body[:size]
            body = body[size + 2:]
        body = bytes(out)
    elif "content-length" in headers and headers["content-length"].isdigit():
        body = body[: int(headers["content-length"])]
    return int(parts[1]), headers, body
