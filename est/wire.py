"""Pure EST wire codecs (RFC 7030 with the RFC 8951 clarifications): bytes in, objects out.

- request/response bodies: base64 whatever the Content-Transfer-Encoding says (RFC 8951 §3.1),
  whitespace and PEM armour tolerated on input, unwrapped base64 on output by default;
- certs-only PKCS#7 (RFC 7030 §4.1.3, §4.2.3; RFC 5652 §5 degenerate SignedData);
- /serverkeygen multipart/mixed (RFC 7030 §4.4.2, RFC 2046 §5.1) and the encrypted key
  (CMS EnvelopedData over SignedData over an AsymmetricKeyPackage, RFC 7030 §4.4.2, RFC 5958 §4).

No aiohttp, no asyncio (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from asn1crypto import algos, cms, keys
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap
from cryptography.hazmat.primitives import hashes, keywrap, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric import padding as apadding
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ca import cms_der
from ca.keys import FileKey, Signer
from est.asn1 import Oid, RawAsymmetricKeyPackage
from est.errors import BadRequest, ProtocolError

# --- content types, byte-exact (RFC 7030 §4, RFC 8951) --------------------------------

#: /simpleenroll, /simplereenroll and the certificate part of /serverkeygen (one space).
CT_CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
#: /cacerts: RFC 7030 §4.1.3 and strict clients (Bouncy Castle < 1.69) want exactly this.
CT_CACERTS = "application/pkcs7-mime"
CT_CSRATTRS = "application/csrattrs"
CT_PKCS10 = "application/pkcs10"
CT_PKCS8 = "application/pkcs8"
#: /serverkeygen key part when the client asked for encryption (RFC 7030 §4.4.2).
CT_SERVER_GENERATED_KEY = "application/pkcs7-mime; smime-type=server-generated-key"
CT_CMC_REQUEST = "application/pkcs7-mime; smime-type=CMC-request"
CT_CMC_RESPONSE = "application/pkcs7-mime; smime-type=CMC-response"
CT_MULTIPART_MIXED = "multipart/mixed"
#: error bodies (RFC 8951 §3.2 / erratum 5108).
CT_TEXT = "text/plain"
CTE_BASE64 = "base64"

_WHITESPACE = re.compile(rb"[\s\x00]+")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 #]+)-----(.*?)-----END \1-----", re.DOTALL)
_PEM_HEADER_LINE = re.compile(rb"^[A-Za-z-]+:.*$", re.MULTILINE)


# --- base64 bodies (RFC 8951 §3.1) --------------------------------------------------------------


def strip_pem_armour(body: bytes) -> bytes:
    """Quirk ok/curl-pem-armoured-csr: curl users post ``openssl req`` output with its
    ``-----BEGIN CERTIFICATE REQUEST-----`` lines (globalsign/est#23). Keep the first block's
    base64 and drop RFC 1421 header lines; a body without armour is returned unchanged."""
    match = _PEM_BLOCK.search(body)
    if match is None:
        return body
    return _PEM_HEADER_LINE.sub(b"", match.group(2))


def strip_trailing_nul(body: bytes) -> bytes:
    """Quirk ok/libest-trailing-nul: libest's estserver ends its /csrattrs base64 with a NUL
    byte (captures/libest-estserver-3.2.0p/csrattrs.b64). Drop NULs at the end."""
    return body.rstrip(b"\x00")


def urlsafe_to_standard(text: bytes) -> bytes:
    """Quirk ok/base64url-alphabet: accept the URL-safe alphabet (RFC 4648 §5) some HTTP
    stacks produce; the two alphabets never collide."""
    return text.replace(b"-", b"+").replace(b"_", b"/")


def decode_base64_body(body: bytes) -> bytes:
    """Decode an EST body: base64 regardless of any Content-Transfer-Encoding (RFC 8951 §3.1).

    Tolerates CR/LF/space/tab anywhere, PEM armour, a trailing NUL, missing ``=`` padding and
    the URL-safe alphabet. Anything else (including an empty body) is a :class:`BadRequest`.
    """
    text = strip_trailing_nul(body)
    if b"-----BEGIN" in text:
        text = strip_pem_armour(text)
    text = _WHITESPACE.sub(b"", text)
    if not text:
        raise BadRequest("empty body: expected base64 DER (RFC 8951 §3.1)")
    text = urlsafe_to_standard(text)
    text = text.rstrip(b"=")
    if len(text) % 4 == 1:
        raise BadRequest("body is not valid base64 (RFC 8951 §3.1): bad length")
    text += b"=" * (-len(text) % 4)
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("body is not valid base64 (RFC 8951 §3.1)") from None
    if not der:
        raise BadRequest("empty body after base64 decoding")
    return der


@dataclass(frozen=True)
class Base64Framing:
    """How the base64 of a response body is laid out (RFC 8951 §3.1 allows any layout; clients
    do not: see est/quirks.py). ``line_length`` 0 is one unbroken line (RFC 8951's form);
    otherwise lines of ``line_length`` characters, each ended by ``eol``, the last one too."""

    line_length: int = 0
    eol: bytes = b"\r\n"

    def __post_init__(self) -> None:
        if self.line_length < 0 or self.line_length % 4:
            raise ValueError("base64 line length must be 0 or a multiple of 4")
        if self.eol not in (b"\r\n", b"\n"):
            raise ValueError("base64 line end must be CRLF or LF")

    def encode(self, der: bytes) -> bytes:
        """``der`` as base64 in this layout."""
        return encode_base64(der, line_length=self.line_length, eol=self.eol)


#: RFC 8951 §3.1: one line, no line end (the default for every client without a quirk).
UNWRAPPED = Base64Framing()


def encode_base64(der: bytes, *, line_length: int = 0, eol: bytes = b"\r\n") -> bytes:
    """Base64 for a response body (RFC 7030 §4, RFC 8951 §3.1).

    Unwrapped by default: strongSwan 5.9.8 fails on any line break. ``line_length`` (e.g. 64
    or 76) wraps, each line ended by ``eol`` (CRLF as in RFC 2045 §6.8, or LF), the last too.
    """
    text = base64.b64encode(der)
    if line_length <= 0:
        return text
    if line_length % 4:
        raise ValueError("base64 line length must be a multiple of 4")
    lines = [text[i : i + line_length] for i in range(0, len(text), line_length)]
    return eol.join(lines) + eol


# --- media types ----------------------------------------------------------------------------


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type/subtype; name=value; ...`` (RFC 9110 §8.3.1): lower-cased type, parameter
    names lower-cased, quoted values unquoted."""
    parts = value.split(";")
    mtype = parts[0].strip().lower()
    params: dict[str, str] = {}
    for raw in parts[1:]:
        if "=" not in raw:
            continue
        name, _, val = raw.partition("=")
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1].replace('\\"', '"')
        params[name.strip().lower()] = val
    return mtype, params


def is_pkcs10(content_type: str | None) -> bool:
    """True for ``application/pkcs10`` with any parameters or case (RFC 7030 §4.2.1)."""
    if not content_type:
        return False
    return parse_media_type(content_type)[0] == CT_PKCS10


# --- certificates ---------------------------------------------------------------------------


def encode_certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """DER certs-only PKCS#7: SignedData v1, no digestAlgorithms, eContent absent, certs in
    ``[0]``, no signerInfos (RFC 7030 §4.1.3, RFC 5652 §5)."""
    if not certs:
        raise ValueError("certs-only needs at least one certificate")
    return cms_der.certs_only([c.public_bytes(serialization.Encoding.DER) for c in certs], sort=True)


def decode_certs_only(der: bytes) -> tuple[x509.Certificate, ...]:
    """Certificates of a certs-only PKCS#7, in order (BER accepted). Raises ProtocolError."""
    try:
        info = cms.ContentInfo.load(der)
        if info["content_type"].native != "signed_data":
            raise ProtocolError("PKCS#7 is not SignedData")
        signed = info["content"]
        certs = []
        for choice in signed["certificates"] or []:
            if choice.name != "certificate":
                continue
            certs.append(x509.load_der_x509_certificate(bytes(choice.chosen.dump())))
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - the parse gate: any failure is one error
        raise ProtocolError(f"certs-only PKCS#7 does not parse: {exc}") from None
    if not certs:
        raise ProtocolError("certs-only PKCS#7 holds no certificate")
    return tuple(certs)


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    """The parse gate for a PKCS#10 request (RFC 2986 §4); any failure is a BadRequest."""
    try:
        csr = x509.load_der_x509_csr(der)
        csr.subject  # noqa: B018 - force the lazy parse of the names now
        csr.extensions  # noqa: B018
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: one error for every failure
        raise BadRequest(f"body is not a PKCS#10 certification request: {exc}") from None
    return csr


def csr_signature_valid(csr: x509.CertificateSigningRequest) -> bool:
    """Whether the CSR's self-signature verifies (RFC 2986 §3, proof of possession)."""
    try:
        return bool(csr.is_signature_valid)
    except Exception:  # noqa: BLE001 - unsupported algorithm = not verifiable
        return False


# --- multipart/mixed (RFC 2046 §5.1; RFC 7030 §4.4.2) -----------------------------------------


@dataclass(frozen=True)
class MimePart:
    """One body part: its Content-Type, its headers (names lower-cased) and its raw body."""

    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def decoded(self) -> bytes:
        """The part's DER: base64 whatever the CTE says (RFC 8951 §3.1), except that a part
        explicitly marked ``binary`` whose body is not base64 is taken raw."""
        cte = self.headers.get("content-transfer-encoding", "").strip().lower()
        try:
            return decode_base64_body(self.body)
        except BadRequest:
            if cte in ("binary", "8bit"):
                return self.body
            raise


def new_boundary() -> str:
    """A fresh boundary token (RFC 2046 §5.1.1: 1..70 bchars, never inside a base64 body)."""
    return "est-" + secrets.token_hex(12)


def build_multipart(
    parts: Sequence[tuple[str, bytes]], *, boundary: str | None = None,
    framing: Base64Framing = UNWRAPPED,
) -> tuple[str, bytes]:
    """Build ``multipart/mixed`` with ``Content-Transfer-Encoding: base64`` on every part
    (libest's client drops parts without it). Each part's body is ``framing``'s base64, then the
    CRLF that belongs to the next delimiter (RFC 2046 §5.1.1). Returns (Content-Type, body)."""
    b = boundary or new_boundary()
    if not re.fullmatch(r"[0-9A-Za-z'()+_,\-./:=?]{1,70}", b):
        raise ValueError("invalid MIME boundary")
    out = bytearray()
    for ctype, der in parts:
        out += b"--" + b.encode() + b"\r\n"
        out += b"Content-Type: " + ctype.encode() + b"\r\n"
        out += b"Content-Transfer-Encoding: base64\r\n\r\n"
        out += framing.encode(der) + b"\r\n"
    out += b"--" + b.encode() + b"--\r\n"
    return f"{CT_MULTIPART_MIXED}; boundary={b}", bytes(out)


def parse_multipart(content_type: str, body: bytes) -> tuple[MimePart, ...]:
    """Split a ``multipart/mixed`` body into parts; CRLF or bare LF line ends accepted
    (libest mixes both, captures/libest-estserver-3.2.0p/serverkeygen.http)."""
    mtype, params = parse_media_type(content_type)
    if mtype != CT_MULTIPART_MIXED or not params.get("boundary"):
        raise ProtocolError(f"expected multipart/mixed with a boundary, got {content_type!r}")
    delim = b"--" + params["boundary"].encode()
    chunks = body.split(delim)
    if len(chunks) < 3:
        raise ProtocolError("multipart body has no complete part")
    parts: list[MimePart] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # close delimiter
        chunk = chunk.lstrip(b" \t")
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        elif chunk.startswith(b"\n"):
            chunk = chunk[1:]
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = chunk.partition(b"\n\n")
        if not sep:
            raise ProtocolError("multipart part without a header/body separator")
        headers: dict[str, str] = {}
        for line in head.replace(b"\r\n", b"\n").split(b"\n"):
            if b":" in line:
                name, _, val = line.partition(b":")
                headers[name.strip().decode("latin-1").lower()] = val.strip().decode("latin-1")
        # the CRLF before the next delimiter belongs to the delimiter (RFC 2046 §5.1.1)
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        parts.append(MimePart(headers.get("content-type", "text/plain"), content, headers))
    return tuple(parts)


@dataclass(frozen=True)
class ServerKeygenResult:
    """A parsed /serverkeygen answer: the key part (PKCS#8 DER, or the CMS when encrypted)
    and the certificates of the certs-only part."""

    key_content_type: str
    key_der: bytes
    certificates: tuple[x509.Certificate, ...]

    @property
    def encrypted(self) -> bool:
        """True when the key came as ``smime-type=server-generated-key`` (RFC 7030 §4.4.2)."""
        return parse_media_type(self.key_content_type)[1].get("smime-type", "").lower() == (
            "server-generated-key"
        )


def build_serverkeygen_response(
    key_der: bytes,
    certs_only_der: bytes,
    *,
    encrypted: bool,
    boundary: str | None = None,
    framing: Base64Framing = UNWRAPPED,
) -> tuple[str, bytes]:
    """RFC 7030 §4.4.2: the key part first (``application/pkcs8`` or, encrypted,
    ``application/pkcs7-mime; smime-type=server-generated-key``), then the certificate."""
    key_type = CT_SERVER_GENERATED_KEY if encrypted else CT_PKCS8
    return build_multipart(
        [(key_type, key_der), (CT_CERTS_ONLY, certs_only_der)],
        boundary=boundary,
        framing=framing,
    )


def parse_serverkeygen_response(content_type: str, body: bytes) -> ServerKeygenResult:
    """Parse a /serverkeygen answer; parts are matched by type, not only by position."""
    parts = parse_multipart(content_type, body)
    key_part = cert_part = None
    for part in parts:
        mtype, params = parse_media_type(part.content_type)
        smime = params.get("smime-type", "").lower()
        if mtype == CT_PKCS8 or (mtype == CT_CACERTS and smime == "server-generated-key"):
            key_part = key_part or part
        elif mtype == CT_CACERTS and smime in ("certs-only", ""):
            cert_part = cert_part or part
    if key_part is None or cert_part is None:
        raise ProtocolError("serverkeygen answer lacks the key part or the certificate part")
    try:
        key_der = key_part.decoded()
        certs_der = cert_part.decoded()
    except BadRequest as exc:
        raise ProtocolError(f"serverkeygen part is not base64: {exc.detail}") from None
    return ServerKeygenResult(key_part.content_type, key_der, decode_certs_only(certs_der))


# --- server-generated key encryption (RFC 7030 §4.4.2, RFC 5958 §4, RFC 5652 §5-6) -------------


@dataclass(frozen=True)
class KekRecipient:
    """A symmetric key-encryption key named by DecryptKeyIdentifier (RFC 7030 §4.4.1.1);
    wrapped with AES key wrap (RFC 3394 / RFC 3565), 16, 24 or 32 bytes."""

    key_id: bytes
    kek: bytes


@dataclass(frozen=True)
class KeyTransRecipient:
    """An RSA certificate named by AsymmetricDecryptKeyIdentifier (RFC 7030 §4.4.1.2), the
    recipient identified by subjectKeyIdentifier (RFC 5652 §6.2.1), RSAES-OAEP (RFC 8017)."""

    certificate: x509.Certificate
    key_id: bytes


def subject_key_identifier(cert: x509.Certificate) -> bytes:
    """The certificate's SKI extension, or the RFC 5280 §4.2.1.2 method 1 value."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return bytes(ext.value.digest)
    except x509.ExtensionNotFound:
        return bytes(x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest)


def _signature_algorithm(signer: Signer) -> tuple[str, str]:
    """(digest name, asn1crypto signature algorithm name) for the server's signing key
    (RFC 5754 §3.2-3.3, RFC 8419 §3 for Ed25519)."""
    key = signer.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "sha256", "sha256_rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size > 384:
            return "sha512", "sha512_ecdsa"
        if key.curve.key_size > 256:
            return "sha384", "sha384_ecdsa"
        return "sha256", "sha256_ecdsa"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "sha512", "ed25519"
    raise ValueError(f"unsupported signing key {type(key).__name__}")


_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


def _sign(signer: Signer, data: bytes, digest: str) -> bytes:
    """Sign through the :class:`ca.keys.Signer` (a PEM key or a PKCS#11 key): PKCS#1 v1.5 or
    ECDSA over ``digest``; Ed25519 hashes internally (RFC 8032)."""
    if isinstance(signer.public_key(), ed25519.Ed25519PublicKey):
        return signer.sign(data, None)
    return signer.sign(data, _HASHES[digest])


def as_signer(key: Signer | PrivateKeyTypes) -> Signer:
    """A :class:`ca.keys.Signer` for a cryptography private key (RSA, EC, Ed25519); a Signer as is."""
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        return FileKey(key)
    if isinstance(key, Signer):
        return key
    raise ValueError(f"unsupported signing key {type(key).__name__}")


@functools.lru_cache(maxsize=16)
def _package_signer_template(signer_cert: x509.Certificate, sig_name: str, digest_name: str) -> cms_der.SignerTemplate:
    """The key package signer's blobs, encoded once (RFC 5652 §5.3): issuerAndSerialNumber,
    the digest and signature AlgorithmIdentifiers, the signer certificate."""
    der = signer_cert.public_bytes(serialization.Encoding.DER)
    return cms_der.SignerTemplate(
        sid=cms_der.issuer_and_serial_number(der),
        digest_algorithm=bytes(algos.DigestAlgorithm({"algorithm": digest_name}).dump()),
        signature_algorithm=bytes(algos.SignedDigestAlgorithm({"algorithm": sig_name}).dump()),
        certificates=cms_der.certificate_set([der]),
    )


_KP_A_KEY_PACKAGE = cms_der.oid(Oid.KP_A_KEY_PACKAGE)
_CONTENT_TYPE_KEY_PACKAGE = cms_der.attribute(cms_der.ID_CONTENT_TYPE, _KP_A_KEY_PACKAGE)


def _signed_key_package(
    pkcs8_der: bytes, signer_key: Signer, signer_cert: x509.Certificate
) -> bytes:
    """SignedData (v3, eContentType id-ct-KP-aKeyPackage) over an AsymmetricKeyPackage holding
    the one generated key, signed by the party that generated it (RFC 7030 §4.4.2)."""
    keys.PrivateKeyInfo.load(pkcs8_der, strict=True)  # must be a PrivateKeyInfo
    package = cms_der.tlv(0x30, pkcs8_der)  # AsymmetricKeyPackage: SEQUENCE OF OneAsymmetricKey
    digest_name, sig_name = _signature_algorithm(signer_key)
    digest = hashlib.new(digest_name, package).digest()
    signed_attrs = cms_der.signed_attributes(
        [
            _CONTENT_TYPE_KEY_PACKAGE,
            cms_der.attribute(cms_der.ID_SIGNING_TIME, cms_der.utc_time(_now())),
            cms_der.attribute(cms_der.ID_MESSAGE_DIGEST, cms_der.octet_string(digest)),
        ]
    )
    # RFC 5652 §5.4: the signature covers the DER of the attributes with a SET OF tag.
    return cms_der.signed_data(
        _package_signer_template(signer_cert, sig_name, digest_name),
        version=3,  # RFC 5652 §5.1: eContentType is not id-data
        econtent_type=_KP_A_KEY_PACKAGE,
        econtent=package,
        signed_attrs=signed_attrs,
        signature=_sign(signer_key, signed_attrs, digest_name),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


#: AES key wrap by KEK length (RFC 3394 §3 OIDs as registered by RFC 3565 §2.3.2)
_WRAP_BY_LEN = {
    16: cms_der.oid("2.16.840.1.101.3.4.1.5"),
    24: cms_der.oid("2.16.840.1.101.3.4.1.25"),
    32: cms_der.oid("2.16.840.1.101.3.4.1.45"),
}
_AES256_CBC = cms_der.oid("2.16.840.1.101.3.4.1.42")
#: RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 8017 A.2.1, RFC 4055 §4.1)
_RSAES_OAEP_SHA256 = bytes(
    algos.EncryptionAlgorithm(
        {
            "algorithm": "rsaes_oaep",
            "parameters": algos.RSAESOAEPParams(
                {
                    "hash_algorithm": {"algorithm": "sha256"},
                    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
                }
            ),
        }
    ).dump()
)


def build_server_generated_key(
    pkcs8_der: bytes,
    *,
    signer_key: Signer | PrivateKeyTypes,
    signer_cert: x509.Certificate,
    recipient: KekRecipient | KeyTransRecipient,
) -> bytes:
    """The encrypted /serverkeygen key part (RFC 7030 §4.4.2): ContentInfo(EnvelopedData(
    SignedData(AsymmetricKeyPackage))), content encrypted with AES-256-CBC (RFC 3565)."""
    inner = _signed_key_package(pkcs8_der, as_signer(signer_key), signer_cert)
    cek = os.urandom(32)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(inner) + padder.finalize()
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(padded) + enc.finalize()
    if isinstance(recipient, KekRecipient):
        alg = _WRAP_BY_LEN.get(len(recipient.kek))
        if alg is None:
            raise ValueError("KEK must be 16, 24 or 32 bytes (AES key wrap)")
        ri = cms_der.kek_recipient(
            recipient.key_id,
            cms_der.algorithm_identifier(alg),
            keywrap.aes_key_wrap(recipient.kek, cek),
        )
    else:
        pub = recipient.certificate.public_key()
        if not isinstance(pub, rsa.RSAPublicKey):
            raise BadRequest(
                "AsymmetricDecryptKeyIdentifier names a non-RSA key; this server encrypts "
                "server-generated keys to RSA recipients only (RFC 5652 §6.2.1 key transport)"
            )
        encrypted_key = pub.encrypt(
            cek,
            apadding.OAEP(
                mgf=apadding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
            ),
        )
        # version 2: rid is [0] subjectKeyIdentifier (RFC 5652 §6.2.1)
        ri = cms_der.key_trans_recipient(
            2, cms_der.tlv(0x80, recipient.key_id), _RSAES_OAEP_SHA256, encrypted_key
        )
    return cms_der.enveloped_data(
        version=2,  # RFC 5652 §6.1: a v2 ktri or a kekri present
        recipient_infos=[ri],
        content_type=cms_der.ID_SIGNED_DATA,
        content_encryption_algorithm=cms_der.algorithm_identifier(
            _AES256_CBC, cms_der.octet_string(iv)
        ),
        encrypted_content=ciphertext,
    )


@dataclass(frozen=True)
class OpenedKey:
    """A decrypted server-generated key and the certificate that signed its package."""

    private_key: PrivateKeyTypes
    pkcs8_der: bytes
    signer: x509.Certificate | None


def open_server_generated_key(
    der: bytes,
    *,
    kek: KekRecipient | None = None,
    private_key: PrivateKeyTypes | None = None,
) -> OpenedKey:
    """Client side of RFC 7030 §4.4.2: decrypt with the KEK or the RSA key, verify the
    SignedData signature with its embedded certificate (authorizing that signer is the
    caller's job), and return the key. Raises ProtocolError."""
    try:
        info = cms.ContentInfo.load(der)
        if info["content_type"].native != "enveloped_data":
            raise ProtocolError("server-generated key is not EnvelopedData")
        env = info["content"]
        cek: bytes | None = None
        for ri in env["recipient_infos"]:
            if ri.name == "kekri" and kek is not None:
                if bytes(ri.chosen["kekid"]["key_identifier"].native) != kek.key_id:
                    continue
                cek = keywrap.aes_key_unwrap(kek.kek, bytes(ri.chosen["encrypted_key"].native))
            elif ri.name == "ktri" and isinstance(private_key, rsa.RSAPrivateKey):
                alg = ri.chosen["key_encryption_algorithm"]
                enc_key = bytes(ri.chosen["encrypted_key"].native)
                if alg["algorithm"].native == "rsaes_oaep":
                    params = alg["parameters"]
                    h = params["hash_algorithm"]["algorithm"].native
                    mh = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
                    halg = {"sha1": hashes.SHA1(), **_HASHES}
                    cek = private_key.decrypt(
                        enc_key,
                        apadding.OAEP(mgf=apadding.MGF1(halg[mh]), algorithm=halg[h], label=None),
                    )
                else:
                    cek = private_key.decrypt(enc_key, apadding.PKCS1v15())
            if cek is not None:
                break
        if cek is None:
            raise ProtocolError("no RecipientInfo matches the supplied key")
        eci = env["encrypted_content_info"]
        calg = eci["content_encryption_algorithm"]
        if calg["algorithm"].native not in ("aes128_cbc", "aes192_cbc", "aes256_cbc"):
            raise ProtocolError(f"unsupported content encryption {calg['algorithm'].native}")
        iv = bytes(calg["parameters"].native)
        dec = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
        padded = dec.update(bytes(eci["encrypted_content"].native)) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        inner = unpadder.update(padded) + unpadder.finalize()
        sd_info = cms.ContentInfo.load(inner)
        if sd_info["content_type"].native != "signed_data":
            raise ProtocolError("encrypted content is not SignedData")
        sd = sd_info["content"]
        econtent = sd["encap_content_info"]
        if econtent["content_type"].dotted != Oid.KP_A_KEY_PACKAGE:
            raise ProtocolError("SignedData does not carry an AsymmetricKeyPackage")
        package_der = bytes(econtent["content"].contents)
        signer = _verify_signed_data(sd, package_der)
        package = RawAsymmetricKeyPackage.load(package_der)
        pkcs8 = bytes(package[0].dump())
        key = serialization.load_der_private_key(pkcs8, password=None)
    except ProtocolError:
        raise
    except (InvalidUnwrap, InvalidSignature) as exc:
        raise ProtocolError(f"server-generated key does not decrypt/verify: {exc!r}") from None
    except Exception as exc:  # noqa: BLE001 - one error for every failure
        raise ProtocolError(f"server-generated key does not open: {exc}") from None
    return OpenedKey(key, pkcs8, signer)


def _verify_signed_data(sd: cms.SignedData, content: bytes) -> x509.Certificate | None:
    """Verify the single SignerInfo with the embedded signer certificate (RFC 5652 §5.6)."""
    infos = list(sd["signer_infos"])
    if len(infos) != 1:
        raise ProtocolError("expected exactly one SignerInfo")
    si = infos[0]
    sid = si["sid"]
    signer: x509.Certificate | None = None
    for choice in sd["certificates"] or []:
        if choice.name != "certificate":
            continue
        c = choice.chosen
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            if c.issuer == ias["issuer"] and c.serial_number == ias["serial_number"].native:
                signer = x509.load_der_x509_certificate(bytes(c.dump()))
    if signer is None:
        raise ProtocolError("signer certificate not included")
    digest_name = si["digest_algorithm"]["algorithm"].native
    attrs = si["signed_attrs"]
    md = None
    for attr in attrs:
        if attr["type"].native == "message_digest":
            md = bytes(attr["values"][0].native)
    if md is None or md != hashlib.new(digest_name, content).digest():
        raise ProtocolError("messageDigest does not match the key package")
    # RFC 5652 §5.4: verify over the attributes as received, with the [0] tag read as SET OF.
    data = b"\x31" + bytes(attrs.dump())[1:]
    signature = bytes(si["signature"].native)
    pub = signer.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        pub.verify(signature, data, apadding.PKCS1v15(), _HASHES[digest_name])
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        pub.verify(signature, data, ec.ECDSA(_HASHES[digest_name]))
    elif isinstance(pub, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        pub.verify(signature, data)
    else:
        raise ProtocolError("unsupported signer key")
    return signer
