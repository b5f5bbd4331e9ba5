"""EST proof-of-possession linking checks (RFC 7030 §3.5): tls-unique on TLS 1.2, tls-exporter
(RFC 9266) on TLS 1.3, the refusal's text and the /csrattrs advertisement (§4.5.2)."""

from __future__ import annotations

import base64
import re
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from conformance import scepmsg as sm
from conformance.asn1dump import asn1parse
from conformance.est_common import R, EstContext, der, new_key, require_refused, strict_b64
from conformance.model import Fail, Level, Skip, Suite
from conformance.transport import Exchange, exchange_on_stream

group = Suite("est")


# ================================================================== PoP linking
#: challengePassword (RFC 2985 §5.4.1) as a DER OBJECT IDENTIFIER: the /csrattrs entry by which a
#: server asks for PoP linking (RFC 7030 §3.5).
CHALLENGE_PASSWORD_TLV = bytes.fromhex("06092a864886f70d010907")
TLS13_POP = ("tls-unique exists only up to TLS 1.2 (RFC 5929 §3, RFC 9266 §1); on TLS 1.3 PoP linking would "
             "need tls-exporter, which this suite (Python's ssl) cannot export")


async def tls12_stream(ctx: EstContext) -> tuple[Any, Any, bytes]:
    """A TLS 1.2 connection to the server (with --client-cert when given) and its tls-unique."""
    import asyncio
    from urllib.parse import urlsplit

    u = urlsplit(ctx.o.url)
    sslctx = ctx.ssl_context(ctx.o.client_cert, ctx.o.client_key)
    sslctx.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            u.hostname, u.port or 443, ssl=sslctx, server_hostname=u.hostname), ctx.o.timeout)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise Skip(f"the server refused a TLS 1.2 handshake ({type(exc).__name__}: {exc}): {TLS13_POP}") from None
    sslobj = writer.get_extra_info("ssl_object")
    binding = sslobj.get_channel_binding("tls-unique") if sslobj is not None else None
    if sslobj is None or sslobj.version() != "TLSv1.2" or not binding:
        version = sslobj.version() if sslobj is not None else None
        writer.close()
        raise Skip(f"the connection is {version}: {TLS13_POP}")
    return reader, writer, bytes(binding)


def pop_csr(key: Any, cn: str, challenge: bytes) -> x509.CertificateSigningRequest:
    """A CSR whose challengePassword is ``challenge`` (RFC 7030 §3.5: base64 of tls-unique)."""
    from cryptography.x509.oid import AttributeOID

    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    return b.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge).sign(key, hashes.SHA256())


async def post_on(ctx: EstContext, stream: tuple[Any, Any, bytes], label: str | None,
                  csr: x509.CertificateSigningRequest) -> Exchange:
    """POST /simpleenroll on the TLS session ``stream`` (whose tls-unique the caller knows)."""
    from urllib.parse import urlsplit

    reader, writer, _ = stream
    url = ctx.path("simpleenroll", label)
    u = urlsplit(url)
    headers = {"Content-Type": "application/pkcs10", **ctx.auth_headers()}
    ex = await exchange_on_stream(reader, writer, "POST", url, u.netloc, u.path, headers=headers,
                                  body=base64.b64encode(der(csr)), timeout=ctx.o.timeout)
    return ex


async def _pop_label(ctx: EstContext) -> tuple[str | None, str, bool]:
    """The label PoP linking is judged under, how the report shows it, and whether its /csrattrs
    asks for linking (RFC 7030 §3.5, §4.5.2); a skip when it does not and no --pop-label names one."""
    if not ctx.has_credentials:
        raise Skip("no --basic or --client-cert given")
    label = ctx.o.pop_label if ctx.o.pop_label else "default"
    shown = repr(ctx.o.pop_label or ctx.o.label or "(default)")
    attrs = await ctx.get("csrattrs", label=label)
    try:
        asks = attrs.status == 200 and CHALLENGE_PASSWORD_TLV in strict_b64(attrs.body)
    except Fail:
        asks = False
    if not asks and not ctx.o.pop_label:
        raise Skip(f"label {shown} does not ask for PoP linking (its /csrattrs answered {attrs.status} without "
                   "challengePassword, RFC 7030 §3.5); name a label that requires it with --pop-label")
    return label, shown, asks


