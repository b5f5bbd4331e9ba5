"""SCEP checks of the reference enrollment: PKCSReq (RFC 8894 §3.3.1) and every property of its
CertRep (§3.2 signature and attributes, §3.2.1 transactionID and nonces, §3.3.2 envelope and content)."""

from __future__ import annotations

from cryptography import x509

from conformance import scepmsg as sm
from conformance.asn1dump import asn1parse
from conformance.model import Fail, Level, Skip, Suite
from conformance.scep_common import PKI_MESSAGE_TYPE, R, ScepContext

group = Suite("scep")


# ================================================================== the reference enrollment
@group.check("scep.pkcsreq.success", "PKCSReq with the challenge is issued", R, "3.3.1", Level.MUST,
             "a valid PKCSReq (PKCS#10 with challengePassword) gets CertRep SUCCESS")
async def pkcsreq_success(ctx: ScepContext) -> str:
    if ctx.challenge is None:
        raise Skip("no --challenge given: the suite makes no enrollment")
    t = await ctx.step("enroll", ctx._main)
    return (f"{t.exchange.method} {t.built.cipher}/{t.built.digest}: SUCCESS, serial "
            f"{t.issued.serial_number:x}" if t.issued else "SUCCESS")


@group.check("scep.certrep.content-type", "PKIOperation reply is application/x-pki-message", R, "4.3", Level.MUST,
             "the CertRep is sent with Content-Type application/x-pki-message")
async def certrep_ct(ctx: ScepContext) -> str:
    t = await ctx.main()
    if t.exchange.content_type != PKI_MESSAGE_TYPE:
        if t.exchange.media_type() == PKI_MESSAGE_TYPE:
            return f"{t.exchange.content_type!r} (media type ok, with parameters)"
        raise Fail(f"Content-Type is {t.exchange.content_type!r}", t.exchange.lines(body=False))
    return PKI_MESSAGE_TYPE


@group.check("scep.certrep.signature", "CertRep is signed and its messageDigest matches", R, "3.2", Level.MUST,
             "the CertRep SignedData signature verifies and messageDigest covers the content as sent")
async def certrep_sig(ctx: ScepContext) -> str:
    t, rep = await ctx.main_reply()
    if not rep.signature_ok:
        raise Fail(rep.signature_problem, t.evidence())
    if rep.message_digest_ok is False:
        raise Fail("messageDigest does not match the encapsulated content", t.evidence())
    if rep.message_digest_ok is None:
        raise Fail("no messageDigest signed attribute", t.evidence() + rep.attribute_lines())
    return f"signed by {rep.signer_cert.subject.rfc4514_string() if rep.signer_cert else '?'} ({rep.signer_digest})"


@group.check("scep.certrep.attribute-types", "SCEP attributes have the RFC's ASN.1 types", R, "3.2.1", Level.MUST,
             "messageType, pkiStatus, transactionID are PrintableString; nonces are 16-byte OCTET STRINGs")
async def certrep_attr_types(ctx: ScepContext) -> str:
    t, rep = await ctx.main_reply()
    want = {sm.OID_MESSAGE_TYPE: 0x13, sm.OID_PKI_STATUS: 0x13, sm.OID_TRANSACTION_ID: 0x13,
            sm.OID_SENDER_NONCE: 0x04, sm.OID_RECIPIENT_NONCE: 0x04}
    problems = []
    for oid, tag in want.items():
        a = rep.attrs.get(oid)
        if a is None:
            problems.append(f"{sm.ATTR_NAMES[oid]} missing")
        elif a.tag != tag:
            problems.append(f"{sm.ATTR_NAMES[oid]} has tag 0x{a.tag:02x}, expected 0x{tag:02x}")
        elif a.count != 1:
            problems.append(f"{sm.ATTR_NAMES[oid]} has {a.count} values")
    for oid in (sm.OID_SENDER_NONCE, sm.OID_RECIPIENT_NONCE):
        a = rep.attrs.get(oid)
        if a is not None and len(a.content) != 16:
            problems.append(f"{sm.ATTR_NAMES[oid]} is {len(a.content)} bytes, expected 16")
    if problems:
        raise Fail("; ".join(problems), rep.attribute_lines())
    return "types ok"


