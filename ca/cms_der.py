"""CMS replies by concatenation (RFC 5652): DER built from precomputed blobs and a few TLV writes.

Protocol-neutral: EST's certs-only and server-generated-key replies and SCEP's CertRep are all
SignedData and EnvelopedData. What never changes per signer (SignerIdentifier, the algorithm
identifiers, the certificates block) is encoded once in a :class:`SignerTemplate`; a reply then
costs one hash, one signature and a handful of length prefixes. Parsing stays with asn1crypto
at the protocol's parse gate; nothing here reads untrusted input except
:func:`issuer_and_serial_number`, which walks a certificate this process already holds.

Encodings follow X.690 DER (definite lengths, SET OF sorted by encoding, §11.6), except where
a caller asks for its own certificate order (:func:`certificate_set` with ``sort=False``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# --- primitive TLVs (X.690 §8, §10) -----------------------------------------------------------


def der_length(n: int) -> bytes:
    """Definite-form length octets (X.690 §8.1.3, §10.1: the short form below 128)."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    """One single-octet-tag TLV."""
    return bytes((tag,)) + der_length(len(content)) + content


def oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER TLV (X.690 §8.19)."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2:
        raise ValueError(f"not an OID: {dotted!r}")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def integer(n: int) -> bytes:
    """An INTEGER TLV, minimal two's complement (X.690 §8.3)."""
    size = (n + (n < 0)).bit_length() // 8 + 1
    return tlv(0x02, n.to_bytes(size, "big", signed=True))


def octet_string(data: bytes) -> bytes:
    """A primitive OCTET STRING TLV."""
    return tlv(0x04, data)


def printable_string(text: str) -> bytes:
    """A PrintableString TLV. Latin-1 octets: a value parsed from a peer is echoed as received
    (the caller keeps new values to the X.680 §41.4 character set)."""
    return tlv(0x13, text.encode("latin-1"))


def utf8_string(text: str) -> bytes:
    """A UTF8String TLV."""
    return tlv(0x0C, text.encode("utf-8"))


def utc_time(when: dt.datetime) -> bytes:
    """A UTCTime TLV, ``YYMMDDHHMMSSZ`` (RFC 5652 §11.3, RFC 5280 §4.1.2.5.1)."""
    when = when.astimezone(dt.timezone.utc)
    return tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))


def sequence(*items: bytes) -> bytes:
    """SEQUENCE of already-encoded items."""
    return tlv(0x30, b"".join(items))


def set_of(items: Iterable[bytes]) -> bytes:
    """SET OF, elements sorted by their encodings (X.690 §11.6)."""
    return tlv(0x31, b"".join(sorted(items)))


def algorithm_identifier(algorithm: bytes, parameters: bytes | None = None) -> bytes:
    """AlgorithmIdentifier (RFC 5280 §4.1.1.2) from an OID TLV and optional parameters TLV."""
    return tlv(0x30, algorithm + (parameters or b""))


#: ContentInfo content types (RFC 5652 §4, §5.1, §6.1).
ID_DATA = oid("1.2.840.113549.1.7.1")
ID_SIGNED_DATA = oid("1.2.840.113549.1.7.2")
ID_ENVELOPED_DATA = oid("1.2.840.113549.1.7.3")
#: signed attribute types (RFC 5652 §11.1-11.3).
ID_CONTENT_TYPE = oid("1.2.840.113549.1.9.3")
ID_MESSAGE_DIGEST = oid("1.2.840.113549.1.9.4")
ID_SIGNING_TIME = oid("1.2.840.113549.1.9.5")