def _require_certified(ctx: EstContext, ok: Exchange, key: Any) -> None:
    """A 200 must carry a certificate for the CSR's key (RFC 7030 §4.2.3)."""
    if ok.status == 200:
        co = ctx.read_certs_only(ok)
        if not any(sm.public_key_der(c) == sm.public_key_der(key) for c in co.certificates):
            raise Fail("no certificate in the reply has the CSR's public key", ok.lines(body=False))


async def _pop_probe(ctx: EstContext) -> tuple[str, Exchange, Exchange]:
    """Made once: a CSR bound to another TLS session (must be refused), then one bound to the
    session that carries it (must be issued). Returns (label shown, refused, accepted)."""
    label, shown, asks = await _pop_label(ctx)
    other = await tls12_stream(ctx)
    other[1].close()
    wrong = pop_csr(new_key(), f"conformance-{ctx.run_id}-pop-wrong", base64.b64encode(other[2]))
    refused = await post_on(ctx, await tls12_stream(ctx), label, wrong)
    if refused.status in (200, 202) and not asks:
        raise Skip(f"label {shown} does not require PoP linking: it answered {refused.status} to a CSR bound to "
                   "another TLS session (and its /csrattrs lists no challengePassword)")
    key = new_key()
    stream = await tls12_stream(ctx)
    ok = await post_on(ctx, stream, label, pop_csr(key, f"conformance-{ctx.run_id}-pop", base64.b64encode(stream[2])))
    _require_certified(ctx, ok, key)
    return shown, refused, ok


@group.check("est.pop.tls-unique", "PoP linking: tls-unique of another session is refused, this one's accepted", R,
             "3.5", Level.MUST, "with PoP linking, the server verifies that the CSR's challengePassword is the "
             "base64 tls-unique of the TLS session that carries it")
async def pop_tls_unique(ctx: EstContext) -> str:
    shown, refused, ok = await ctx.step("pop", lambda: _pop_probe(ctx))
    status = require_refused(refused, "a CSR carrying the tls-unique of another TLS session", (400, 401, 403))
    if ok.status != 200:
        raise Fail(f"a CSR carrying this session's tls-unique answered {ok.error or ok.status}", ok.lines())
    return f"label {shown}: another session's tls-unique refused ({status}); this session's accepted (200)"


class Tls13Stream:
    """A TLS 1.3 connection made with pyOpenSSL over memory BIOs on an asyncio TCP stream, read
    and written like asyncio's streams (for :func:`exchange_on_stream`), with its RFC 9266
    tls-exporter (Python's ssl cannot export keying material)."""

    def __init__(self, conn: Any, reader: Any, writer: Any) -> None:
        self.conn, self.reader, self.writer = conn, reader, writer
        self.exporter = b""

    def version(self) -> str:
        return "TLSv1.3"

    def get_extra_info(self, name: str) -> Any:
        return self if name == "ssl_object" else None

    def _flush(self) -> None:
        from OpenSSL import SSL

        while True:
            try:
                self.writer.write(self.conn.bio_read(65536))
            except SSL.WantReadError:
                return

    async def _fill(self) -> bool:
        data = await self.reader.read(65536)
        if data:
            self.conn.bio_write(data)
        return bool(data)

    async def handshake(self) -> None:
        from OpenSSL import SSL

        for _ in range(100):
            try:
                self.conn.do_handshake()
                break
            except SSL.WantReadError:
                self._flush()
                await self.writer.drain()
                if not await self._fill():
                    raise OSError("connection closed during the TLS 1.3 handshake") from None
        else:
            raise OSError("TLS 1.3 handshake did not complete")
        self._flush()
        await self.writer.drain()
        self.exporter = self.conn.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")

    def write(self, data: bytes) -> None:
        from OpenSSL import SSL

        view = memoryview(data)
        try:
            while view:
                view = view[self.conn.send(view[:16384].tobytes()):]
        except SSL.Error as exc:
            raise OSError(f"TLS: {exc}") from None
        self._flush()

    async def drain(self) -> None:
        await self.writer.drain()

    async def read(self, n: int) -> bytes:
        from OpenSSL import SSL

        for _ in range(1000):
            try:
                return bytes(self.conn.recv(n))
            except SSL.WantReadError:
                self._flush()
                if not await self._fill():
                    return b""
            except (SSL.ZeroReturnError, SSL.SysCallError):
                return b""
            except SSL.Error as exc:
                raise OSError(f"TLS: {exc}") from None
        return b""

    def close(self) -> None:
        self.writer.close()


