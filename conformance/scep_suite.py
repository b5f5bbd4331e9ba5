"""SCEP checks (RFC 8894). Every message is built here (conformance.scepmsg) and every reply
is judged on its bytes."""

from __future__ import annotations

import base64
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from conformance import scepmsg as sm
from conformance.asn1dump import asn1parse
from conformance.model import Fail, Level, Skip, Suite
from conformance.runner import BaseContext
from conformance.transport import Exchange, Http

suite = Suite("scep")
R = "RFC 8894"
KNOWN_CAPS = ("AES", "DES3", "GetNextCACert", "POSTPKIOperation", "Renewal", "SHA-1", "SHA-256", "SHA-512",
              "SCEPStandard")
PKI_MESSAGE_TYPE = "application/x-pki-message"


@dataclass
class Txn:
    """One PKIOperation: what was sent, what came back, and what the suite read from it."""

    built: sm.Built
    exchange: Exchange
    signer: sm.Identity
    csr_key: Any = None
    rep: sm.CertRep | None = None
    parse_error: str | None = None
    decrypted: sm.Decrypted | None = None
    decrypt_error: str | None = None
    certs: sm.CertsOnly | None = None
    certs_error: str | None = None

    def evidence(self) -> list[str]:
        out = self.exchange.lines(body=self.rep is None)
        if self.rep is not None:
            out.append("CertRep: " + self.rep.summary())
        if self.parse_error:
            out.append("reply: " + self.parse_error)
            out.extend(asn1parse(self.exchange.body, 12))
        return out

    @property
    def issued(self) -> x509.Certificate | None:
        if self.certs is None or self.csr_key is None:
            return None
        want = sm.public_key_der(self.csr_key)
        return next((c for c in self.certs.certificates if sm.public_key_der(c) == want), None)


