"""EST simpleenroll checks (RFC 7030 §4.2.1, §4.2.3): the reference enrollment and its reply, the
RFC 8951 §3 input variants, and refusals of undecodable or unsigned requests (§3.4)."""

from __future__ import annotations

import base64
from typing import Any

from conformance.est_common import (
    CERTS_ONLY,
    LIBEST,
    R,
    R8951,
    STRONGSWAN,
    EstContext,
    b64_lines,
    check_cte,
    check_framing,
    der,
    make_csr,
    new_key,
    require_refused,
)
from conformance.model import Fail, Interop, Level, Skip, Suite

group = Suite("est")


# ================================================================== simpleenroll
@group.check("est.simpleenroll.success", "simpleenroll issues a certificate", R, "4.2.1", Level.MUST,
             "an authenticated, valid PKCS#10 request gets 200 with the issued certificate")
async def enroll_ok(ctx: EstContext) -> str:
    e = await ctx.step("enroll", ctx._main)
    return f"serial {e.cert.serial_number:x}, {e.cert.subject.rfc4514_string()}"


@group.check("est.simpleenroll.content-type", "Enrollment reply is certs-only, byte-exact", R, "4.2.3", Level.MUST,
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


@group.check("est.simpleenroll.certs-only", "Enrollment reply: base64 certs-only, issued certificate first", R,
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


@group.check("est.simpleenroll.cte", "Enrollment reply carries Content-Transfer-Encoding: base64", R8951, "3",
             Level.INTEROP, "RFC 8951 lets clients ignore the header; libest's client requires it")
async def enroll_cte(ctx: EstContext) -> str:
    e = await ctx.main()
    return check_cte(e.exchange)


@group.check("est.simpleenroll.framing", "Enrollment reply base64 framing suits deployed clients", R8951, "3",
             Level.INTEROP, "base64 may be sent with or without line breaks; strongSwan 5.9.8 pki fails on any "
             "line break, libest's client on one line of 1024+ characters")
async def enroll_framing(ctx: EstContext) -> str:
    e = await ctx.main()
    return check_framing(e.exchange.body, e.exchange)


def _variant(cid: str, title: str, rfc: str, section: str, level: Level, text: str, body_fn: Any,
             headers: dict[str, str] | None) -> None:
    @group.check(cid, title, rfc, section, level, text)
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


@group.check("est.errors.bad-base64", "A body that is not base64 gets 400 with a text/plain reason", R, "4.2.3",
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


@group.check("est.errors.bad-pop", "A CSR whose signature does not verify is refused", R, "3.4", Level.MUST,
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