def _names_host(cert: x509.Certificate, host: str) -> bool:
    """subjectAltName names ``host`` (RFC 6125 §6): an IP address exactly, a DNS name exactly or
    by a left-most ``*`` label."""
    import ipaddress

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(host) in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        pass
    want = host.lower().rstrip(".")
    for dns in (d.lower().rstrip(".") for d in san.get_values_for_type(x509.DNSName)):
        if dns == want or (dns.startswith("*.") and "." in want and want.split(".", 1)[1] == dns[2:]):
            return True
    return False


async def tls13_stream(ctx: EstContext) -> Tls13Stream:
    """A TLS 1.3 connection to the server (with --client-cert when given), its server certificate
    verified against --ca-bundle and its name, and its tls-exporter."""
    import asyncio
    from urllib.parse import urlsplit

    try:
        from OpenSSL import SSL, crypto
    except ImportError:
        raise Skip("this suite cannot compute tls-exporter: pyOpenSSL is not installed") from None
    u = urlsplit(ctx.o.url)
    host = u.hostname or ""
    tls = SSL.Context(SSL.TLS_CLIENT_METHOD)
    tls.set_min_proto_version(SSL.TLS1_3_VERSION)
    tls.set_verify(SSL.VERIFY_PEER)
    if ctx.o.ca_bundle:
        tls.load_verify_locations(ctx.o.ca_bundle)
    else:
        tls.set_default_verify_paths()
    if ctx.o.client_cert:
        tls.use_certificate_chain_file(ctx.o.client_cert)
        tls.use_privatekey_file(ctx.o.client_key or ctx.o.client_cert)
    conn = SSL.Connection(tls, None)
    conn.set_connect_state()
    if not re.fullmatch(r"[0-9.]+|.*:.*", host):
        conn.set_tlsext_host_name(host.encode("idna"))
    try:
        async with asyncio.timeout(ctx.o.timeout):
            reader, writer = await asyncio.open_connection(host, u.port or 443)
            stream = Tls13Stream(conn, reader, writer)
            try:
                await stream.handshake()
            except BaseException:
                writer.close()
                raise
    except (OSError, SSL.Error, crypto.Error, TimeoutError) as exc:
        raise Skip(f"no TLS 1.3 session with the server ({type(exc).__name__}: {exc}), so no tls-exporter "
                   "PoP linking to judge") from None
    chain = conn.get_peer_cert_chain(as_cryptography=True) or []
    if not chain or not _names_host(chain[0], host):
        stream.close()
        raise Fail(f"the server certificate does not name {host!r} (RFC 6125 §6)")
    return stream


