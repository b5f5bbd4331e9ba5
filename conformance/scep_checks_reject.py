"""SCEP negative checks: requests that must be refused with a signed FAILURE and no certificate
(RFC 8894 §3.3.2.2, §3.3), and replays and retransmissions that must not issue twice (§3.2.1.1, §7)."""

from __future__ import annotations

import os

from cryptography import x509

from conformance import scepmsg as sm
from conformance.model import Fail, Level, Skip, Suite
from conformance.scep_common import R, ScepContext, require_certrep, require_failure_no_cert

group = Suite("scep")


# ================================================================== negative cases
@group.check("scep.reject.bad-signature", "A request with a bad signature is refused", R, "3.3.2.2", Level.MUST,
             "signature verification failure: CertRep FAILURE (badMessageCheck) and no certificate")
async def reject_badsig(ctx: ScepContext) -> str:
    t = await ctx.enroll("badsig", challenge=ctx.challenge or "x", tamper_signature=True)
    return require_failure_no_cert(t, "bad signature")


@group.check("scep.reject.bad-message-digest", "Content changed after signing is refused", R, "3.3.2.2", Level.MUST,
             "messageDigest mismatch: CertRep FAILURE (badMessageCheck) and no certificate")
async def reject_baddigest(ctx: ScepContext) -> str:
    t = await ctx.enroll("baddigest", challenge=ctx.challenge or "x", tamper_content=True)
    return require_failure_no_cert(t, "tampered content")


@group.check("scep.reject.wrong-recipient", "A request encrypted to someone else is refused", R, "3.3.2.2",
             Level.MUST, "an envelope the CA cannot decrypt: CertRep FAILURE and no certificate")
async def reject_recipient(ctx: ScepContext) -> str:
    other = sm.self_signed(sm.new_rsa_key(), "not-the-ca")
    t = await ctx.enroll("wrongrcpt", challenge=ctx.challenge or "x", recipient=other.cert)
    return require_failure_no_cert(t, "envelope to another recipient")


@group.check("scep.reject.unknown-message-type", "Message type 18 (UpdateReq) is refused", R, "3.3", Level.MUST,
             "only registered message types are processed: type 18 with a valid CSR and challenge gets FAILURE "
             "(badRequest) and no certificate (CVE-2026-30836)")
async def reject_type18(ctx: ScepContext) -> str:
    if ctx.challenge is None:
        raise Skip("no --challenge given: without it the refusal proves nothing")
    t = await ctx.enroll("type18", message_type=18)
    return require_failure_no_cert(t, "messageType 18")


@group.check("scep.reject.unregistered-message-type", "An unregistered message type is refused", R, "3.3",
             Level.MUST, "messageType 99 gets FAILURE (badRequest) and no certificate")
async def reject_type99(ctx: ScepContext) -> str:
    t = await ctx.enroll("type99", message_type=99, challenge=ctx.challenge or "x")
    return require_failure_no_cert(t, "messageType 99")


@group.check("scep.reject.wrong-challenge", "A wrong challengePassword is refused", R, "3.3.1", Level.MUST,
             "PKCSReq with a wrong challenge gets FAILURE and no certificate")
async def reject_challenge(ctx: ScepContext) -> str:
    if ctx.challenge is None:
        raise Skip("no --challenge given: the server's challenge policy is unknown")
    t = await ctx.enroll("wrongchallenge", challenge="wrong-" + os.urandom(6).hex())
    return require_failure_no_cert(t, "wrong challenge")


@group.check("scep.reject.replay", "A replayed request does not issue a second certificate", R, "7", Level.SHOULD,
             "the same pkiMessage bytes again (same senderNonce) get FAILURE or the same certificate, never a new "
             "one (replay protection via nonces)")
async def reject_replay(ctx: ScepContext) -> str:
    t0 = await ctx.main()
    assert t0.issued is not None
    t = await ctx.transact(sm.PKCS_REQ, None, t0.signer, csr_key=t0.csr_key, built=t0.built,
                           method=t0.exchange.method)
    rep = require_certrep(t, "replay")
    if rep.status == "0":
        if t.issued is not None and t.issued.serial_number != t0.issued.serial_number:
            raise Fail(f"replay issued a second certificate: serial {t.issued.serial_number:x} after "
                       f"{t0.issued.serial_number:x}", t.evidence())
        return "SUCCESS with the same certificate (idempotent)"
    if rep.status == "2":
        return require_failure_no_cert(t, "replay")
    return rep.summary()


@group.check("scep.idempotent.transaction", "Same transactionID and key: the same certificate", R, "3.2.1.1",
             Level.SHOULD, "a retransmitted request (new nonce, same transactionID and CSR) gets the same answer, "
             "not a second certificate")
async def idempotent(ctx: ScepContext) -> str:
    t0 = await ctx.main()
    assert t0.issued is not None and t0.csr_key is not None
    cn = t0.issued.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    csr = sm.make_csr(t0.csr_key, str(cn[0].value) if cn else "x", ctx.challenge)
    t = await ctx.transact(sm.PKCS_REQ, csr, t0.signer, csr_key=t0.csr_key,
                           transaction_id=t0.built.transaction_id, method=t0.exchange.method)
    rep = require_certrep(t, "retransmission")
    if rep.status == "0" and t.issued is not None and t.issued.serial_number != t0.issued.serial_number:
        raise Fail(f"a second certificate: serial {t.issued.serial_number:x} after {t0.issued.serial_number:x}",
                   t.evidence())
    if rep.status == "0":
        return "SUCCESS with the same certificate"
    return rep.summary()
