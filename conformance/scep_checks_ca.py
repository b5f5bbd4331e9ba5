"""SCEP checks of the CA's public operations: GetCACaps (RFC 8894 §3.5), GetCACert (§4.2, with the RA
certificates of §2.1.2) and GetNextCACert (§4.7)."""

from __future__ import annotations

from conformance import scepmsg as sm
from conformance.asn1dump import asn1parse
from conformance.model import Fail, Level, Skip, Suite
from conformance.scep_common import KNOWN_CAPS, R, ScepContext, has_key_usage, is_ca, require_success

group = Suite("scep")


# ================================================================== GetCACaps
@group.check("scep.getcacaps.answers", "GetCACaps answers with a capability list", R, "3.5.1", Level.MUST,
             "GET ?operation=GetCACaps returns the CA's capabilities")
async def getcacaps_answers(ctx: ScepContext) -> str:
    _, caps = await ctx.step("caps", ctx._caps)
    return "caps: " + " ".join(caps)


@group.check("scep.getcacaps.content-type", "GetCACaps is text/plain", R, "3.5.2", Level.SHOULD,
             "the capability list is plain text (Content-Type: text/plain)")
async def getcacaps_ct(ctx: ScepContext) -> str:
    ex, _ = await ctx.need("caps", ctx._caps)
    if ex.media_type() != "text/plain":
        raise Fail(f"Content-Type is {ex.content_type!r}", ex.lines())
    return str(ex.content_type)


@group.check("scep.getcacaps.format", "GetCACaps keywords are exact, one per line", R, "3.5.2", Level.MUST,
             "one keyword per line, separated by <CR><LF> or <LF>, keywords case-sensitive")
async def getcacaps_format(ctx: ScepContext) -> str:
    ex, caps = await ctx.need("caps", ctx._caps)
    wrong_case = [c for c in caps if c not in KNOWN_CAPS and c.lower() in {k.lower() for k in KNOWN_CAPS}]
    if wrong_case:
        raise Fail(f"keywords with the wrong case: {wrong_case}", ex.lines())
    if "\r" in ex.body.decode("latin-1").replace("\r\n", ""):
        raise Fail("bare CR separators", ex.lines())
    unknown = [c for c in caps if c not in KNOWN_CAPS]
    return "keywords ok" + (f" (unregistered, ignored by clients: {unknown})" if unknown else "")


@group.check("scep.getcacaps.scepstandard", "SCEPStandard implies AES, POSTPKIOperation and SHA-256", R, "3.5.2",
             Level.MUST, "a CA that lists SCEPStandard supports AES, POSTPKIOperation and SHA-256")
async def getcacaps_standard(ctx: ScepContext) -> str:
    caps = await ctx.caps()
    if "SCEPStandard" not in caps:
        raise Skip("SCEPStandard not advertised")
    t = await ctx.enroll("scepstandard", cipher="AES-128", digest="SHA-256", method="POST")
    require_success(t, "PKCSReq with AES-128 + SHA-256 over POST")
    return "PKCSReq with AES-128, SHA-256, POST: SUCCESS"


@group.check("scep.getcacaps.sha2", "Advertises SHA-256 and AES", R, "3.5.2", Level.SHOULD,
             "CAs SHOULD support SHA-256 and AES (DES and SHA-1 are deprecated)")
async def getcacaps_sha2(ctx: ScepContext) -> str:
    caps = await ctx.caps()
    missing = [c for c in ("AES", "SHA-256") if c not in caps and "SCEPStandard" not in caps]
    if missing:
        raise Fail(f"not advertised: {missing}", [" ".join(sorted(caps))])
    return "AES and SHA-256 advertised"


# ================================================================== GetCACert
@group.check("scep.getcacert.shape", "GetCACert: one DER certificate or a certs-only chain", R, "4.2.1",
             Level.MUST, "x-x509-ca-cert with one DER certificate, or x-x509-ca-ra-cert with a degenerate "
             "certificates-only SignedData")
async def getcacert_shape(ctx: ScepContext) -> str:
    ex, certs, kind = await ctx.step("cacert", ctx._cacert)
    if kind == "chain":
        co = sm.parse_certs_only(ex.body)
        problems = co.shape_problems()
        if problems:
            raise Fail("certificates-only SignedData: " + "; ".join(problems), ex.lines() + asn1parse(ex.body, 16))
        if len(certs) < 2:
            raise Fail("x-x509-ca-ra-cert with a single certificate (RFC 8894 §4.2.1.2: a chain or RA certs)",
                       ex.lines())
    return f"{ex.media_type()}: " + "; ".join(c.subject.rfc4514_string() for c in certs)


@group.check("scep.getcacert.ra-usage", "RA certificates carry the key usages clients select by", R, "2.1.2",
             Level.SHOULD, "with a separate RA, the certificate to encrypt to has keyEncipherment and the "
             "signing certificate digitalSignature")
async def getcacert_ra(ctx: ScepContext) -> str:
    certs = await ctx.ca_certs()
    if len(certs) == 1:
        raise Skip("a single CA certificate: the CA is its own RA")
    leaves = [c for c in certs if not is_ca(c)]
    if not leaves:
        return "no separate RA certificate; the CA certificate is used"
    if not any(has_key_usage(c, "key_encipherment") for c in leaves):
        raise Fail("no RA certificate has keyEncipherment", [c.subject.rfc4514_string() for c in leaves])
    if not any(has_key_usage(c, "digital_signature") for c in leaves):
        raise Fail("no RA certificate has digitalSignature", [c.subject.rfc4514_string() for c in leaves])
    return "RA: " + ", ".join(c.subject.rfc4514_string() for c in leaves)


@group.check("scep.getnextcacert", "GetNextCACert when advertised", R, "4.7.1", Level.MUST,
             "a CA listing GetNextCACert answers it with application/x-x509-next-ca-cert")
async def getnextcacert(ctx: ScepContext) -> str:
    if "GetNextCACert" not in await ctx.caps():
        raise Skip("GetNextCACert not advertised")
    ex = await ctx.http.request("GET", ctx.op_url("GetNextCACert", "conformance"))
    if ex.status != 200 or ex.media_type() != "application/x-x509-next-ca-cert":
        raise Fail(f"HTTP {ex.error or ex.status}, Content-Type {ex.content_type!r}", ex.lines())
    rep = sm.parse_certrep(ex.body, await ctx.ca_certs())
    if not rep.signature_ok:
        raise Fail("GetNextCACert reply signature: " + rep.signature_problem, ex.lines())
    return "signed next-CA chain"
