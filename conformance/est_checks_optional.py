"""EST checks of the optional operations: serverkeygen (RFC 7030 §4.4), csrattrs and its RFC 9908
template (§4.5), fullcmc (§4.3) and pending enrollment (§4.2.3)."""

from __future__ import annotations

import base64
import os
import re

from cryptography.hazmat.primitives import serialization

from conformance import cmcmsg, csrtemplate
from conformance import scepmsg as sm
from conformance.asn1dump import asn1parse
from conformance.est_common import CERTS_ONLY, R, EstContext, der, make_csr, new_key, strict_b64
from conformance.model import Fail, Level, Skip, Suite

group = Suite("est")


# ================================================================== optional operations
@group.check("est.serverkeygen", "serverkeygen: key part first, then the certificate", R, "4.4.2", Level.MUST,
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


@group.check("est.csrattrs", "csrattrs: application/csrattrs base64 DER, or none", R, "4.5.2", Level.MUST,
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


@group.check("est.csrattrs.template", "csrattrs: a CSR attribute template is well-formed", R, "4.5.2",
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


@group.check("est.fullcmc", "fullcmc: offered or clearly not", R, "4.3", Level.MAY,
             "/fullcmc is optional: 501/404 when not offered; otherwise a malformed request gets an error")
async def fullcmc(ctx: EstContext) -> str:
    ex = await ctx.post("fullcmc", base64.b64encode(b"\x30\x00"),
                        content_type="application/pkcs7-mime; smime-type=CMC-request")
    if ex.status in (404, 501):
        raise Skip(f"not offered ({ex.status})")
    if 400 <= ex.status < 500:
        return f"offered; an empty request is refused with {ex.status}"
    raise Fail(f"an empty CMC request answered {ex.error or ex.status}", ex.lines())


@group.check("est.fullcmc.enroll", "fullcmc: a PKCS#10 Full PKI Request is answered with a PKIResponse", R, "4.3.2",
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


@group.check("est.pending", "Pending enrollment: 202 with Retry-After, correlated on re-POST", R, "4.2.3", Level.MUST,
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
