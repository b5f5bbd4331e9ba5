"""EST checks (RFC 7030, RFC 8951). Requests are built here (cryptography CSRs, hand-made base64
bodies) and every reply is judged on its bytes: status, exact header values, base64 form, ASN.1."""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conformance import cmcmsg, csrtemplate
from conformance import scepmsg as sm
from conformance.asn1dump import asn1parse
from conformance.model import Fail, Interop, Level, Skip, Suite
from conformance.runner import BaseContext
from conformance.transport import Exchange, Http, exchange_on_stream

suite = Suite("est")
R = "RFC 7030"
R8951 = "RFC 8951"
CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"


@dataclass
class EstOptions:
    """What the user gave on the command line."""

    url: str
    label: str | None = None
    ca_bundle: str | None = None
    basic: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    pending_label: str | None = None
    pop_label: str | None = None
    timeout: float = 30.0


@dataclass
class Enrolled:
    """A successful enrollment: the exchange, the key and the certificate issued for it."""

    exchange: Exchange
    key: Any
    csr: x509.CertificateSigningRequest
    cert: x509.Certificate
    certs: list[x509.Certificate]


def plan(o: EstOptions) -> list[str]:
    """What the run will request, said before it starts."""
    if not o.basic and not o.client_cert:
        return ["no --basic or --client-cert: no enrollment is expected to succeed; unauthenticated requests "
                "must be refused"]
    out = ["simpleenroll (reference) -> 1 certificate",
           "simpleenroll with RFC 8951 input variants (CRLF-wrapped + CTE, no CTE, one line without newline, "
           "PEM armour) -> up to 4",
           "simplereenroll with the reference certificate as TLS client certificate -> 1",
           "serverkeygen if offered -> 1 (the key comes back over TLS)"]
    if o.pending_label:
        out.append(f"simpleenroll under label {o.pending_label!r} -> stays pending (202), twice")
    pop = o.pop_label or o.label
    out.append(f"PoP linking on TLS 1.2 under {'label ' + repr(pop) if pop else 'the default label'} if it asks "
               "for it (or --pop-label): a CSR bound to another session -> must be refused; the right one -> 1")
    out.append("the same on TLS 1.3 with tls-exporter (RFC 9266) if the server offers it -> 1")
    out.append("negative cases (no auth, wrong password, bad base64, bad CSR signature, changed subject) "
               "-> must not issue")
    return out


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: Any, cn: str, sans: list[str] | None = None) -> x509.CertificateSigningRequest:
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), False)
    return b.sign(key, hashes.SHA256())


def der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.DER)


def b64_lines(data: bytes, width: int, eol: str) -> bytes:
    s = base64.b64encode(data).decode()
    return (eol.join(s[i:i + width] for i in range(0, len(s), width)) + eol).encode()


def strict_b64(body: bytes) -> bytes:
    """RFC 8951 §3: the body is base64; only whitespace may be added."""
    text = re.sub(rb"[\r\n\t ]", b"", body)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Fail(f"the body is not base64: {exc}") from None


