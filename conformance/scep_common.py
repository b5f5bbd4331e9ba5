"""What every SCEP check shares (RFC 8894): the context that talks to the server (GetCACaps,
GetCACert, one pkiMessage exchange read on its bytes, the memoised reference enrollment), the
judgments many checks make (a readable CertRep, SUCCESS, FAILURE without a certificate), and
the plan said before a run. Every message is built by conformance.scepmsg."""

from __future__ import annotations

import base64
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from conformance import scepmsg as sm
from conformance.asn1dump import asn1parse
from conformance.model import Fail, Skip
from conformance.runner import BaseContext
from conformance.transport import Exchange, Http

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
            if not is_ca(c) and has_key_usage(c, "key_encipherment"):
                return c
        for c in certs:
            if not is_ca(c):
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

    async def enroll(self, label: str, *, message_type: int = sm.PKCS_REQ, challenge: str | None = "default",
                     **kw: Any) -> Txn:
        """A PKCSReq (or ``message_type``) from a fresh RSA key and self-signed certificate
        (RFC 8894 §2.3); ``kw`` goes to :meth:`transact` (cipher, digest, method, tampering...)."""
        key = sm.new_rsa_key()
        cn = f"conformance-{self.run_id}-{label}"
        me = sm.self_signed(key, cn)
        chal = self.challenge if challenge == "default" else challenge
        csr = sm.make_csr(key, cn, chal)
        return await self.transact(message_type, csr, me, csr_key=key, **kw)

    async def main(self) -> Txn:
        """The reference enrollment most checks judge: PKCSReq with the preferred transport,
        cipher and digest (POST, AES, SHA-256 on a modern server)."""
        t: Txn = await self.need("enroll", self._main)
        return t

    async def main_reply(self) -> tuple[Txn, sm.CertRep]:
        """The reference enrollment and its CertRep (RFC 8894 §3.3.2), for checks that judge the reply."""
        t = await self.main()
        assert t.rep is not None  # require_success in _main
        return t, t.rep

    async def main_envelope(self) -> tuple[Txn, sm.Decrypted]:
        """The reference enrollment and its decrypted pkcsPKIEnvelope (RFC 8894 §3.3.2.1); a skip
        when the SUCCESS carried none (scep.certrep.encrypted-to-signer judges that)."""
        t = await self.main()
        if t.decrypted is None:
            raise Skip("no envelope")
        return t, t.decrypted

    async def _main(self) -> Txn:
        t = await self.enroll("main")
        require_success(t, "the reference PKCSReq")
        return t


def is_ca(c: x509.Certificate) -> bool:
    """basicConstraints cA (RFC 5280 §4.2.1.9)."""
    try:
        return bool(c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def has_key_usage(c: x509.Certificate, name: str) -> bool:
    """The keyUsage bit ``name`` is set, or there is no keyUsage (RFC 5280 §4.2.1.3)."""
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


def require_issued(t: Txn, what: str) -> x509.Certificate:
    """SUCCESS with the certificate for the request's key (RFC 8894 §3.3.2.1)."""
    require_success(t, what)
    if t.issued is None:
        raise Fail("SUCCESS without the issued certificate", t.evidence())
    return t.issued


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