@group.check("scep.certrep.message-type", "CertRep messageType is 3", R, "3.3.2", Level.MUST,
             "the reply's messageType is CertRep (3)")
async def certrep_type(ctx: ScepContext) -> str:
    _, rep = await ctx.main_reply()
    if rep.attr_text(sm.OID_MESSAGE_TYPE) != "3":
        raise Fail(f"messageType {rep.attr_text(sm.OID_MESSAGE_TYPE)!r}", rep.attribute_lines())
    return "3"


@group.check("scep.certrep.transaction-id", "transactionID is echoed", R, "3.2.1.1", Level.MUST,
             "the CertRep carries the request's transactionID unchanged")
async def certrep_txid(ctx: ScepContext) -> str:
    t = await ctx.main()
    got = t.rep.attr_text(sm.OID_TRANSACTION_ID) if t.rep else None
    if got != t.built.transaction_id:
        raise Fail(f"sent {t.built.transaction_id!r}, got {got!r}", t.rep.attribute_lines() if t.rep else [])
    return "echoed"


@group.check("scep.certrep.recipient-nonce", "recipientNonce echoes the request's senderNonce", R, "3.2.1.5",
             Level.MUST, "recipientNonce = the senderNonce of the request")
async def certrep_rnonce(ctx: ScepContext) -> str:
    t = await ctx.main()
    a = t.rep.attrs.get(sm.OID_RECIPIENT_NONCE) if t.rep else None
    if a is None or a.content != t.built.sender_nonce:
        raise Fail(f"sent senderNonce {t.built.sender_nonce.hex()}, got recipientNonce "
                   f"{a.content.hex() if a else None}", t.rep.attribute_lines() if t.rep else [])
    return "echoed"


@group.check("scep.certrep.sender-nonce", "CertRep carries a fresh senderNonce of its own", R, "3.2.1.5", Level.MUST,
             "the responder's senderNonce is a new random value, not the requester's nonce")
async def certrep_snonce(ctx: ScepContext) -> str:
    t = await ctx.main()
    a = t.rep.attrs.get(sm.OID_SENDER_NONCE) if t.rep else None
    if a is None:
        raise Fail("no senderNonce in the CertRep", t.rep.attribute_lines() if t.rep else [])
    if a.content == t.built.sender_nonce:
        raise Fail(f"senderNonce {a.content.hex()} is the request's own nonce, reused", t.rep.attribute_lines()
                   if t.rep else [])
    return "fresh"


@group.check("scep.certrep.digest-mirrors", "CertRep is signed with the request's digest", R, "3.5.2", Level.INTEROP,
             "sign with the digest the client chose (clients without SHA-1 fail otherwise: "
             "sscep on RHEL 9, Cisco after EJBCA's change)")
async def certrep_digest(ctx: ScepContext) -> str:
    t = await ctx.main()
    assert t.rep is not None
    if t.rep.signer_digest != t.built.digest:
        raise Fail(f"request used {t.built.digest}, reply signed with {t.rep.signer_digest}",
                   [f"SignerInfo digestAlgorithm: {t.rep.signer_digest}"])
    return t.built.digest


@group.check("scep.certrep.signature-algorithm", "SignerInfo signatureAlgorithm is rsaEncryption", R, "3.2",
             Level.INTEROP, "strict clients (strongSwan pki) accept only rsaEncryption as the SignerInfo "
             "digestEncryptionAlgorithm")
async def certrep_sigalg(ctx: ScepContext) -> str:
    t = await ctx.main()
    assert t.rep is not None
    if t.rep.signer_sig_alg not in ("1.2.840.113549.1.1.1", "1.2.840.10045.2.1") and \
            not t.rep.signer_sig_alg.startswith("1.2.840.10045.4"):
        raise Fail(f"signatureAlgorithm {t.rep.signer_sig_alg} (strongSwan: 'only RSA digest encryption supported')",
                   [f"SignerInfo signatureAlgorithm: {t.rep.signer_sig_alg}"])
    return t.rep.signer_sig_alg


@group.check("scep.certrep.encrypted-to-signer", "SUCCESS is encrypted to the request's signer", R, "3.3.2.1",
             Level.MUST, "the pkcsPKIEnvelope's recipient is the certificate that signed the request")