class EstContext(BaseContext):
    """Target, options, TLS sessions and the state shared by the EST checks."""

    def __init__(self, o: EstOptions) -> None:
        super().__init__()
        self.o = o
        self.run_id = os.urandom(3).hex()
        self._https: dict[str, Http] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="conformance-est-")

    async def close(self) -> None:
        for h in self._https.values():
            await h.__aexit__(None, None, None)
        self._tmp.cleanup()

    def ssl_context(self, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.o.ca_bundle)
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx

    async def http(self, who: str = "anon") -> Http:
        """A session: "anon" (no client certificate), "client" (--client-cert) or a temp identity."""
        if who not in self._https:
            if who == "anon":
                ctx = self.ssl_context()
            elif who == "client":
                ctx = self.ssl_context(self.o.client_cert, self.o.client_key)
            else:
                ctx = self.ssl_context(str(Path(self._tmp.name) / f"{who}.crt"), str(Path(self._tmp.name) / f"{who}.key"))
            h = Http(ssl_context=ctx, timeout=self.o.timeout)
            await h.__aenter__()
            self._https[who] = h
        return self._https[who]

    def identity(self, name: str, cert: x509.Certificate, key: Any) -> str:
        d = Path(self._tmp.name)
        (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
        return name

    def path(self, op: str, label: str | None = "default") -> str:
        lab = self.o.label if label == "default" else label
        return f"{self.o.url}/.well-known/est" + (f"/{lab}" if lab else "") + f"/{op}"

    def auth_headers(self, basic: str | None = "default") -> dict[str, str]:
        cred = self.o.basic if basic == "default" else basic
        return {"Authorization": "Basic " + base64.b64encode(cred.encode()).decode()} if cred else {}

    @property
    def has_credentials(self) -> bool:
        return bool(self.o.basic or self.o.client_cert)

    def who(self) -> str:
        return "client" if self.o.client_cert else "anon"

    async def post(self, op: str, body: bytes, *, headers: dict[str, str] | None = None, who: str | None = None,
                   basic: str | None = "default", label: str | None = "default",
                   content_type: str = "application/pkcs10") -> Exchange:
        h = {"Content-Type": content_type, **self.auth_headers(basic), **(headers or {})}
        return await (await self.http(who or self.who())).request("POST", self.path(op, label), data=body, headers=h)

    async def get(self, op: str, label: str | None = "default") -> Exchange:
        return await (await self.http("anon")).request("GET", self.path(op, label))

    def read_certs_only(self, ex: Exchange) -> sm.CertsOnly:
        try:
            raw = strict_b64(ex.body)
        except Fail as f:
            raise Fail(f.detail, ex.lines()) from None
        try:
            return sm.parse_certs_only(raw)
        except sm.MessageError as exc:
            raise Fail(str(exc), ex.lines(body=False) + asn1parse(raw, 16)) from None

    async def enroll(self, tag: str, body_fn: Any = None, headers: dict[str, str] | None = None,
                     label: str | None = "default") -> Enrolled:
        if not self.has_credentials:
            raise Skip("no --basic or --client-cert given")
        key = new_key()
        csr = make_csr(key, f"conformance-{self.run_id}-{tag}", [f"{tag}.conformance.test"])
        body = body_fn(der(csr)) if body_fn else base64.b64encode(der(csr))
        ex = await self.post("simpleenroll", body, headers=headers, label=label)
        if ex.status != 200:
            raise Fail(f"simpleenroll answered {ex.error or ex.status}", ex.lines())
        co = self.read_certs_only(ex)
        want = sm.public_key_der(key)
        cert = next((c for c in co.certificates if sm.public_key_der(c) == want), None)
        if cert is None:
            raise Fail("no certificate in the reply has the CSR's public key", ex.lines(body=False))
        return Enrolled(ex, key, csr, cert, co.certificates)

    async def main(self) -> Enrolled:
        e: Enrolled = await self.need("enroll", self._main)
        return e

    async def _main(self) -> Enrolled:
        return await self.enroll("main")

    async def cacerts(self) -> tuple[Exchange, sm.CertsOnly]:
        out: tuple[Exchange, sm.CertsOnly] = await self.need("cacerts", self._cacerts)
        return out

    async def _cacerts(self) -> tuple[Exchange, sm.CertsOnly]:
        ex = await self.get("cacerts")
        if ex.status != 200:
            raise Fail(f"/cacerts answered {ex.error or ex.status}", ex.lines())
        return ex, self.read_certs_only(ex)


def require_refused(ex: Exchange, what: str, statuses: tuple[int, ...] = (400, 401, 403)) -> int:
    if ex.error:
        raise Fail(f"{what}: transport error {ex.error}", ex.lines())
    if ex.status in (200, 202):
        raise Fail(f"{what}: answered {ex.status}" + (" and issued a certificate" if ex.status == 200 else ""),
                   ex.lines())
    if ex.status not in statuses:
        raise Fail(f"{what}: answered {ex.status}, expected one of {statuses}", ex.lines())
    return ex.status


def _self_signed(c: x509.Certificate) -> bool:
    return c.issuer == c.subject and sm.issued_by(c, c)


# ================================================================== TLS and /cacerts
@suite.check("est.tls.version", "TLS 1.2 or later", R, "3.3.1", Level.MUST,
             "EST runs over TLS 1.1 or later; TLS 1.2+ is what deployed clients negotiate")
async def tls_version(ctx: EstContext) -> str:
    import asyncio
    from urllib.parse import urlsplit

    u = urlsplit(ctx.o.url)
    if u.scheme != "https":
        raise Fail(f"the EST URL is {u.scheme}, not https (RFC 7030 §3.3: EST runs over TLS)", [ctx.o.url])
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            u.hostname, u.port or 443, ssl=ctx.ssl_context(), server_hostname=u.hostname), ctx.o.timeout)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise Fail(f"TLS handshake failed: {type(exc).__name__}: {exc}") from None
    sslobj = writer.get_extra_info("ssl_object")
    version = sslobj.version() if sslobj else None
    cipher = sslobj.cipher() if sslobj else None
    writer.close()
    if version not in ("TLSv1.2", "TLSv1.3"):
        raise Fail(f"negotiated {version}", [f"cipher {cipher}"])
    return f"{version} {cipher[0] if cipher else ''}"


@suite.check("est.cacerts.anonymous", "/cacerts answers without client authentication", R, "4.1.1", Level.MUST,
             "GET /cacerts is served to a client that presents no credentials (it SHOULD NOT need auth)")
async def cacerts_anon(ctx: EstContext) -> str:
    ex, co = await ctx.step("cacerts", ctx._cacerts)
    return f"200, {len(co.certificates)} certificates"