class ScepContext(BaseContext):
    """Target, options and the state shared by the SCEP checks."""

    def __init__(self, url: str, http: Http, challenge: str | None) -> None:
        super().__init__()
        self.url = url.rstrip("?")
        self.http = http
        self.challenge = challenge
        self.enrollments: list[str] = []
        self.run_id = os.urandom(3).hex()

    # -------------------------------------------------------------- helpers
    def op_url(self, operation: str, message: str | None = None) -> str:
        q = f"operation={operation}"
        if message is not None:
            q += "&message=" + message
        return f"{self.url}{'&' if '?' in self.url else '?'}{q}"

    async def caps(self) -> set[str]:
        return set((await self.need("caps", self._caps))[1])

    async def _caps(self) -> tuple[Exchange, list[str]]:
        ex = await self.http.request("GET", self.op_url("GetCACaps"))
        if ex.error or ex.status != 200:
            raise Fail(f"GetCACaps answered {ex.error or ex.status}", ex.lines())
        text = ex.body.decode("latin-1")
        return ex, [ln.strip() for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]

    async def ca_certs(self) -> list[x509.Certificate]:
        return list((await self.need("cacert", self._cacert))[1])

    async def _cacert(self) -> tuple[Exchange, list[x509.Certificate], str]:
        ex = await self.http.request("GET", self.op_url("GetCACert", "conformance"))
        if ex.error or ex.status != 200:
            raise Fail(f"GetCACert answered {ex.error or ex.status}", ex.lines())
        mt = ex.media_type()
        if mt == "application/x-x509-ca-cert":
            try:
                return ex, [x509.load_der_x509_certificate(ex.body)], "single"
            except ValueError as exc:
                raise Fail(f"x-x509-ca-cert body is not one DER certificate: {exc}",
                           ex.lines() + asn1parse(ex.body, 10)) from None
        if mt == "application/x-x509-ca-ra-cert":
            try:
                co = sm.parse_certs_only(ex.body)
            except sm.MessageError as exc:
                raise Fail(str(exc), ex.lines() + asn1parse(ex.body, 16)) from None
            if not co.certificates:
                raise Fail("the certificates-only reply holds no certificate", ex.lines())
            return ex, co.certificates, "chain"
        raise Fail(f"GetCACert Content-Type {ex.content_type!r} is neither application/x-x509-ca-cert nor "
                   "application/x-x509-ca-ra-cert", ex.lines())

    async def recipient(self) -> x509.Certificate:
        """The certificate to encrypt requests to (RFC 8894 §2.1.2, §4.2.1.2): the only one, or the
        first non-CA certificate with keyEncipherment, or else the first certificate."""
        certs = await self.ca_certs()
        if len(certs) == 1:
            return certs[0]
        for c in certs:
            if not _is_ca(c) and _ku(c, "key_encipherment"):
                return c
        for c in certs:
            if not _is_ca(c):
                return c
        return certs[0]

    async def cipher(self) -> str:
        caps = await self.caps()
        if "AES" in caps or "SCEPStandard" in caps:
            return "AES-128"
        return "DES3" if "DES3" in caps else "DES"

    async def digest(self) -> str:
        caps = await self.caps()
        if "SHA-256" in caps or "SCEPStandard" in caps:
            return "SHA-256"
        for d in ("SHA-512", "SHA-1"):
            if d in caps:
                return d
        return "MD5"

    async def method(self) -> str:
        return "POST" if "POSTPKIOperation" in await self.caps() else "GET"

    async def send(self, built: sm.Built, method: str) -> Exchange:
        if method == "POST":
            return await self.http.request("POST", self.op_url("PKIOperation"), data=built.der,
                                           headers={"Content-Type": PKI_MESSAGE_TYPE})
        msg = urllib.parse.quote(base64.b64encode(built.der).decode(), safe="")
        return await self.http.request("GET", self.op_url("PKIOperation", msg), encoded=True)

    async def transact(self, message_type: int, inner: bytes | None, signer: sm.Identity, *,
                       csr_key: Any = None, cipher: str | None = None, digest: str | None = None,
                       method: str | None = None, recipient: x509.Certificate | None = None,
                       built: sm.Built | None = None, **kw: Any) -> Txn:
        """Build (unless ``built``), send and read one pkiMessage exchange."""
        cipher = cipher or await self.cipher()
        digest = digest or await self.digest()
        method = method or await self.method()
        if built is None:
            env = sm.envelope(inner, recipient or await self.recipient(), cipher) if inner is not None else None
            tx = kw.pop("transaction_id", None) or sm.transaction_id_for(csr_key or signer.key)
            built = sm.pki_message(message_type, tx, signer, env, digest=digest, cipher=cipher, **kw)
        ex = await self.send(built, method)
        t = Txn(built, ex, signer, csr_key)
        if ex.error or ex.status != 200:
            return t
        try:
            t.rep = sm.parse_certrep(ex.body, await self.ca_certs())
        except sm.MessageError as exc:
            t.parse_error = str(exc)
            return t
        if t.rep.status == "0" and t.rep.econtent:
            try:
                t.decrypted = sm.decrypt_envelope(t.rep.econtent, signer)
            except sm.MessageError as exc:
                t.decrypt_error = str(exc)
                return t
            try:
                t.certs = sm.parse_certs_only(t.decrypted.plaintext)
            except sm.MessageError as exc:
                t.certs_error = str(exc)
        return t

    async def enroll(self, label: str, *, cipher: str | None = None, digest: str | None = None,
                     method: str | None = None, challenge: str | None = "default") -> Txn:
        """A PKCSReq from a fresh RSA key and self-signed certificate."""
        key = sm.new_rsa_key()
        cn = f"conformance-{self.run_id}-{label}"
        me = sm.self_signed(key, cn)
        chal = self.challenge if challenge == "default" else challenge
        csr = sm.make_csr(key, cn, chal)
        return await self.transact(sm.PKCS_REQ, csr, me, csr_key=key, cipher=cipher, digest=digest, method=method)

    async def main(self) -> Txn:
        """The reference enrollment most checks judge: PKCSReq with the preferred transport,
        cipher and digest (POST, AES, SHA-256 on a modern server)."""
        t: Txn = await self.need("enroll", self._main)
        return t

    async def _main(self) -> Txn:
        t = await self.enroll("main")
        require_success(t, "the reference PKCSReq")
        return t


