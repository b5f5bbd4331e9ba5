"""SCEP checks of transports, ciphers and digests: PKIOperation by POST and GET (RFC 8894 §4.1), and
every advertised capability's algorithm used in a request (§3.5.2)."""

from __future__ import annotations

from typing import Any

from conformance.model import Level, Skip, Suite
from conformance.scep_common import R, ScepContext, require_issued

group = Suite("scep")


# ================================================================== transports, ciphers, digests
@group.check("scep.pkioperation.post", "POSTPKIOperation advertised: POST works", R, "4.1", Level.MUST,
             "a CA that lists POSTPKIOperation accepts PKIOperation by HTTP POST")
async def pkiop_post(ctx: ScepContext) -> str:
    if "POSTPKIOperation" not in await ctx.caps():
        raise Skip("POSTPKIOperation not advertised")
    t = await ctx.main()
    if t.exchange.method != "POST":
        raise Skip("the reference enrollment used GET")
    return "SUCCESS over POST"


@group.check("scep.pkioperation.get", "PKIOperation over GET", R, "4.1", Level.SHOULD,
             "GET ?operation=PKIOperation&message=<base64> works (Cisco IOS and macOS use GET)")
async def pkiop_get(ctx: ScepContext) -> str:
    if ctx.challenge is None:
        raise Skip("no --challenge given")
    require_issued(await ctx.enroll("get", method="GET"), "PKCSReq over GET")
    return "SUCCESS over GET"


def _alg_check(kind: str, name: str, cap: str | None) -> None:
    @group.check(f"scep.{kind}.{name.lower()}", f"Advertised {kind} {name} works", R, "3.5.2", Level.MUST,
                 f"a CA that advertises {cap or name} accepts requests that use it")
    async def fn(ctx: ScepContext) -> str:
        caps = await ctx.caps()
        advertised = cap in caps if cap else False
        if cap == "AES" and "SCEPStandard" in caps:
            advertised = True
        if cap == "SHA-256" and "SCEPStandard" in caps:
            advertised = True
        if not advertised:
            raise Skip(f"{cap} not advertised")
        if ctx.challenge is None:
            raise Skip("no --challenge given")
        kw: dict[str, Any] = {"cipher": name} if kind == "cipher" else {"digest": name}
        t = await ctx.enroll(f"{kind}-{name.lower()}", **kw)
        require_issued(t, f"PKCSReq with {kind} {name}")
        return f"SUCCESS (reply: {t.decrypted.cipher if t.decrypted else '?'} / {t.rep.signer_digest if t.rep else '?'})"


for _name, _cap in (("AES-128", "AES"), ("DES3", "DES3")):
    _alg_check("cipher", _name, _cap)
for _name in ("SHA-1", "SHA-256", "SHA-384", "SHA-512"):
    _alg_check("digest", _name, _name)
