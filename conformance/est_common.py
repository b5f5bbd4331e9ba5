"""What every EST check shares (RFC 7030, RFC 8951): the command line's options, the context
that holds the TLS sessions and the memoised reference enrollment, request builders, the
judgments several checks make (refusals, base64 framing), and the plan said before a run."""

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
from cryptography.x509.oid import NameOID

from conformance import scepmsg as sm
from conformance.asn1dump import asn1parse
from conformance.model import Fail, Interop, Skip
from conformance.runner import BaseContext
from conformance.transport import Exchange, Http

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
