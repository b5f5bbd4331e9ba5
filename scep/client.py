"""An async SCEP client (RFC 8894 §4): GetCACaps, GetCACert, enroll, renew, poll, GetCert, GetCRL.

It picks the strongest algorithms the server advertises (AES, then DES3 only if allowed;
SHA-512 > SHA-384 > SHA-256 > SHA-1) and POSTs when ``POSTPKIOperation`` is listed. The HTTP
transport is a small HTTP/1.1 client on asyncio streams (aiohttp stays in ``*/http.py``); it
returns raw bytes so that the conformance suite can assert on them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from scep import cms
from scep.asn1 import FailInfo, MessageType, PkiStatus
from scep.errors import ScepDecodeError
from scep.message import CertRep, IssuerAndSerial, IssuerAndSubject, PkiMessage, new_nonce
from scep.quirks import encode_get_message

MAX_RESPONSE = 4 << 20


class ScepClientError(Exception):
    """Transport or protocol failure seen by the client."""


@dataclass(frozen=True)
class HttpResponse:
    """Status, headers (lower-case names) and body exactly as received (de-chunked)."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        """The media type without parameters."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_response(reader: asyncio.StreamReader, max_body: int = MAX_RESPONSE) -> HttpResponse:
    """Read one HTTP/1.1 response (RFC 9112 §6): status line, headers, then a chunked,
    Content-Length or read-to-close body of at most ``max_body`` bytes."""
    status_line = await reader.readline()
    if not status_line:
        raise ScepClientError("connection closed before the status line")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise ScepClientError(f"bad status line {status_line[:80]!r}") from None
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        data = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields
                break
            data += await reader.readexactly(size)
            await reader.readline()
            if len(data) > max_body:
                raise ScepClientError("response too large")
        payload = bytes(data)
    elif "content-length" in headers:
        n = int(headers["content-length"])
        if n > max_body:
            raise ScepClientError("response too large")
        payload = await reader.readexactly(n)
    else:
        payload = await reader.read(max_body)
    return HttpResponse(status, headers, payload)