@suite.check("est.cacerts.content-type", "/cacerts is application/pkcs7-mime", R, "4.1.3", Level.MUST,
             "Content-Type application/pkcs7-mime")
async def cacerts_ct(ctx: EstContext) -> str:
    ex, _ = await ctx.cacerts()
    if ex.media_type() != "application/pkcs7-mime":
        raise Fail(f"Content-Type {ex.content_type!r}", ex.lines(body=False))
    return str(ex.content_type)


@suite.check("est.cacerts.certs-only", "/cacerts is a base64 certs-only SignedData", R, "4.1.3", Level.MUST,
             "the body is base64 (RFC 8951) of a degenerate certificates-only CMS SignedData")
async def cacerts_shape(ctx: EstContext) -> str:
    ex, co = await ctx.cacerts()
    problems = co.shape_problems()
    if problems:
        raise Fail("; ".join(problems), ex.lines(body=False) + asn1parse(strict_b64(ex.body), 16))
    return "; ".join(c.subject.rfc4514_string() for c in co.certificates)


@suite.check("est.cacerts.chain", "/cacerts holds the root and every certificate to chain to it", R, "4.1.3",
             Level.MUST, "the current root CA certificate and every certificate needed to build a chain from an "
             "EST-issued certificate to it")
async def cacerts_chain(ctx: EstContext) -> str:
    ex, co = await ctx.cacerts()
    certs = co.certificates
    roots = [c for c in certs if _self_signed(c)]
    if not roots:
        raise Fail("no self-signed root certificate in /cacerts", [c.subject.rfc4514_string() for c in certs])
    for c in certs:
        if not _self_signed(c) and not any(sm.issued_by(c, p) for p in certs if p is not c):
            raise Fail(f"the issuer of {c.subject.rfc4514_string()} is missing", [c.issuer.rfc4514_string()])
    if ctx.has_credentials:
        try:
            e = await ctx.main()
        except Skip:
            return f"{len(certs)} certificates, root {roots[0].subject.rfc4514_string()}"
        if not any(sm.issued_by(e.cert, p) for p in certs):
            raise Fail("the issuer of the enrolled certificate is not in /cacerts", [e.cert.issuer.rfc4514_string()])
    return f"{len(certs)} certificates, root {roots[0].subject.rfc4514_string()}"


# Client framing quirks (RFC 8951 §3 allows both framings; these name who breaks on which).
LIBEST = "libest estclient 3.2.0"
STRONGSWAN = "strongSwan 5.9.8 pki --est"
#: OpenSSL's base64 BIO in line mode (what libest's client decodes with) returns nothing or a
#: prefix for a line of this many characters or more (`openssl base64 -d` shows the same).
BIO_LINE_LIMIT = 1024


def check_cte(ex: Exchange) -> str:
    """RFC 8951 §3: clients ignore Content-Transfer-Encoding; libest's client still requires it."""
    cte = ex.header("Content-Transfer-Encoding")
    if (cte or "").lower() != "base64":
        raise Interop(f"Content-Transfer-Encoding {cte!r} (RFC 8951 §3 lets clients ignore it)",
                      breaks=[f"{LIBEST} (requires the header)"], works=[STRONGSWAN, "curl"],
                      evidence=ex.lines(body=False))
    return "base64"


def check_framing(body: bytes, ex: Exchange) -> str:
    """RFC 8951 §3 allows base64 with or without line breaks; the two deployed clients each
    read only one of them, so either choice is an interop warning, never a failure."""
    lines = [ln for ln in body.replace(b"\r\n", b"\n").strip().split(b"\n") if ln.strip()]
    longest = max((len(ln.strip()) for ln in lines), default=0)
    if len(lines) > 1:
        raise Interop(f"base64 wrapped in {len(lines)} lines of up to {longest} characters",
                      breaks=[f"{STRONGSWAN} (fails on any line break)"],
                      works=[f"{LIBEST} (OpenSSL BIO line mode)"], evidence=ex.lines())
    if longest >= BIO_LINE_LIMIT:
        raise Interop(f"base64 sent as one line of {longest} characters",
                      breaks=[f"{LIBEST} (OpenSSL BIO line mode reads no line of {BIO_LINE_LIMIT}+ "
                              "characters)"], works=[STRONGSWAN], evidence=ex.lines(body=False))
    return f"one line of {longest} characters: readable by {LIBEST} and {STRONGSWAN}"


@suite.check("est.cacerts.cte", "/cacerts carries Content-Transfer-Encoding: base64", R8951, "3", Level.INTEROP,
             "RFC 8951 lets clients ignore the header; libest's client rejects a base64 body without it")
async def cacerts_cte(ctx: EstContext) -> str:
    ex, _ = await ctx.cacerts()
    return check_cte(ex)


@suite.check("est.cacerts.framing", "/cacerts base64 framing suits deployed clients", R8951, "3", Level.INTEROP,
             "base64 may be sent with or without line breaks; strongSwan 5.9.8 pki fails on any line break, "
             "libest's client (OpenSSL BIO line mode) on one line of 1024+ characters")