async def _pop13_probe(ctx: EstContext) -> tuple[str, Exchange, Exchange]:
    """As :func:`_pop_probe`, on TLS 1.3 with tls-exporter (RFC 9266 §2) as the binding."""
    label, shown, asks = await _pop_label(ctx)
    other = await tls13_stream(ctx)
    other.close()
    wrong = pop_csr(new_key(), f"conformance-{ctx.run_id}-pop13-wrong", base64.b64encode(other.exporter))
    stream = await tls13_stream(ctx)
    refused = await post_on(ctx, (stream, stream, stream.exporter), label, wrong)
    if refused.status in (200, 202) and not asks:
        raise Skip(f"label {shown} does not require PoP linking: it answered {refused.status} to a CSR bound to "
                   "another TLS 1.3 connection (and its /csrattrs lists no challengePassword)")
    key = new_key()
    stream = await tls13_stream(ctx)
    ok = await post_on(ctx, (stream, stream, stream.exporter), label,
                       pop_csr(key, f"conformance-{ctx.run_id}-pop13", base64.b64encode(stream.exporter)))
    _require_certified(ctx, ok, key)
    return shown, refused, ok


@group.check("est.pop.tls-exporter", "PoP linking on TLS 1.3: another connection's tls-exporter is refused, "
             "this one's accepted", R, "3.5", Level.MUST, "on TLS 1.3, where tls-unique does not exist, the "
             "channel binding in challengePassword is the RFC 9266 tls-exporter of the connection that carries "
             "the CSR; the server verifies it")
async def pop_tls_exporter(ctx: EstContext) -> str:
    shown, refused, ok = await ctx.step("pop13", lambda: _pop13_probe(ctx))
    if ok.status != 200 and refused.status == ok.status and ok.status in (400, 401, 403):
        text = ok.body.decode("utf-8", "replace").strip()[:200]
        raise Skip(f"label {shown} does not offer PoP linking on TLS 1.3 (a CSR carrying this connection's "
                   f"tls-exporter answered {ok.status}: {text!r})")
    status = require_refused(refused, "a CSR carrying the tls-exporter of another TLS 1.3 connection",
                             (400, 401, 403))
    if ok.status != 200:
        raise Fail(f"a CSR carrying this connection's tls-exporter answered {ok.error or ok.status}", ok.lines())
    return f"label {shown}: another connection's tls-exporter refused ({status}); this one's accepted (200)"


@group.check("est.pop.reject-message", "A PoP-linking refusal says that linking is required", R, "3.5", Level.SHOULD,
             "a human-readable rejection includes an informative message that linking of identity and POP "
             "information is required")
async def pop_reject_message(ctx: EstContext) -> str:
    _, refused, _ = await ctx.need("pop", lambda: _pop_probe(ctx))
    if refused.status in (200, 202):
        raise Skip("the CSR bound to another session was not refused (see est.pop.tls-unique)")
    text = refused.body.decode("utf-8", "replace")
    words = ("tls-unique", "linking", "proof of possession", "proof-of-possession", "pop", "channel binding")
    if not any(w in text.lower() for w in words):
        raise Fail("the refusal does not say that PoP linking (tls-unique) is required", refused.lines())
    return repr(text.strip()[:100])


@group.check("est.pop.csrattrs-advertises", "A label that requires PoP linking lists challengePassword in /csrattrs",
             R, "4.5.2", Level.MUST, "if an EST server requires linking of identity and POP information, it "
             "includes the challengePassword OID in the CSR Attributes Response (also RFC 8951 §4)")
async def pop_csrattrs(ctx: EstContext) -> str:
    if not ctx.o.pop_label:
        raise Skip("no --pop-label given (a label known to require PoP linking)")
    ex = await ctx.get("csrattrs", label=ctx.o.pop_label)
    if ex.status != 200:
        raise Fail(f"/csrattrs of PoP label {ctx.o.pop_label!r} answered {ex.error or ex.status}", ex.lines())
    if CHALLENGE_PASSWORD_TLV not in strict_b64(ex.body):
        raise Fail("no challengePassword OID (1.2.840.113549.1.9.7) in /csrattrs", asn1parse(strict_b64(ex.body), 20))
    return "challengePassword listed"
