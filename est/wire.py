"""Pure EST wire codecs (RFC 7030 with the RFC 8951 clarifications): bytes in, objects out.

- request/response bodies: base64 whatever the Content-Transfer-Encoding says (RFC 8951 §3.1),
  whitespace and PEM armour tolerated on input, unwrapped base64 on output by default;
- certs-only PKCS#7 (RFC 7030 §4.1.3, §4.2.3; RFC 5652 §5 degenerate SignedData);
- /serverkeygen multipart/mixed (RFC 7030 §4.4.2, RFC 2046 §5.1); the encrypted key part's CMS
  is est/serverkeygen_cms.py.

No aiohttp, no asyncio (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca import cms_der
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


def csr_signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """The hash a PKCS#10 signature with ``key`` uses (RFC 2986 §4.2): none for EdDSA (RFC 8410
    §6), SHA-384 for P-384 and SHA-512 for P-521 (RFC 5758 §3.2), SHA-256 otherwise."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384() if key.curve.key_size == 384 else hashes.SHA512()
    return hashes.SHA256()


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
