"""EST checks of the transport and the anonymous surface: TLS (RFC 7030 §3.3.1), /cacerts (§4.1) and its
base64 framing (RFC 8951 §3), URIs and labels (§3.2.2), HTTP authentication (§3.2.3)."""

from __future__ import annotations

import base64
import ssl

from cryptography import x509

from conformance import scepmsg as sm
from conformance.asn1dump import asn1parse
from conformance.est_common import (
    R,
    R8951,
    EstContext,
    check_cte,
    check_framing,
    der,
    make_csr,
    new_key,
    require_refused,
    strict_b64,
)
from conformance.model import Fail, Level, Skip, Suite
from conformance.transport import Exchange

group = Suite("est")


def _self_signed(c: x509.Certificate) -> bool:
    return c.issuer == c.subject and sm.issued_by(c, c)


# ================================================================== TLS and /cacerts
@group.check("est.tls.version", "TLS 1.2 or later", R, "3.3.1", Level.MUST,
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


@group.check("est.cacerts.anonymous", "/cacerts answers without client authentication", R, "4.1.1", Level.MUST,
             "GET /cacerts is served to a client that presents no credentials (it SHOULD NOT need auth)")
async def cacerts_anon(ctx: EstContext) -> str:
    ex, co = await ctx.step("cacerts", ctx._cacerts)
    return f"200, {len(co.certificates)} certificates"


@group.check("est.cacerts.content-type", "/cacerts is application/pkcs7-mime", R, "4.1.3", Level.MUST,
             "Content-Type application/pkcs7-mime")
async def cacerts_ct(ctx: EstContext) -> str:
    ex, _ = await ctx.cacerts()
    if ex.media_type() != "application/pkcs7-mime":
        raise Fail(f"Content-Type {ex.content_type!r}", ex.lines(body=False))
    return str(ex.content_type)


@group.check("est.cacerts.certs-only", "/cacerts is a base64 certs-only SignedData", R, "4.1.3", Level.MUST,
             "the body is base64 (RFC 8951) of a degenerate certificates-only CMS SignedData")
async def cacerts_shape(ctx: EstContext) -> str:
    ex, co = await ctx.cacerts()
    problems = co.shape_problems()
    if problems:
        raise Fail("; ".join(problems), ex.lines(body=False) + asn1parse(strict_b64(ex.body), 16))
    return "; ".join(c.subject.rfc4514_string() for c in co.certificates)


@group.check("est.cacerts.chain", "/cacerts holds the root and every certificate to chain to it", R, "4.1.3",
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


@group.check("est.cacerts.cte", "/cacerts carries Content-Transfer-Encoding: base64", R8951, "3", Level.INTEROP,
             "RFC 8951 lets clients ignore the header; libest's client rejects a base64 body without it")
async def cacerts_cte(ctx: EstContext) -> str:
    ex, _ = await ctx.cacerts()
    return check_cte(ex)


@group.check("est.cacerts.framing", "/cacerts base64 framing suits deployed clients", R8951, "3", Level.INTEROP,
             "base64 may be sent with or without line breaks; strongSwan 5.9.8 pki fails on any line break, "
             "libest's client (OpenSSL BIO line mode) on one line of 1024+ characters")
async def cacerts_framing(ctx: EstContext) -> str:
    ex, _ = await ctx.cacerts()
    return check_framing(ex.body, ex)


# ================================================================== paths and labels
def _require_not_found(ex: Exchange) -> str:
    """RFC 7030 §3.2.2: what the server does not offer is not found."""
    if ex.status != 404:
        raise Fail(f"answered {ex.error or ex.status}", ex.lines())
    return "404"


@group.check("est.path.unknown-label", "An unknown label gets 404", R, "3.2.2", Level.SHOULD,
             "/.well-known/est/<unknown label>/cacerts is not found")
async def unknown_label(ctx: EstContext) -> str:
    return _require_not_found(await ctx.get("cacerts", label=f"no-such-label-{ctx.run_id}"))


@group.check("est.path.unknown-operation", "An unknown operation gets 404", R, "3.2.2", Level.SHOULD,
             "only the registered operation path segments exist")
async def unknown_op(ctx: EstContext) -> str:
    return _require_not_found(await ctx.get(f"nosuchop{ctx.run_id}"))


@group.check("est.label.cacerts", "The given label serves /cacerts", R, "3.2.2", Level.MUST,
             "/.well-known/est/<label>/cacerts works for a label the server offers")
async def label_cacerts(ctx: EstContext) -> str:
    if not ctx.o.label:
        raise Skip("no --label given")
    ex, co = await ctx.cacerts()
    return f"label {ctx.o.label}: {len(co.certificates)} certificates"


# ================================================================== authentication
@group.check("est.auth.challenge", "Enrollment without credentials gets 401 with WWW-Authenticate", R, "3.2.3",
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


@group.check("est.auth.wrong-password", "A wrong password is refused", R, "3.2.3", Level.MUST,
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