async def cacerts_framing(ctx: EstContext) -> str:
    ex, _ = await ctx.cacerts()
    return check_framing(ex.body, ex)


# ================================================================== paths and labels
@suite.check("est.path.unknown-label", "An unknown label gets 404", R, "3.2.2", Level.SHOULD,
             "/.well-known/est/<unknown label>/cacerts is not found")
async def unknown_label(ctx: EstContext) -> str:
    ex = await ctx.get("cacerts", label=f"no-such-label-{ctx.run_id}")
    if ex.status != 404:
        raise Fail(f"answered {ex.error or ex.status}", ex.lines())
    return "404"


@suite.check("est.path.unknown-operation", "An unknown operation gets 404", R, "3.2.2", Level.SHOULD,
             "only the registered operation path segments exist")
async def unknown_op(ctx: EstContext) -> str:
    ex = await ctx.get(f"nosuchop{ctx.run_id}")
    if ex.status != 404:
        raise Fail(f"answered {ex.error or ex.status}", ex.lines())
    return "404"


@suite.check("est.label.cacerts", "The given label serves /cacerts", R, "3.2.2", Level.MUST,
             "/.well-known/est/<label>/cacerts works for a label the server offers")
async def label_cacerts(ctx: EstContext) -> str:
    if not ctx.o.label:
        raise Skip("no --label given")
    ex, co = await ctx.cacerts()
    return f"label {ctx.o.label}: {len(co.certificates)} certificates"


# ================================================================== authentication
@suite.check("est.auth.challenge", "Enrollment without credentials gets 401 with WWW-Authenticate", R, "3.2.3",
             Level.MUST, "a request that needs HTTP authentication is answered 401 with a WWW-Authenticate "
             "challenge (RFC 7235); no certificate")
async def auth_401(ctx: EstContext) -> str:
    key = new_key()
    ex = await ctx.post("simpleenroll", base64.b64encode(der(make_csr(key, f"conformance-{ctx.run_id}-noauth"))),
                        who="anon", basic=None)
    status = require_refused(ex, "no credentials", (401, 403))
    if status == 401 and not ex.header("WWW-Authenticate"):
        raise Fail("401 without WWW-Authenticate", ex.lines())
    return f"{status} {ex.header('WWW-Authenticate') or ''}".strip()


@suite.check("est.auth.wrong-password", "A wrong password is refused", R, "3.2.3", Level.MUST,
             "wrong HTTP Basic credentials get 401 (or 403); no certificate")
async def auth_wrong(ctx: EstContext) -> str:
    if not ctx.o.basic:
        raise Skip("no --basic given")
    user = ctx.o.basic.split(":", 1)[0]
    ex = await ctx.post("simpleenroll", base64.b64encode(der(make_csr(new_key(), f"conformance-{ctx.run_id}-wrongpw"))),
                        who="anon", basic=f"{user}:wrong-{ctx.run_id}")
    status = require_refused(ex, "wrong password", (401, 403))
    if status == 401 and not ex.header("WWW-Authenticate"):
        raise Fail("401 without WWW-Authenticate", ex.lines())
    return str(status)


# ================================================================== simpleenroll
@suite.check("est.simpleenroll.success", "simpleenroll issues a certificate", R, "4.2.1", Level.MUST,
             "an authenticated, valid PKCS#10 request gets 200 with the issued certificate")
async def enroll_ok(ctx: EstContext) -> str:
    e = await ctx.step("enroll", ctx._main)
    return f"serial {e.cert.serial_number:x}, {e.cert.subject.rfc4514_string()}"


@suite.check("est.simpleenroll.content-type", "Enrollment reply is certs-only, byte-exact", R, "4.2.3", Level.MUST,
             "Content-Type application/pkcs7-mime with smime-type=certs-only (libest compares "
             "'application/pkcs7-mime; smime-type=certs-only' byte for byte)")
async def enroll_ct(ctx: EstContext) -> str:
    e = await ctx.main()
    ct = e.exchange.content_type or ""
    if ct == CERTS_ONLY:
        return ct
    params = {p.split("=")[0].strip().lower(): p.split("=", 1)[-1].strip().strip('"').lower()
              for p in ct.split(";")[1:]}
    if e.exchange.media_type() == "application/pkcs7-mime" and params.get("smime-type") == "certs-only":
        raise Interop(f"Content-Type {ct!r} is right (RFC 7030 §4.2.3) but not the exact form {CERTS_ONLY!r}",
                      breaks=[f"{LIBEST} (compares the string byte for byte, with one space)"],
                      works=[STRONGSWAN, "curl"], evidence=e.exchange.lines(body=False))
    raise Fail(f"Content-Type {ct!r}", e.exchange.lines(body=False))