async def http_request(
    url: str, method: str = "GET", body: bytes | None = None, *, content_type: str | None = None,
    ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0,
) -> HttpResponse:
    """One HTTP/1.1 request on a fresh connection (``Connection: close``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ScepClientError(f"unsupported URL {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ctx = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", "Accept: */*",
             "User-Agent: enroll-scep-client"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
        if content_type:
            lines.append(f"Content-Type: {content_type}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def run() -> HttpResponse:
        reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=ctx)
        try:
            writer.write(head + (body or b""))
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass

    try:
        return await asyncio.wait_for(run(), timeout)
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
        raise ScepClientError(f"{method} {url}: {exc.__class__.__name__}: {exc}") from None


@dataclass(frozen=True)
class ScepResult:
    """What a PKIOperation came back with."""

    status: PkiStatus
    transaction_id: str
    certificates: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    fail_info: FailInfo | None = None
    fail_info_text: str | None = None
    reply: CertRep | None = field(default=None, repr=False)


def self_signed_signer(key: rsa.RSAPrivateKey, subject: x509.Name) -> x509.Certificate:
    """The transient self-signed certificate that signs an initial request (RFC 8894 §2.3)."""
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def transaction_id_for(public_key: rsa.RSAPublicKey) -> str:
    """RFC 8894 §3.2.1.1: a hash of the public key, as upper-case hex."""
    h = hashes.Hash(hashes.SHA256())
    h.update(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return h.finalize().hex().upper()


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


class ScepClient:
    """SCEP against one URL such as ``http://host/scep`` or ``http://host/scep/router``."""

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0,
                 allow_legacy: bool = False) -> None:
        self.url = url.rstrip("?")
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.allow_legacy = allow_legacy
        self._caps: set[str] | None = None
        self._ca_certs: list[x509.Certificate] | None = None

    def _op_url(self, operation: str, message: str | None = None) -> str:
        sep = "&" if "?" in self.url else "?"
        url = f"{self.url}{sep}operation={operation}"
        if message is not None:
            url += f"&message={message}"
        return url

    async def _get(self, operation: str, message: str | None = None) -> HttpResponse:
        resp = await http_request(self._op_url(operation, message), ssl_context=self.ssl_context,
                                  timeout=self.timeout)
        if resp.status != 200:
            raise ScepClientError(f"{operation}: HTTP {resp.status}: {resp.body[:200]!r}")
        return resp

    # --- RFC 8894 §4.5, §4.2, §4.7 --------------------------------------------------------------
    async def get_ca_caps(self) -> set[str]:
        """The server's capability keywords (case as sent)."""
        resp = await self._get("GetCACaps")
        self._caps = {line.strip() for line in resp.body.decode("utf-8", "replace").splitlines() if line.strip()}
        return self._caps

    async def get_ca_cert(self, message: str | None = None) -> list[x509.Certificate]:
        """The CA (and RA) certificates: single DER or a certs-only bag, order kept."""
        resp = await self._get("GetCACert", message)
        if resp.content_type == "application/x-x509-ca-cert":
            certs = [x509.load_der_x509_certificate(resp.body)]
        elif resp.content_type == "application/x-x509-ca-ra-cert":
            certs, _ = cms.parse_certs_only(resp.body)
        else:
            raise ScepClientError(f"GetCACert: unexpected content type {resp.content_type!r}")
        self._ca_certs = certs
        return certs

    async def get_next_ca_cert(self) -> list[x509.Certificate]:
        """The rollover CA certificate(s) (GetNextCACert)."""
        resp = await self._get("GetNextCACert")
        signed = cms.parse_signed(resp.body)
        cms.verify_signed(signed)
        certs, _ = cms.parse_certs_only(signed.content or b"")
        return certs

    # --- algorithm choice ------------------------------------------------------------------------
    async def _capabilities(self) -> set[str]:
        return self._caps if self._caps is not None else await self.get_ca_caps()

    async def _certs(self) -> list[x509.Certificate]:
        return self._ca_certs if self._ca_certs is not None else await self.get_ca_cert()

    async def algorithms(self) -> tuple[str, str]:
        """(cipher, digest): the strongest the server advertises (AES = AES-128-CBC, RFC 8894 §3.5.2)."""
        caps = {c.lower() for c in await self._capabilities()}
        standard = "scepstandard" in caps
        if "aes" in caps or standard:
            cipher = "aes128"
        elif "des3" in caps:
            cipher = "3des"
        elif self.allow_legacy:
            cipher = "des"
        else:
            raise ScepClientError("server offers neither AES nor DES3 (use allow_legacy for DES)")
        for name, digest in (("sha-512", "sha512"), ("sha-384", "sha384"), ("sha-256", "sha256")):
            if name in caps or (standard and digest == "sha256"):
                return cipher, digest
        if "sha-1" in caps or self.allow_legacy:
            return cipher, "sha1"
        raise ScepClientError("server offers no SHA-2 digest (use allow_legacy for SHA-1/MD5)")

    async def recipient(self) -> x509.Certificate:
        """The certificate to encrypt to: an RA with keyEncipherment, else the CA (RFC 8894 §2.1.2)."""
        certs = await self._certs()
        if len(certs) == 1:
            return certs[0]
        for c in certs:
            ku = _key_usage(c)
            if not _is_ca(c) and (ku is None or ku.key_encipherment):
                return c
        return certs[0]

    async def _signers(self) -> list[x509.Certificate]:
        return list(await self._certs())

    # --- PKIOperation -------------------------------------------------------------------------
    async def pki_operation(self, der: bytes) -> bytes:
        """Send a pkiMessage (POST when advertised, else GET) and return the raw reply."""
        caps = {c.lower() for c in await self._capabilities()}
        if "postpkioperation" in caps or "scepstandard" in caps:
            resp = await http_request(self._op_url("PKIOperation"), "POST", der,
                                      content_type="application/x-pki-message", ssl_context=self.ssl_context,
                                      timeout=self.timeout)
        else:
            resp = await http_request(self._op_url("PKIOperation", encode_get_message(der)),
                                      ssl_context=self.ssl_context, timeout=self.timeout)
        if resp.status != 200:
            raise ScepClientError(f"PKIOperation: HTTP {resp.status}: {resp.body[:200]!r}")
        return resp.body

    async def _transact(
        self, message_type: MessageType, transaction_id: str, data: bytes, signer_cert: x509.Certificate,
        signer_key: rsa.RSAPrivateKey,
    ) -> ScepResult:
        cipher, digest = await self.algorithms()
        recipient = await self.recipient()
        nonce = new_nonce()
        msg = PkiMessage(message_type=int(message_type), transaction_id=transaction_id, sender_nonce=nonce)
        der = msg.build(data, signer_cert=signer_cert, sign=cms.rsa_signer(signer_key), recipient=recipient,
                        cipher=cipher, digest=digest)
        reply = CertRep.parse(await self.pki_operation(der))
        reply.verify(await self._signers())
        if reply.transaction_id != transaction_id:
            raise ScepClientError("CertRep transactionID does not match")
        if reply.recipient_nonce != nonce:
            raise ScepClientError("CertRep recipientNonce does not match our senderNonce")
        certs: list[x509.Certificate] = []
        crls: list[x509.CertificateRevocationList] = []
        if reply.status is PkiStatus.SUCCESS:
            certs, crls = reply.open(signer_key.decrypt, signer_cert)
        return ScepResult(reply.status, transaction_id, tuple(certs), tuple(crls), reply.fail_info,
                          reply.fail_info_text, reply)

    async def enroll(
        self, csr: x509.CertificateSigningRequest, key: rsa.RSAPrivateKey, *,
        transaction_id: str | None = None, signer: x509.Certificate | None = None,
    ) -> ScepResult:
        """PKCSReq with a self-signed signer for ``key`` (the CSR carries any challengePassword)."""
        signer = signer or self_signed_signer(key, csr.subject)
        pub = key.public_key()
        txid = transaction_id or transaction_id_for(pub)
        return await self._transact(MessageType.PKCS_REQ, txid, csr.public_bytes(serialization.Encoding.DER),
                                    signer, key)

    async def renew(
        self, csr: x509.CertificateSigningRequest, old_cert: x509.Certificate, old_key: rsa.RSAPrivateKey, *,
        transaction_id: str | None = None, message_type: MessageType = MessageType.RENEWAL_REQ,
    ) -> ScepResult:
        """RenewalReq (or PKCSReq, as most field clients do) signed by the current certificate."""
        pub = csr.public_key()
        assert isinstance(pub, rsa.RSAPublicKey)
        txid = transaction_id or transaction_id_for(pub)
        return await self._transact(message_type, txid, csr.public_bytes(serialization.Encoding.DER),
                                    old_cert, old_key)

    async def poll(
        self, transaction_id: str, subject: x509.Name, signer: x509.Certificate, key: rsa.RSAPrivateKey,
    ) -> ScepResult:
        """CertPoll (GetCertInitial) for a PENDING request (RFC 8894 §3.3.3)."""
        ca = await self._issuing_ca()
        data = IssuerAndSubject(issuer=ca.subject, subject=subject).to_der()
        return await self._transact(MessageType.CERT_POLL, transaction_id, data, signer, key)

    async def enroll_and_wait(
        self, csr: x509.CertificateSigningRequest, key: rsa.RSAPrivateKey, *, interval: float = 1.0,
        max_wait: float = 60.0, transaction_id: str | None = None,
    ) -> ScepResult:
        """Enroll, then poll while PENDING, for at most ``max_wait`` seconds."""
        signer = self_signed_signer(key, csr.subject)
        result = await self.enroll(csr, key, transaction_id=transaction_id, signer=signer)
        waited = 0.0
        while result.status is PkiStatus.PENDING and waited < max_wait:
            await asyncio.sleep(interval)
            waited += interval
            result = await self.poll(result.transaction_id, csr.subject, signer, key)
        return result

    async def _issuing_ca(self) -> x509.Certificate:
        certs = await self._certs()
        cas = [c for c in certs if _is_ca(c)]
        return cas[0] if cas else certs[0]

    async def get_cert(
        self, serial: int, signer: x509.Certificate, key: rsa.RSAPrivateKey, issuer: x509.Name | None = None,
    ) -> ScepResult:
        """GetCert: an issued certificate by issuer and serial (RFC 8894 §3.3.4)."""
        issuer = issuer or (await self._issuing_ca()).subject
        data = IssuerAndSerial(issuer=issuer, serial=serial).to_der()
        return await self._transact(MessageType.GET_CERT, _random_txid(), data, signer, key)

    async def get_crl(self, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> ScepResult:
        """GetCRL for the issuer of ``cert`` (which also signs the request)."""
        data = IssuerAndSerial(issuer=cert.issuer, serial=cert.serial_number).to_der()
        return await self._transact(MessageType.GET_CRL, _random_txid(), data, cert, key)


def _random_txid() -> str:
    return os.urandom(16).hex().upper()


def simple_csr(key: rsa.RSAPrivateKey, cn: str, challenge: str | None = None,
               digest: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
               ) -> x509.CertificateSigningRequest:
    """A CSR with CN and an optional challengePassword (PKCS#9 §5.4.1)."""
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if challenge:
        b = b.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return b.sign(key, digest or hashes.SHA256())


__all__ = [
    "HttpResponse",
    "ScepClient",
    "ScepClientError",
    "ScepDecodeError",
    "ScepResult",
    "http_request",
    "read_response",
    "self_signed_signer",
    "simple_csr",
    "transaction_id_for",
]