def _read_header(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the TLV at ``pos``; DER lengths only."""
    tag = der[pos]
    first = der[pos + 1]
    if first < 0x80:
        return tag, pos + 2, pos + 2 + first
    count = first & 0x7F
    if count == 0 or count > 4:
        raise ValueError("not a DER length")
    length = int.from_bytes(der[pos + 2 : pos + 2 + count], "big")
    start = pos + 2 + count
    if start + length > len(der):
        raise ValueError("TLV runs past the end")
    return tag, start, start + length


def issuer_and_serial_number(certificate_der: bytes) -> bytes:
    """IssuerAndSerialNumber (RFC 5652 §10.2.4) of a DER certificate: its issuer Name and
    serialNumber copied as encoded in the TBSCertificate (RFC 5280 §4.1)."""
    _tag, cert_start, _end = _read_header(certificate_der, 0)
    _tag, pos, _end = _read_header(certificate_der, cert_start)  # TBSCertificate
    tag, _start, end = _read_header(certificate_der, pos)
    if tag == 0xA0:  # [0] EXPLICIT version
        pos = end
    tag, _start, serial_end = _read_header(certificate_der, pos)
    if tag != 0x02:
        raise ValueError("certificate serialNumber is not an INTEGER")
    serial = certificate_der[pos:serial_end]
    _tag, _start, sig_end = _read_header(certificate_der, serial_end)  # signature AlgorithmIdentifier
    tag, _start, issuer_end = _read_header(certificate_der, sig_end)
    if tag != 0x30:
        raise ValueError("certificate issuer is not a Name")
    return tlv(0x30, certificate_der[sig_end:issuer_end] + serial)


# --- ContentInfo and SignedData (RFC 5652 §3, §5) -----------------------------------------------


def content_info(content_type: bytes, content: bytes) -> bytes:
    """ContentInfo { contentType, [0] EXPLICIT content } (RFC 5652 §3)."""
    return tlv(0x30, content_type + tlv(0xA0, content))


def certificate_set(certificate_ders: Sequence[bytes], *, sort: bool = True) -> bytes:
    """``certificates [0] IMPLICIT CertificateSet`` (RFC 5652 §5.1); empty input gives b"".

    ``sort=False`` keeps the caller's order: certs-only replies whose readers take the first
    certificate as the issued one (RFC 8894 §3.3.2 clients, RFC 7030 §4.2.3)."""
    if not certificate_ders:
        return b""
    items = sorted(certificate_ders) if sort else certificate_ders
    return tlv(0xA0, b"".join(items))


def certs_only(
    certificate_ders: Sequence[bytes], crl_ders: Sequence[bytes] = (), *, sort: bool = False
) -> bytes:
    """Degenerate certs-only SignedData ContentInfo (RFC 5652 §5.2): version 1, no
    digestAlgorithms, id-data without eContent, certificates in the given order (DER order with
    ``sort``), optional ``crls [1]``, no signerInfos."""
    body = (
        b"\x02\x01\x01"  # version 1
        + b"\x31\x00"  # digestAlgorithms: empty
        + tlv(0x30, ID_DATA)
        + certificate_set(certificate_ders, sort=sort)
        + (tlv(0xA1, b"".join(crl_ders)) if crl_ders else b"")
        + b"\x31\x00"  # signerInfos: empty
    )
    return content_info(ID_SIGNED_DATA, tlv(0x30, body))


def attribute(attr_type: bytes, *values: bytes) -> bytes:
    """Attribute { attrType, SET OF attrValues } (RFC 5652 §5.3) from encoded parts."""
    return tlv(0x30, attr_type + set_of(values))


def signed_attributes(attributes: Iterable[bytes]) -> bytes:
    """The SET OF signed attributes in DER: the exact bytes the signature covers (RFC 5652
    §5.4); :func:`signed_data` re-tags it ``[0] IMPLICIT``."""
    return set_of(attributes)


@dataclass(frozen=True)
class SignerTemplate:
    """Everything of a SignedData that depends only on the signer (RFC 5652 §5.1, §5.3),
    encoded once: build one per signing key, certificate chain and digest and reuse it."""

    #: SignerIdentifier: an IssuerAndSerialNumber SEQUENCE, or ``[0]`` subjectKeyIdentifier.
    sid: bytes
    #: the DigestAlgorithmIdentifier (also the only member of digestAlgorithms).
    digest_algorithm: bytes
    #: the SignatureAlgorithmIdentifier.
    signature_algorithm: bytes
    #: ``certificates [0]`` as from :func:`certificate_set`, or b"" for none.
    certificates: bytes = b""

    @property
    def signer_info_version(self) -> int:
        """1 for issuerAndSerialNumber, 3 for subjectKeyIdentifier (RFC 5652 §5.3)."""
        return 3 if self.sid[:1] == b"\x80" else 1


def signed_data(
    template: SignerTemplate,
    *,
    version: int,
    econtent_type: bytes,
    econtent: bytes | None,
    signed_attrs: bytes,
    signature: bytes,
) -> bytes:
    """A SignedData ContentInfo with one SignerInfo (RFC 5652 §5.1, §5.3).

    ``signed_attrs`` is the SET OF from :func:`signed_attributes` that ``signature`` covers;
    ``econtent`` None leaves eContent absent (detached or empty content); otherwise it is a
    primitive OCTET STRING."""
    signer_info = tlv(
        0x30,
        integer(template.signer_info_version)
        + template.sid
        + template.digest_algorithm
        + b"\xa0" + signed_attrs[1:]  # [0] IMPLICIT SET OF: same length and contents
        + template.signature_algorithm
        + octet_string(signature),
    )
    encap = econtent_type
    if econtent is not None:
        encap += tlv(0xA0, octet_string(econtent))
    body = (
        integer(version)
        + tlv(0x31, template.digest_algorithm)
        + tlv(0x30, encap)
        + template.certificates
        + tlv(0x31, signer_info)
    )
    return content_info(ID_SIGNED_DATA, tlv(0x30, body))


# --- EnvelopedData (RFC 5652 §6) --------------------------------------------------------------


def key_trans_recipient(version: int, rid: bytes, key_encryption_algorithm: bytes, encrypted_key: bytes) -> bytes:
    """RecipientInfo ktri: KeyTransRecipientInfo (RFC 5652 §6.2.1). ``rid`` is an encoded
    IssuerAndSerialNumber (version 0) or ``[0]`` subjectKeyIdentifier (version 2)."""
    return tlv(0x30, integer(version) + rid + key_encryption_algorithm + octet_string(encrypted_key))


def kek_recipient(key_identifier: bytes, key_encryption_algorithm: bytes, encrypted_key: bytes) -> bytes:
    """RecipientInfo kekri: ``[2] IMPLICIT`` KEKRecipientInfo, version 4 (RFC 5652 §6.2.3)."""
    kekid = tlv(0x30, octet_string(key_identifier))
    return tlv(0xA2, integer(4) + kekid + key_encryption_algorithm + octet_string(encrypted_key))


def enveloped_data(
    *,
    version: int,
    recipient_infos: Sequence[bytes],
    content_type: bytes,
    content_encryption_algorithm: bytes,
    encrypted_content: bytes,
) -> bytes:
    """An EnvelopedData ContentInfo (RFC 5652 §6.1), no originatorInfo or unprotectedAttrs;
    ``encryptedContent [0] IMPLICIT`` primitive."""
    eci = tlv(0x30, content_type + content_encryption_algorithm + tlv(0x80, encrypted_content))
    body = integer(version) + set_of(recipient_infos) + eci
    return content_info(ID_ENVELOPED_DATA, tlv(0x30, body))