@suite.check("est.simpleenroll.certs-only", "Enrollment reply: base64 certs-only, issued certificate first", R,
             "4.2.3", Level.MUST, "the reply is a certs-only SignedData whose (first) certificate is the one issued "
             "for the request's key")
async def enroll_shape(ctx: EstContext) -> str:
    e = await ctx.main()
    co = ctx.read_certs_only(e.exchange)
    if co.shape_problems():
        raise Fail("; ".join(co.shape_problems()), e.exchange.lines(body=False))
    if co.certificates[0] != e.cert:
        raise Fail("the issued certificate is not first", [c.subject.rfc4514_string() for c in co.certificates])
    return f"{len(co.certificates)} certificate(s), issued first"


@suite.check("est.simpleenroll.cte", "Enrollment reply carries Content-Transfer-Encoding: base64", R8951, "3",
             Level.INTEROP, "RFC 8951 lets clients ignore the header; libest's client requires it")
async def enroll_cte(ctx: EstContext) -> str:
    e = await ctx.main()
    return check_cte(e.exchange)


@suite.check("est.simpleenroll.framing", "Enrollment reply base64 framing suits deployed clients", R8951, "3",
             Level.INTEROP, "base64 may be sent with or without line breaks; strongSwan 5.9.8 pki fails on any "
             "line break, libest's client on one line of 1024+ characters")
async def enroll_framing(ctx: EstContext) -> str:
    e = await ctx.main()
    return check_framing(e.exchange.body, e.exchange)


def _variant(cid: str, title: str, rfc: str, section: str, level: Level, text: str, body_fn: Any,
             headers: dict[str, str] | None) -> None:
    @suite.check(cid, title, rfc, section, level, text)
    async def fn(ctx: EstContext) -> str:
        e = await ctx.enroll(cid.rsplit(".", 1)[-1], body_fn, headers)
        return f"200, serial {e.cert.serial_number:x}"


_variant("est.input.crlf-wrapped", "Base64 wrapped at 76 columns with CRLF is accepted", R8951, "3.2", Level.MUST,
         "servers accept base64 with line breaks (RFC 2045 form, Content-Transfer-Encoding: base64)",
         lambda d: b64_lines(d, 76, "\r\n"), {"Content-Transfer-Encoding": "base64"})
_variant("est.input.ignores-cte", "Content-Transfer-Encoding is ignored on input", R8951, "3.2", Level.MUST,
         "the body is base64 whatever the CTE header says (here: no header, 64-column LF lines)",
         lambda d: b64_lines(d, 64, "\n"), None)
_variant("est.input.one-line", "One line of base64 without a final newline is accepted", R8951, "3.2",
         Level.INTEROP, "strongSwan pki sends exactly this (libest rejected it)",
         lambda d: base64.b64encode(d), {"Content-Transfer-Encoding": "7bit"})
_variant("est.input.pem-armour", "A PEM-armoured CSR is accepted", R8951, "3.2", Level.INTEROP,
         "curl users post `openssl req` output as is (globalsign/est#23)",
         lambda d: b"-----BEGIN CERTIFICATE REQUEST-----\n" + b64_lines(d, 64, "\n")
         + b"-----END CERTIFICATE REQUEST-----\n", None)


@suite.check("est.errors.bad-base64", "A body that is not base64 gets 400 with a text/plain reason", R, "4.2.3",
             Level.MUST, "a rejected request is answered with an error status and a human-readable text/plain "
             "body (RFC 8951 §3.3)")
async def bad_base64(ctx: EstContext) -> str:
    if not ctx.has_credentials:
        raise Skip("no credentials: the refusal would be about authentication")
    ex = await ctx.post("simpleenroll", b"this is *not* base64 %%%\n")
    status = require_refused(ex, "bad base64", (400,))
    if ex.media_type() not in ("text/plain", ""):
        raise Fail(f"error Content-Type {ex.content_type!r}", ex.lines())
    if not ex.body.strip():
        raise Fail("error body is empty", ex.lines())
    return f"{status} {ex.content_type}: {ex.body[:60].decode('utf-8', 'replace')!r}"


@suite.check("est.errors.bad-pop", "A CSR whose signature does not verify is refused", R, "3.4", Level.MUST,
             "proof of possession: the CSR signature must verify; no certificate otherwise")
async def bad_pop(ctx: EstContext) -> str:
    if not ctx.has_credentials:
        raise Skip("no credentials given")
    raw = bytearray(der(make_csr(new_key(), f"conformance-{ctx.run_id}-badpop")))
    raw[-1] ^= 0x01
    ex = await ctx.post("simpleenroll", base64.b64encode(bytes(raw)))
    status = require_refused(ex, "bad CSR signature", (400, 403))
    if ex.media_type() not in ("text/plain", ""):
        raise Fail(f"error Content-Type {ex.content_type!r}", ex.lines())
    return str(status)


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