async def certrep_recipient(ctx: ScepContext) -> str:
    t = await ctx.main()
    if t.decrypted is None:
        raise Fail("SUCCESS without a pkcsPKIEnvelope", t.evidence())
    if not t.decrypted.recipient_matches:
        raise Fail("no RecipientInfo names the request signer's issuerAndSerialNumber (it decrypted anyway)",
                   t.evidence())
    return f"to {t.signer.cert.subject.rfc4514_string()} ({t.decrypted.key_transport})"


@group.check("scep.certrep.cipher-mirrors", "SUCCESS envelope uses the request's cipher", R, "3.5.2", Level.INTEROP,
             "encrypt with the client's algorithm, never a fixed DES (OpenSSL 3 clients cannot read DES)")
async def certrep_cipher(ctx: ScepContext) -> str:
    t, decrypted = await ctx.main_envelope()
    if decrypted.cipher != t.built.cipher:
        raise Fail(f"request used {t.built.cipher}, reply envelope uses {decrypted.cipher}",
                   [f"contentEncryptionAlgorithm: {decrypted.cipher}"])
    return str(decrypted.cipher)


@group.check("scep.certrep.der-envelope", "Envelope encryptedContent is primitive (DER)", R, "3.2.2", Level.INTEROP,
             "asn1crypto-based clients (PyScep) reject a constructed BER encryptedContent")
async def certrep_der(ctx: ScepContext) -> str:
    t, decrypted = await ctx.main_envelope()
    if decrypted.constructed_content:
        raise Fail("encryptedContent is a constructed OCTET STRING",
                   asn1parse(t.rep.econtent if t.rep and t.rep.econtent else b"", 40)[-12:])
    return "primitive"


@group.check("scep.certrep.certs-only", "SUCCESS content is a degenerate certificates-only SignedData", R, "3.3.2.1",
             Level.MUST, "messageData of a SUCCESS is a certs-only SignedData (RFC 8894 §3.4)")
async def certrep_certsonly(ctx: ScepContext) -> str:
    t = await ctx.main()
    if t.certs is None:
        raise Fail(t.certs_error or "no certificates-only content",
                   asn1parse(t.decrypted.plaintext, 16) if t.decrypted else [])
    problems = t.certs.shape_problems()
    if problems:
        raise Fail("; ".join(problems), asn1parse(t.decrypted.plaintext, 16) if t.decrypted else [])
    return f"{len(t.certs.certificates)} certificate(s)"


@group.check("scep.certrep.issued-certificate", "The issued certificate is for the requested key", R, "3.3.2.1",
             Level.MUST, "the SUCCESS reply contains the certificate issued for the CSR's public key")
async def certrep_issued(ctx: ScepContext) -> str:
    t = await ctx.main()
    if t.issued is None:
        raise Fail("no certificate in the reply has the CSR's public key",
                   [c.subject.rfc4514_string() for c in (t.certs.certificates if t.certs else [])])
    cns = t.issued.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return f"serial {t.issued.serial_number:x}, subject {t.issued.subject.rfc4514_string()}" + (
        "" if cns else " (no CN)")


@group.check("scep.certrep.issued-first", "The issued certificate comes first", R, "3.3.2.1", Level.INTEROP,
             "clients read certificates[0] (Go clients, PyScep): put the issued certificate first")
async def certrep_first(ctx: ScepContext) -> str:
    t = await ctx.main()
    if t.issued is None or t.certs is None:
        raise Skip("no issued certificate")
    if t.certs.certificates[0] != t.issued:
        raise Fail("the first certificate is " + t.certs.certificates[0].subject.rfc4514_string(),
                   [c.subject.rfc4514_string() for c in t.certs.certificates])
    return "first"


@group.check("scep.certrep.issued-chains", "The issued certificate chains to GetCACert", R, "4.2", Level.MUST,
             "the certificate is signed by a CA certificate the client got from GetCACert")
async def certrep_chains(ctx: ScepContext) -> str:
    t = await ctx.main()
    if t.issued is None:
        raise Skip("no issued certificate")
    pool = [*await ctx.ca_certs(), *(t.certs.certificates if t.certs else [])]
    for ca in pool:
        if ca != t.issued and sm.issued_by(t.issued, ca):
            return "issued by " + ca.subject.rfc4514_string()
    raise Fail("no GetCACert certificate signed it", ["issuer " + t.issued.issuer.rfc4514_string()])