def _is_ca(c: x509.Certificate) -> bool:
    try:
        return bool(c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _ku(c: x509.Certificate, name: str) -> bool:
    try:
        return bool(getattr(c.extensions.get_extension_for_class(x509.KeyUsage).value, name))
    except x509.ExtensionNotFound:
        return True


def require_certrep(t: Txn, what: str) -> sm.CertRep:
    """The reply must be HTTP 200 with a readable CertRep."""
    if t.exchange.error or t.exchange.status != 200:
        raise Fail(f"{what}: HTTP {t.exchange.error or t.exchange.status} instead of a CertRep "
                   "(RFC 8894 §3.3.2: a parsed request gets a signed CertRep)", t.evidence())
    if t.rep is None:
        raise Fail(f"{what}: the reply is not a readable CertRep: {t.parse_error}", t.evidence())
    return t.rep


def require_success(t: Txn, what: str) -> sm.CertRep:
    rep = require_certrep(t, what)
    if rep.status != "0":
        raise Fail(f"{what}: {rep.summary()}, expected SUCCESS", t.evidence())
    if t.decrypt_error:
        raise Fail(f"{what}: {t.decrypt_error}", t.evidence())
    return rep


def require_failure_no_cert(t: Txn, what: str) -> str:
    """Negative cases: a signed CertRep FAILURE with failInfo, and no certificate."""
    if t.exchange.error:
        raise Fail(f"{what}: transport error {t.exchange.error}", t.evidence())
    if t.exchange.status != 200:
        raise Fail(f"{what}: HTTP {t.exchange.status} instead of a CertRep FAILURE (no certificate was issued, "
                   "but the requester cannot tell why)", t.evidence())
    if t.rep is None:
        raise Fail(f"{what}: unreadable reply: {t.parse_error}", t.evidence())
    if t.rep.status == "0":
        raise Fail(f"{what}: the server answered SUCCESS and issued a certificate", t.evidence())
    if t.rep.status != "2":
        raise Fail(f"{what}: {t.rep.summary()}, expected FAILURE", t.evidence())
    if t.rep.fail_info is None:
        raise Fail(f"{what}: FAILURE without failInfo (RFC 8894 §3.2.1.4 MUST)", t.evidence())
    if t.rep.econtent:
        raise Fail(f"{what}: FAILURE carries a pkcsPKIEnvelope", t.evidence())
    if not t.rep.signature_ok:
        raise Fail(f"{what}: FAILURE reply signature: {t.rep.signature_problem}", t.evidence())
    return f"FAILURE {sm.FAIL_NAMES.get(t.rep.fail_info, t.rep.fail_info)}"


# ================================================================== GetCACaps
@suite.check("scep.getcacaps.answers", "GetCACaps answers with a capability list", R, "3.5.1", Level.MUST,
             "GET ?operation=GetCACaps returns the CA's capabilities")
async def getcacaps_answers(ctx: ScepContext) -> str:
    _, caps = await ctx.step("caps", ctx._caps)
    return "caps: " + " ".join(caps)


@suite.check("scep.getcacaps.content-type", "GetCACaps is text/plain", R, "3.5.2", Level.SHOULD,
             "the capability list is plain text (Content-Type: text/plain)")
async def getcacaps_ct(ctx: ScepContext) -> str:
    ex, _ = await ctx.need("caps", ctx._caps)
    if ex.media_type() != "text/plain":
        raise Fail(f"Content-Type is {ex.content_type!r}", ex.lines())
    return str(ex.content_type)


@suite.check("scep.getcacaps.format", "GetCACaps keywords are exact, one per line", R, "3.5.2", Level.MUST,
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


@suite.check("scep.getcacaps.scepstandard", "SCEPStandard implies AES, POSTPKIOperation and SHA-256", R, "3.5.2",
             Level.MUST, "a CA that lists SCEPStandard supports AES, POSTPKIOperation and SHA-256")
async def getcacaps_standard(ctx: ScepContext) -> str:
    caps = await ctx.caps()
    if "SCEPStandard" not in caps:
        raise Skip("SCEPStandard not advertised")
    t = await ctx.enroll("scepstandard", cipher="AES-128", digest="SHA-256", method="POST")
    require_success(t, "PKCSReq with AES-128 + SHA-256 over POST")
    return "PKCSReq with AES-128, SHA-256, POST: SUCCESS"


@suite.check("scep.getcacaps.sha2", "Advertises SHA-256 and AES", R, "3.5.2", Level.SHOULD,
             "CAs SHOULD support SHA-256 and AES (DES and SHA-1 are deprecated)")
async def getcacaps_sha2(ctx: ScepContext) -> str:
    caps = await ctx.caps()
    missing = [c for c in ("AES", "SHA-256") if c not in caps and "SCEPStandard" not in caps]
    if missing:
        raise Fail(f"not advertised: {missing}", [" ".join(sorted(caps))])
    return "AES and SHA-256 advertised"


# ================================================================== GetCACert
@suite.check("scep.getcacert.shape", "GetCACert: one DER certificate or a certs-only chain", R, "4.2.1",
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


@suite.check("scep.getcacert.ra-usage", "RA certificates carry the key usages clients select by", R, "2.1.2",
             Level.SHOULD, "with a separate RA, the certificate to encrypt to has keyEncipherment and the "
             "signing certificate digitalSignature")
async def getcacert_ra(ctx: ScepContext) -> str:
    certs = await ctx.ca_certs()
    if len(certs) == 1:
        raise Skip("a single CA certificate: the CA is its own RA")
    leaves = [c for c in certs if not _is_ca(c)]
    if not leaves:
        return "no separate RA certificate; the CA certificate is used"
    if not any(_ku(c, "key_encipherment") for c in leaves):
        raise Fail("no RA certificate has keyEncipherment", [c.subject.rfc4514_string() for c in leaves])
    if not any(_ku(c, "digital_signature") for c in leaves):
        raise Fail("no RA certificate has digitalSignature", [c.subject.rfc4514_string() for c in leaves])
    return "RA: " + ", ".join(c.subject.rfc4514_string() for c in leaves)


@suite.check("scep.getnextcacert", "GetNextCACert when advertised", R, "4.7.1", Level.MUST,
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


# ================================================================== the reference enrollment
@suite.check("scep.pkcsreq.success", "PKCSReq with the challenge is issued", R, "3.3.1", Level.MUST,
             "a valid PKCSReq (PKCS#10 with challengePassword) gets CertRep SUCCESS")
async def pkcsreq_success(ctx: ScepContext) -> str:
    if ctx.challenge is None:
        raise Skip("no --challenge given: the suite makes no enrollment")
    t = await ctx.step("enroll", ctx._main)
    return (f"{t.exchange.method} {t.built.cipher}/{t.built.digest}: SUCCESS, serial "
            f"{t.issued.serial_number:x}" if t.issued else "SUCCESS")


@suite.check("scep.certrep.content-type", "PKIOperation reply is application/x-pki-message", R, "4.3", Level.MUST,
             "the CertRep is sent with Content-Type application/x-pki-message")
async def certrep_ct(ctx: ScepContext) -> str:
    t = await ctx.main()
    if t.exchange.content_type != PKI_MESSAGE_TYPE:
        if t.exchange.media_type() == PKI_MESSAGE_TYPE:
            return f"{t.exchange.content_type!r} (media type ok, with parameters)"
        raise Fail(f"Content-Type is {t.exchange.content_type!r}", t.exchange.lines(body=False))
    return PKI_MESSAGE_TYPE


@suite.check("scep.certrep.signature", "CertRep is signed and its messageDigest matches", R, "3.2", Level.MUST,
             "the CertRep SignedData signature verifies and messageDigest covers the content as sent")
async def certrep_sig(ctx: ScepContext) -> str:
    t = await ctx.main()
    rep = t.rep
    assert rep is not None
    if not rep.signature_ok:
        raise Fail(rep.signature_problem, t.evidence())
    if rep.message_digest_ok is False:
        raise Fail("messageDigest does not match the encapsulated content", t.evidence())
    if rep.message_digest_ok is None:
        raise Fail("no messageDigest signed attribute", t.evidence() + rep.attribute_lines())
    return f"signed by {rep.signer_cert.subject.rfc4514_string() if rep.signer_cert else '?'} ({rep.signer_digest})"


@suite.check("scep.certrep.attribute-types", "SCEP attributes have the RFC's ASN.1 types", R, "3.2.1", Level.MUST,
             "messageType, pkiStatus, transactionID are PrintableString; nonces are 16-byte OCTET STRINGs")
async def certrep_attr_types(ctx: ScepContext) -> str:
    t = await ctx.main()
    rep = t.rep
    assert rep is not None
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


@suite.check("scep.certrep.message-type", "CertRep messageType is 3", R, "3.3.2", Level.MUST,
             "the reply's messageType is CertRep (3)")
async def certrep_type(ctx: ScepContext) -> str:
    rep = (await ctx.main()).rep
    assert rep is not None
    if rep.attr_text(sm.OID_MESSAGE_TYPE) != "3":
        raise Fail(f"messageType {rep.attr_text(sm.OID_MESSAGE_TYPE)!r}", rep.attribute_lines())
    return "3"


@suite.check("scep.certrep.transaction-id", "transactionID is echoed", R, "3.2.1.1", Level.MUST,
             "the CertRep carries the request's transactionID unchanged")
async def certrep_txid(ctx: ScepContext) -> str:
    t = await ctx.main()
    got = t.rep.attr_text(sm.OID_TRANSACTION_ID) if t.rep else None
    if got != t.built.transaction_id:
        raise Fail(f"sent {t.built.transaction_id!r}, got {got!r}", t.rep.attribute_lines() if t.rep else [])
    return "echoed"


@suite.check("scep.certrep.recipient-nonce", "recipientNonce echoes the request's senderNonce", R, "3.2.1.5",
             Level.MUST, "recipientNonce = the senderNonce of the request")
async def certrep_rnonce(ctx: ScepContext) -> str:
    t = await ctx.main()
    a = t.rep.attrs.get(sm.OID_RECIPIENT_NONCE) if t.rep else None
    if a is None or a.content != t.built.sender_nonce:
        raise Fail(f"sent senderNonce {t.built.sender_nonce.hex()}, got recipientNonce "
                   f"{a.content.hex() if a else None}", t.rep.attribute_lines() if t.rep else [])
    return "echoed"


@suite.check("scep.certrep.sender-nonce", "CertRep carries a fresh senderNonce of its own", R, "3.2.1.5", Level.MUST,
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


@suite.check("scep.certrep.digest-mirrors", "CertRep is signed with the request's digest", R, "3.5.2", Level.INTEROP,
             "sign with the digest the client chose (clients without SHA-1 fail otherwise: "
             "sscep on RHEL 9, Cisco after EJBCA's change)")
async def certrep_digest(ctx: ScepContext) -> str:
    t = await ctx.main()
    assert t.rep is not None
    if t.rep.signer_digest != t.built.digest:
        raise Fail(f"request used {t.built.digest}, reply signed with {t.rep.signer_digest}",
                   [f"SignerInfo digestAlgorithm: {t.rep.signer_digest}"])
    return t.built.digest


@suite.check("scep.certrep.signature-algorithm", "SignerInfo signatureAlgorithm is rsaEncryption", R, "3.2",
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


@suite.check("scep.certrep.encrypted-to-signer", "SUCCESS is encrypted to the request's signer", R, "3.3.2.1",
             Level.MUST, "the pkcsPKIEnvelope's recipient is the certificate that signed the request")
async def certrep_recipient(ctx: ScepContext) -> str:
    t = await ctx.main()
    if t.decrypted is None:
        raise Fail("SUCCESS without a pkcsPKIEnvelope", t.evidence())
    if not t.decrypted.recipient_matches:
        raise Fail("no RecipientInfo names the request signer's issuerAndSerialNumber (it decrypted anyway)",
                   t.evidence())
    return f"to {t.signer.cert.subject.rfc4514_string()} ({t.decrypted.key_transport})"


@suite.check("scep.certrep.cipher-mirrors", "SUCCESS envelope uses the request's cipher", R, "3.5.2", Level.INTEROP,
             "encrypt with the client's algorithm, never a fixed DES (OpenSSL 3 clients cannot read DES)")
async def certrep_cipher(ctx: ScepContext) -> str:
    t = await ctx.main()
    if t.decrypted is None:
        raise Skip("no envelope")
    if t.decrypted.cipher != t.built.cipher:
        raise Fail(f"request used {t.built.cipher}, reply envelope uses {t.decrypted.cipher}",
                   [f"contentEncryptionAlgorithm: {t.decrypted.cipher}"])
    return str(t.decrypted.cipher)


@suite.check("scep.certrep.der-envelope", "Envelope encryptedContent is primitive (DER)", R, "3.2.2", Level.INTEROP,
             "asn1crypto-based clients (PyScep) reject a constructed BER encryptedContent")
async def certrep_der(ctx: ScepContext) -> str:
    t = await ctx.main()
    if t.decrypted is None:
        raise Skip("no envelope")
    if t.decrypted.constructed_content:
        raise Fail("encryptedContent is a constructed OCTET STRING",
                   asn1parse(t.rep.econtent if t.rep and t.rep.econtent else b"", 40)[-12:])
    return "primitive"


@suite.check("scep.certrep.certs-only", "SUCCESS content is a degenerate certificates-only SignedData", R, "3.3.2.1",
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


@suite.check("scep.certrep.issued-certificate", "The issued certificate is for the requested key", R, "3.3.2.1",
             Level.MUST, "the SUCCESS reply contains the certificate issued for the CSR's public key")
async def certrep_issued(ctx: ScepContext) -> str:
    t = await ctx.main()
    if t.issued is None:
        raise Fail("no certificate in the reply has the CSR's public key",
                   [c.subject.rfc4514_string() for c in (t.certs.certificates if t.certs else [])])
    cns = t.issued.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return f"serial {t.issued.serial_number:x}, subject {t.issued.subject.rfc4514_string()}" + (
        "" if cns else " (no CN)")


@suite.check("scep.certrep.issued-first", "The issued certificate comes first", R, "3.3.2.1", Level.INTEROP,
             "clients read certificates[0] (Go clients, PyScep): put the issued certificate first")
async def certrep_first(ctx: ScepContext) -> str:
    t = await ctx.main()
    if t.issued is None or t.certs is None:
        raise Skip("no issued certificate")
    if t.certs.certificates[0] != t.issued:
        raise Fail("the first certificate is " + t.certs.certificates[0].subject.rfc4514_string(),
                   [c.subject.rfc4514_string() for c in t.certs.certificates])
    return "first"


@suite.check("scep.certrep.issued-chains", "The issued certificate chains to GetCACert", R, "4.2", Level.MUST,
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


# ================================================================== transports, ciphers, digests
@suite.check("scep.pkioperation.post", "POSTPKIOperation advertised: POST works", R, "4.1", Level.MUST,
             "a CA that lists POSTPKIOperation accepts PKIOperation by HTTP POST")
async def pkiop_post(ctx: ScepContext) -> str:
    if "POSTPKIOperation" not in await ctx.caps():
        raise Skip("POSTPKIOperation not advertised")
    t = await ctx.main()
    if t.exchange.method != "POST":
        raise Skip("the reference enrollment used GET")
    return "SUCCESS over POST"


@suite.check("scep.pkioperation.get", "PKIOperation over GET", R, "4.1", Level.SHOULD,
             "GET ?operation=PKIOperation&message=<base64> works (Cisco IOS and macOS use GET)")
async def pkiop_get(ctx: ScepContext) -> str:
    if ctx.challenge is None:
        raise Skip("no --challenge given")
    t = await ctx.enroll("get", method="GET")
    require_success(t, "PKCSReq over GET")
    if t.issued is None:
        raise Fail("SUCCESS without the issued certificate", t.evidence())
    return "SUCCESS over GET"


def _alg_check(kind: str, name: str, cap: str | None) -> None:
    @suite.check(f"scep.{kind}.{name.lower()}", f"Advertised {kind} {name} works", R, "3.5.2", Level.MUST,
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
        kw = {"cipher": name} if kind == "cipher" else {"digest": name}
        t = await ctx.enroll(f"{kind}-{name.lower()}", **kw)
        require_success(t, f"PKCSReq with {kind} {name}")
        if t.issued is None:
            raise Fail("SUCCESS without the issued certificate", t.evidence())
        return f"SUCCESS (reply: {t.decrypted.cipher if t.decrypted else '?'} / {t.rep.signer_digest if t.rep else '?'})"


for _name, _cap in (("AES-128", "AES"), ("DES3", "DES3")):
    _alg_check("cipher", _name, _cap)
for _name in ("SHA-1", "SHA-256", "SHA-384", "SHA-512"):
    _alg_check("digest", _name, _name)


# ================================================================== renewal, polling, access
@suite.check("scep.renewalreq", "Renewal advertised: RenewalReq signed by the current certificate", R, "3.3.1",
             Level.MUST, "a CA that lists Renewal issues a RenewalReq signed with a certificate it issued")
async def renewal(ctx: ScepContext) -> str:
    if "Renewal" not in await ctx.caps():
        raise Skip("Renewal not advertised")
    t0 = await ctx.main()
    assert t0.issued is not None and t0.csr_key is not None
    old = sm.Identity(t0.csr_key, t0.issued)
    key = sm.new_rsa_key()
    cn = t0.issued.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    csr = sm.make_csr(key, str(cn), None)
    t = await ctx.transact(sm.RENEWAL_REQ, csr, old, csr_key=key)
    rep = require_certrep(t, "RenewalReq")
    if rep.status == "0":
        if t.issued is None:
            raise Fail("SUCCESS without a certificate for the new key", t.evidence())
        return f"renewed without a challenge: serial {t.issued.serial_number:x}"
    if rep.status != "2" or rep.fail_info is None:
        raise Fail(f"RenewalReq: {rep.summary()}", t.evidence())
    # Refused. Policy (a renewal window) may refuse a just-issued certificate; tell that apart
    # from a server that authenticates renewals by the shared secret instead of the certificate.
    key2 = sm.new_rsa_key()
    t2 = await ctx.transact(sm.RENEWAL_REQ, sm.make_csr(key2, str(cn), ctx.challenge), old, csr_key=key2)
    if t2.rep is not None and t2.rep.status == "0":
        raise Fail("RenewalReq signed by the issued certificate was refused without a challengePassword "
                   f"({rep.summary()}) and accepted with one: renewal is authenticated by the shared secret, "
                   "not by the certificate", t.evidence() + ["-- the same with the challenge:"] + t2.evidence())
    raise Skip(f"renewal of a just-issued certificate refused by policy ({rep.summary()}); "
               "judge renewal with a certificate inside its renewal window")


@suite.check("scep.certpoll", "CertPoll gets a CertRep", R, "3.3.3", Level.MUST,
             "CertPoll (GetCertInitial) for a transaction gets a signed CertRep (the certificate, PENDING or "
             "FAILURE), never an HTTP error")
async def certpoll(ctx: ScepContext) -> str:
    t0 = await ctx.main()
    assert t0.issued is not None
    ca = await ctx.recipient()
    data = sm.issuer_and_subject_der(t0.issued.issuer, t0.signer.cert.subject)
    t = await ctx.transact(sm.CERT_POLL, data, t0.signer, csr_key=t0.csr_key,
                           transaction_id=t0.built.transaction_id, recipient=ca)
    rep = require_certrep(t, "CertPoll")
    if rep.status == "0":
        if t.issued is None:
            raise Fail("CertPoll SUCCESS without the certificate", t.evidence())
        if t.issued.serial_number != t0.issued.serial_number:
            raise Fail("CertPoll returned a different certificate than the transaction issued", t.evidence())
        return "SUCCESS with the issued certificate"
    if rep.status == "2" and rep.fail_info is None:
        raise Fail("FAILURE without failInfo", t.evidence())
    if rep.attr_text(sm.OID_TRANSACTION_ID) != t0.built.transaction_id:
        raise Fail("transactionID not echoed", rep.attribute_lines())
    return rep.summary()


async def _access(ctx: ScepContext, mtype: int, what: str) -> Txn:
    t0 = await ctx.main()
    assert t0.issued is not None
    ca = next((c for c in await ctx.ca_certs() if sm.issued_by(t0.issued, c)), None)
    issuer = ca.subject if ca else t0.issued.issuer
    serial = t0.issued.serial_number
    data = sm.issuer_and_serial_der(issuer, serial)
    key = sm.new_rsa_key()
    me = sm.Identity(t0.csr_key, t0.issued)
    t = await ctx.transact(mtype, data, me, csr_key=t0.csr_key, transaction_id=sm.transaction_id_for(key))
    rep = require_certrep(t, what)
    if rep.status == "2":
        if rep.fail_info is None:
            raise Fail("FAILURE without failInfo", t.evidence())
        raise Skip(f"not offered: the server answered {rep.summary()}")
    if rep.status != "0":
        raise Fail(f"{what}: {rep.summary()}", t.evidence())
    if t.decrypt_error or t.certs is None:
        raise Fail(f"{what}: {t.decrypt_error or t.certs_error}", t.evidence())
    return t


@suite.check("scep.getcert", "GetCert returns the certificate or FAILURE", R, "3.3.4", Level.MUST,
             "GetCert (IssuerAndSerialNumber) gets a CertRep with that certificate, or FAILURE with failInfo")
async def getcert(ctx: ScepContext) -> str:
    t0 = await ctx.main()
    t = await _access(ctx, sm.GET_CERT, "GetCert")
    assert t.certs is not None and t0.issued is not None
    if not any(c.serial_number == t0.issued.serial_number for c in t.certs.certificates):
        raise Fail("the reply does not contain the requested certificate", t.evidence())
    return "certificate returned"


@suite.check("scep.getcrl", "GetCRL returns a CRL or FAILURE", R, "3.3.4", Level.MUST,
             "GetCRL gets a CertRep whose certs-only SignedData carries the CRL in crls, or FAILURE")
async def getcrl(ctx: ScepContext) -> str:
    t = await _access(ctx, sm.GET_CRL, "GetCRL")
    assert t.certs is not None
    if not t.certs.crls:
        raise Fail("SUCCESS without a CRL in crls", t.evidence() + asn1parse(t.decrypted.plaintext if t.decrypted
                                                                            else b"", 16))
    crl = t.certs.crls[0]
    cas = await ctx.ca_certs()
    if not any(c.subject == crl.issuer for c in cas):
        raise Fail("the CRL issuer is not a GetCACert certificate", ["CRL issuer " + crl.issuer.rfc4514_string()])
    return f"CRL from {crl.issuer.rfc4514_string()}, {len(list(crl))} entries"


# ================================================================== negative cases
@suite.check("scep.reject.bad-signature", "A request with a bad signature is refused", R, "3.3.2.2", Level.MUST,
             "signature verification failure: CertRep FAILURE (badMessageCheck) and no certificate")
async def reject_badsig(ctx: ScepContext) -> str:
    key = sm.new_rsa_key()
    me = sm.self_signed(key, f"conformance-{ctx.run_id}-badsig")
    csr = sm.make_csr(key, f"conformance-{ctx.run_id}-badsig", ctx.challenge or "x")
    t = await ctx.transact(sm.PKCS_REQ, csr, me, csr_key=key, tamper_signature=True)
    return require_failure_no_cert(t, "bad signature")


@suite.check("scep.reject.bad-message-digest", "Content changed after signing is refused", R, "3.3.2.2", Level.MUST,
             "messageDigest mismatch: CertRep FAILURE (badMessageCheck) and no certificate")
async def reject_baddigest(ctx: ScepContext) -> str:
    key = sm.new_rsa_key()
    me = sm.self_signed(key, f"conformance-{ctx.run_id}-baddigest")
    csr = sm.make_csr(key, f"conformance-{ctx.run_id}-baddigest", ctx.challenge or "x")
    t = await ctx.transact(sm.PKCS_REQ, csr, me, csr_key=key, tamper_content=True)
    return require_failure_no_cert(t, "tampered content")


@suite.check("scep.reject.wrong-recipient", "A request encrypted to someone else is refused", R, "3.3.2.2",
             Level.MUST, "an envelope the CA cannot decrypt: CertRep FAILURE and no certificate")
async def reject_recipient(ctx: ScepContext) -> str:
    key = sm.new_rsa_key()
    me = sm.self_signed(key, f"conformance-{ctx.run_id}-wrongrcpt")
    other = sm.self_signed(sm.new_rsa_key(), "not-the-ca")
    csr = sm.make_csr(key, f"conformance-{ctx.run_id}-wrongrcpt", ctx.challenge or "x")
    t = await ctx.transact(sm.PKCS_REQ, csr, me, csr_key=key, recipient=other.cert)
    return require_failure_no_cert(t, "envelope to another recipient")


@suite.check("scep.reject.unknown-message-type", "Message type 18 (UpdateReq) is refused", R, "3.3", Level.MUST,
             "only registered message types are processed: type 18 with a valid CSR and challenge gets FAILURE "
             "(badRequest) and no certificate (CVE-2026-30836)")
async def reject_type18(ctx: ScepContext) -> str:
    if ctx.challenge is None:
        raise Skip("no --challenge given: without it the refusal proves nothing")
    key = sm.new_rsa_key()
    me = sm.self_signed(key, f"conformance-{ctx.run_id}-type18")
    csr = sm.make_csr(key, f"conformance-{ctx.run_id}-type18", ctx.challenge)
    t = await ctx.transact(18, csr, me, csr_key=key)
    return require_failure_no_cert(t, "messageType 18")


@suite.check("scep.reject.unregistered-message-type", "An unregistered message type is refused", R, "3.3",
             Level.MUST, "messageType 99 gets FAILURE (badRequest) and no certificate")
async def reject_type99(ctx: ScepContext) -> str:
    key = sm.new_rsa_key()
    me = sm.self_signed(key, f"conformance-{ctx.run_id}-type99")
    csr = sm.make_csr(key, f"conformance-{ctx.run_id}-type99", ctx.challenge or "x")
    t = await ctx.transact(99, csr, me, csr_key=key)
    return require_failure_no_cert(t, "messageType 99")


@suite.check("scep.reject.wrong-challenge", "A wrong challengePassword is refused", R, "3.3.1", Level.MUST,
             "PKCSReq with a wrong challenge gets FAILURE and no certificate")
async def reject_challenge(ctx: ScepContext) -> str:
    if ctx.challenge is None:
        raise Skip("no --challenge given: the server's challenge policy is unknown")
    t = await ctx.enroll("wrongchallenge", challenge="wrong-" + os.urandom(6).hex())
    return require_failure_no_cert(t, "wrong challenge")


@suite.check("scep.reject.replay", "A replayed request does not issue a second certificate", R, "7", Level.SHOULD,
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


@suite.check("scep.idempotent.transaction", "Same transactionID and key: the same certificate", R, "3.2.1.1",
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


def plan(challenge: str | None) -> list[str]:
    """What the run will request, said before it starts (the suite is safe by default)."""
    if challenge is None:
        return ["no --challenge: no enrollment is expected to succeed; negative cases send requests that must fail"]
    return [
        "PKCSReq (reference, preferred transport/cipher/digest) -> 1 certificate",
        "PKCSReq with AES-128/SHA-256/POST if SCEPStandard -> 1",
        "PKCSReq over GET -> 1",
        "PKCSReq per advertised cipher (AES-128, DES3) and digest (SHA-1, SHA-256, SHA-384, SHA-512) -> up to 6",
        "RenewalReq if Renewal is advertised -> 1",
        "CertPoll, GetCert, GetCRL about the reference certificate -> 0 new",
        "replay and retransmission of the reference request -> must not issue",
        "negative cases (bad signature, tampered content, wrong recipient, types 18 and 99, wrong challenge) "
        "-> must not issue",
    ]