async def _pop_probe(ctx: EstContext) -> tuple[str, Exchange, Exchange]:
    """Made once: a CSR bound to another TLS session (must be refused), then one bound to the
    session that carries it (must be issued). Returns (label shown, refused, accepted)."""
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
    if ok.status == 200:
        co = ctx.read_certs_only(ok)
        if not any(sm.public_key_der(c) == sm.public_key_der(key) for c in co.certificates):
            raise Fail("no certificate in the reply has the CSR's public key", ok.lines(body=False))
    return shown, refused, ok


@suite.check("est.pop.tls-unique", "PoP linking: tls-unique of another session is refused, this one's accepted", R,
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
    if ok.status == 200:
        co = ctx.read_certs_only(ok)
        if not any(sm.public_key_der(c) == sm.public_key_der(key) for c in co.certificates):
            raise Fail("no certificate in the reply has the CSR's public key", ok.lines(body=False))
    return shown, refused, ok


@suite.check("est.pop.tls-exporter", "PoP linking on TLS 1.3: another connection's tls-exporter is refused, "
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


@suite.check("est.pop.reject-message", "A PoP-linking refusal says that linking is required", R, "3.5", Level.SHOULD,
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


@suite.check("est.pop.csrattrs-advertises", "A label that requires PoP linking lists challengePassword in /csrattrs",
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


# ================================================================== simplereenroll
def _client_auth(cert: x509.Certificate) -> bool:
    try:
        return ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True


async def _reenroll(ctx: EstContext, subject_cn: str | None, tag: str) -> tuple[Enrolled, Exchange, Any]:
    e = await ctx.main()
    if not _client_auth(e.cert):
        raise Skip("the issued certificate has no clientAuth EKU, so it cannot authenticate a reenroll")
    who = ctx.identity("renew", e.cert, e.key)
    key = new_key()
    cn = subject_cn or e.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    b = x509.CertificateSigningRequestBuilder().subject_name(
        e.cert.subject if subject_cn is None else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(cn))]))
    try:
        san = e.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        b = b.add_extension(san.value, san.critical)
    except x509.ExtensionNotFound:
        pass
    csr = b.sign(key, hashes.SHA256())
    ex = await ctx.post("simplereenroll", base64.b64encode(der(csr)), who=who, basic=None)
    return e, ex, key


@suite.check("est.simplereenroll.success", "simplereenroll renews with the current certificate", R, "4.2.2",
             Level.MUST, "a reenroll authenticated by the certificate being renewed, same subject and SAN, gets 200")
async def reenroll_ok(ctx: EstContext) -> str:
    e, ex, key = await _reenroll(ctx, None, "renew")
    if ex.error:
        raise Fail(f"TLS with the just-issued certificate as client certificate failed: {ex.error} (the server "
                   "dropped a connection authenticated by a certificate it issued itself)", ex.lines())
    if ex.status != 200:
        raise Fail(f"simplereenroll answered {ex.error or ex.status}", ex.lines())
    co = ctx.read_certs_only(ex)
    new = next((c for c in co.certificates if sm.public_key_der(c) == sm.public_key_der(key)), None)
    if new is None:
        raise Fail("no certificate for the new key", ex.lines(body=False))
    if new.subject != e.cert.subject:
        raise Fail("the renewed certificate has another subject", [new.subject.rfc4514_string()])
    if co.certificates[0] != new:
        raise Fail("the issued certificate is not first", [c.subject.rfc4514_string() for c in co.certificates])
    if ex.content_type != CERTS_ONLY:
        raise Fail(f"Content-Type {ex.content_type!r}", ex.lines(body=False))
    return f"renewed: serial {new.serial_number:x}"


@suite.check("est.simplereenroll.changed-subject", "simplereenroll refuses a changed subject", R, "4.2.2",
             Level.MUST, "the Subject and SubjectAltName of a reenroll request are identical to the certificate's")
async def reenroll_subject(ctx: EstContext) -> str:
    _, ex, _ = await _reenroll(ctx, f"conformance-{ctx.run_id}-other", "renew-other")
    return str(require_refused(ex, "changed subject", (400, 401, 403)))


@suite.check("est.simplereenroll.needs-certificate", "simplereenroll without a client certificate is refused", R,
             "4.2.2", Level.SHOULD, "reenrollment is authenticated by the certificate being renewed")
async def reenroll_nocert(ctx: EstContext) -> str:
    e = await ctx.main()
    csr = make_csr(new_key(), str(e.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value))
    ex = await ctx.post("simplereenroll", base64.b64encode(der(csr)), who="anon")
    return str(require_refused(ex, "reenroll without client certificate", (400, 401, 403)))


# ================================================================== optional operations
@suite.check("est.serverkeygen", "serverkeygen: key part first, then the certificate", R, "4.4.2", Level.MUST,
             "multipart/mixed with an application/pkcs8 part (base64 PrivateKeyInfo) followed by a certs-only "
             "part for that key, each part with Content-Transfer-Encoding")
async def serverkeygen(ctx: EstContext) -> str:
    if not ctx.has_credentials:
        raise Skip("no credentials given")
    csr = make_csr(new_key(), f"conformance-{ctx.run_id}-skg")
    ex = await ctx.post("serverkeygen", base64.b64encode(der(csr)))
    if ex.status in (404, 501):
        raise Skip(f"not offered ({ex.status})")
    if ex.status != 200:
        raise Fail(f"answered {ex.error or ex.status}", ex.lines())
    ct = ex.content_type or ""
    m = re.match(r'multipart/mixed\s*;\s*boundary="?([^";]+)"?', ct, re.I)
    if not m:
        raise Fail(f"Content-Type {ct!r}", ex.lines(body=False))
    parts = _multipart(ex.body, m.group(1))
    if len(parts) != 2:
        raise Fail(f"{len(parts)} parts, expected 2", ex.lines())
    (h1, b1), (h2, b2) = parts
    if h1.get("content-type", "").split(";")[0].strip().lower() != "application/pkcs8":
        raise Fail(f"first part Content-Type {h1.get('content-type')!r}, expected application/pkcs8 "
                   "(or the encrypted form, which the suite did not request)", ex.lines())
    for i, h in enumerate((h1, h2), 1):
        if h.get("content-transfer-encoding", "").lower() != "base64":
            raise Fail(f"part {i} has Content-Transfer-Encoding {h.get('content-transfer-encoding')!r}", ex.lines())
    try:
        key = serialization.load_der_private_key(strict_b64(b1), None)
    except ValueError as exc:
        raise Fail(f"the key part is not a PKCS#8 PrivateKeyInfo: {exc}", asn1parse(strict_b64(b1), 8)) from None
    if h2.get("content-type", "").strip() != CERTS_ONLY:
        raise Fail(f"second part Content-Type {h2.get('content-type')!r}", ex.lines())
    co = sm.parse_certs_only(strict_b64(b2))
    if not co.certificates or sm.public_key_der(co.certificates[0]) != sm.public_key_der(key):
        raise Fail("the first certificate is not for the returned key", [c.subject.rfc4514_string()
                                                                          for c in co.certificates])
    return f"key {type(key).__name__}, serial {co.certificates[0].serial_number:x}"


def _multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    delim = b"--" + boundary.encode()
    chunks = body.split(delim)
    out = []
    for ch in chunks[1:]:
        if ch.startswith(b"--"):
            break
        ch = ch[2:] if ch.startswith(b"\r\n") else ch.lstrip(b"\n")
        head, _, content = ch.replace(b"\r\n", b"\n").partition(b"\n\n")
        headers = {}
        for ln in head.decode("latin-1").split("\n"):
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        out.append((headers, content.strip()))
    return out


@suite.check("est.csrattrs", "csrattrs: application/csrattrs base64 DER, or none", R, "4.5.2", Level.MUST,
             "200 with base64 CsrAttrs (SEQUENCE) and Content-Type application/csrattrs, or 204/404 when the "
             "server has none")
async def csrattrs(ctx: EstContext) -> str:
    ex = await ctx.get("csrattrs")
    if ex.status in (204, 404):
        return f"{ex.status}: no attributes"
    if ex.status in (401, 403):
        raise Skip(f"csrattrs needs authentication here ({ex.status})")
    if ex.status != 200:
        raise Fail(f"answered {ex.error or ex.status}", ex.lines())
    if ex.media_type() != "application/csrattrs":
        raise Fail(f"Content-Type {ex.content_type!r}", ex.lines())
    raw = strict_b64(ex.body)
    if not raw or raw[0] != 0x30:
        raise Fail("not a SEQUENCE", asn1parse(raw, 10))
    lines = asn1parse(raw, 200)
    if any("truncated" in ln or "past the end" in ln for ln in lines):
        raise Fail("malformed DER", lines[:20])
    return f"{len(raw)} bytes of CsrAttrs"


@suite.check("est.csrattrs.template", "csrattrs: a CSR attribute template is well-formed", R, "4.5.2",
             Level.MUST, "(RFC 9908 §3.4) a certificationRequestInfoTemplate attribute carries one value that parses as the RFC's "
             "CertificationRequestInfoTemplate (version v1, NameTemplate, [0] SubjectPublicKeyInfoTemplate, [1] "
             "attributes, not both extensionRequest and extensionReqTemplate)")
async def csrattrs_template(ctx: EstContext) -> str:
    ex = await ctx.get("csrattrs")
    if ex.status != 200:
        raise Skip(f"/csrattrs answered {ex.status}: no attributes to judge")
    raw = strict_b64(ex.body)
    try:
        found = csrtemplate.templates(raw)
        if not found:
            raise Skip("the CSR Attributes Response carries no template (RFC 9908 is optional)")
        if len(found) > 1:
            raise Fail(f"{len(found)} templates; RFC 9908 §3.4 allows one", asn1parse(raw, 40))
        return csrtemplate.check_template(found[0])
    except csrtemplate.Malformed as exc:
        raise Fail(str(exc), asn1parse(raw, 40)) from None
    except (ValueError, TypeError) as exc:
        raise Fail(f"the template does not parse: {exc}", asn1parse(raw, 40)) from None


@suite.check("est.fullcmc", "fullcmc: offered or clearly not", R, "4.3", Level.MAY,
             "/fullcmc is optional: 501/404 when not offered; otherwise a malformed request gets an error")
async def fullcmc(ctx: EstContext) -> str:
    ex = await ctx.post("fullcmc", base64.b64encode(b"\x30\x00"),
                        content_type="application/pkcs7-mime; smime-type=CMC-request")
    if ex.status in (404, 501):
        raise Skip(f"not offered ({ex.status})")
    if 400 <= ex.status < 500:
        return f"offered; an empty request is refused with {ex.status}"
    raise Fail(f"an empty CMC request answered {ex.error or ex.status}", ex.lines())


@suite.check("est.fullcmc.enroll", "fullcmc: a PKCS#10 Full PKI Request is answered with a PKIResponse", R, "4.3.2",
             Level.MUST, "200 application/pkcs7-mime; smime-type=CMC-response holding SignedData(PKIResponse) with "
             "CMCStatusInfoV2 success, the transactionId echoed, the senderNonce as recipientNonce (RFC 5272 "
             "§6.6) and the certificate for the request's key")
async def fullcmc_enroll(ctx: EstContext) -> str:
    if not ctx.has_credentials:
        raise Skip("no credentials given")
    key = new_key()
    csr = make_csr(key, f"conformance-{ctx.run_id}-cmc")
    tid = int.from_bytes(os.urandom(6), "big")
    nonce = os.urandom(16)
    body = base64.b64encode(cmcmsg.full_pki_request(der(csr), tid, nonce))
    ex = await ctx.post("fullcmc", body, content_type="application/pkcs7-mime; smime-type=CMC-request")
    if ex.status in (404, 501):
        raise Skip(f"not offered ({ex.status})")
    if ex.status != 200:
        raise Fail(f"answered {ex.error or ex.status}", ex.lines())
    if ex.media_type() != "application/pkcs7-mime":
        raise Fail(f"Content-Type {ex.content_type!r}", ex.lines(body=False))
    raw = strict_b64(ex.body)
    try:
        answer = cmcmsg.read_full_pki_response(raw)
    except cmcmsg.CmcMessageError as exc:
        raise Fail(str(exc), asn1parse(raw, 40)) from None
    if answer.status == 3:
        raise Skip("the label answers pending (manual approval); give a label that issues at once")
    if answer.status != 0:
        raise Fail(f"CMCStatus {answer.status_name} (failInfo {answer.fail_info})", asn1parse(raw, 40))
    if answer.transaction_id != tid:
        raise Fail(f"transactionId {answer.transaction_id} is not the request's {tid} (RFC 5272 §6.6)")
    if answer.recipient_nonce != nonce:
        raise Fail("recipientNonce does not echo the senderNonce (RFC 5272 §6.6)")
    want = sm.public_key_der(key)
    cert = next((c for c in answer.certificates if sm.public_key_der(c) == want), None)
    if cert is None:
        raise Fail("no certificate in the PKIResponse's SignedData has the request's key",
                   [c.subject.rfc4514_string() for c in answer.certificates])
    return f"success, serial {cert.serial_number:x}, transactionId and nonce echoed"


@suite.check("est.pending", "Pending enrollment: 202 with Retry-After, correlated on re-POST", R, "4.2.3", Level.MUST,
             "a request that cannot be completed yet gets 202 with Retry-After; the client re-POSTs the same CSR")
async def pending(ctx: EstContext) -> str:
    if not ctx.o.pending_label:
        raise Skip("no --pending-label given (a label whose profile needs manual approval)")
    if not ctx.has_credentials:
        raise Skip("no credentials given")
    csr = make_csr(new_key(), f"conformance-{ctx.run_id}-pending")
    body = base64.b64encode(der(csr))
    ex = await ctx.post("simpleenroll", body, label=ctx.o.pending_label)
    if ex.status != 202:
        raise Fail(f"answered {ex.error or ex.status}, expected 202", ex.lines())
    ra = ex.header("Retry-After") or ""
    if not ra.strip().isdigit():
        raise Fail(f"Retry-After {ra!r} is not delta-seconds", ex.lines())
    ex2 = await ctx.post("simpleenroll", body, label=ctx.o.pending_label)
    if ex2.status != 202 or not (ex2.header("Retry-After") or "").strip().isdigit():
        raise Fail(f"re-POST of the same CSR answered {ex2.status}", ex2.lines())
    return f"202, Retry-After {ra}; re-POST 202"
