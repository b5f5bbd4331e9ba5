"""SCEP object identifiers, attribute types and protocol constants (RFC 8894 §3.2.1).

Every SCEP OID is registered into asn1crypto's CMS attribute tables **here and only here**, on
import, so that ``cms.CMSAttribute`` parses and builds the SCEP authenticated attributes as
typed values. Nothing in this module touches the network or the event loop.
"""

from __future__ import annotations

import enum

from asn1crypto import cms, core

# RFC 8894 §3.2.1.x: id-VeriSign 2.16.840.1.113733, id-pki = id-VeriSign.1, id-attributes = id-pki.9
OID_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
OID_PKI_STATUS = "2.16.840.1.113733.1.9.3"
OID_FAIL_INFO = "2.16.840.1.113733.1.9.4"
OID_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
OID_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
OID_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
# RFC 8894 §3.2.1.4.5: id-scep-failInfoText = id-pkix.24.1
OID_FAIL_INFO_TEXT = "1.3.6.1.5.5.7.24.1"

#: asn1crypto attribute name for each OID (the names used in ``CMSAttribute['type']``).
ATTRIBUTE_NAMES: dict[str, str] = {
    OID_MESSAGE_TYPE: "scep_message_type",
    OID_PKI_STATUS: "scep_pki_status",
    OID_FAIL_INFO: "scep_fail_info",
    OID_SENDER_NONCE: "scep_sender_nonce",
    OID_RECIPIENT_NONCE: "scep_recipient_nonce",
    OID_TRANSACTION_ID: "scep_transaction_id",
    OID_FAIL_INFO_TEXT: "scep_fail_info_text",
}


class SetOfPrintableString(core.SetOf):  # type: ignore[misc]
    """messageType, pkiStatus, failInfo, transactionID: PrintableString (RFC 8894 §3.2.1.2-4)."""

    _child_spec = core.PrintableString


class SetOfOctetString(core.SetOf):  # type: ignore[misc]
    """senderNonce / recipientNonce: OCTET STRING, 16 bytes by RFC (RFC 8894 §3.2.1.5)."""

    _child_spec = core.OctetString


class SetOfUTF8String(core.SetOf):  # type: ignore[misc]
    """failInfoText: UTF8String (RFC 8894 §3.2.1.4.5)."""

    _child_spec = core.UTF8String


_SPECS: dict[str, type[core.SetOf]] = {
    "scep_message_type": SetOfPrintableString,
    "scep_pki_status": SetOfPrintableString,
    "scep_fail_info": SetOfPrintableString,
    "scep_sender_nonce": SetOfOctetString,
    "scep_recipient_nonce": SetOfOctetString,
    "scep_transaction_id": SetOfPrintableString,
    "scep_fail_info_text": SetOfUTF8String,
}


def _register() -> None:
    """Teach asn1crypto the SCEP attributes (idempotent)."""
    for oid, name in ATTRIBUTE_NAMES.items():
        cms.CMSAttributeType._map[oid] = name
        cms.CMSAttribute._oid_specs[name] = _SPECS[name]
        # asn1crypto builds the name -> OID map once, when the class is created
        if cms.CMSAttributeType._reverse_map is not None:
            cms.CMSAttributeType._reverse_map[name] = oid


_register()


class MessageType(enum.IntEnum):
    """messageType values (RFC 8894 §3.2.1.2; 17/18 from draft-nourse-scep and RFC 8894)."""

    CERT_REP = 3
    RENEWAL_REQ = 17
    UPDATE_REQ = 18  # pre-RFC drafts only: always refused (CVE-2026-30836)
    PKCS_REQ = 19
    CERT_POLL = 20  # GetCertInitial in the drafts
    GET_CERT = 21
    GET_CRL = 22


class PkiStatus(enum.IntEnum):
    """pkiStatus values (RFC 8894 §3.2.1.3)."""

    SUCCESS = 0
    FAILURE = 2
    PENDING = 3


class FailInfo(enum.IntEnum):
    """failInfo values (RFC 8894 §3.2.1.4)."""

    BAD_ALG = 0
    BAD_MESSAGE_CHECK = 1
    BAD_REQUEST = 2
    BAD_TIME = 3
    BAD_CERT_ID = 4


class Capability(enum.Enum):
    """GetCACaps keywords (RFC 8894 §3.5.2); values are the exact wire spelling."""

    AES = "AES"
    DES3 = "DES3"
    GET_NEXT_CA_CERT = "GetNextCACert"
    POST_PKI_OPERATION = "POSTPKIOperation"
    RENEWAL = "Renewal"
    SHA_1 = "SHA-1"
    SHA_256 = "SHA-256"
    SHA_384 = "SHA-384"  # not in RFC 8894's table; strongSwan 5.9.8 needs it (PEERS.md)
    SHA_512 = "SHA-512"
    SCEP_STANDARD = "SCEPStandard"
    UPDATE = "Update"  # never advertised: UpdateReq is refused


class IssuerAndSubject(core.Sequence):  # type: ignore[misc]
    """CertPoll messageData (RFC 8894 §3.3.3): the CA name and the requested subject."""

    _fields = [
        ("issuer", cms.Name),
        ("subject", cms.Name),
    ]


# --- BER-tolerant variants of the CMS containers ---------------------------------------------
# asn1crypto refuses an OCTET STRING in the constructed form unless its length is indefinite,
# but micromdm (and older Apple/jscep stacks) send eContent and encryptedContent as
# *definite-length constructed* OCTET STRINGs. These variants take the value as ``Any`` and
# :func:`ber_octets` merges the chunks (X.690 §8.7.3).


class BerEncapsulatedContentInfo(core.Sequence):  # type: ignore[misc]
    """EncapsulatedContentInfo (RFC 5652 §5.2) with eContent kept raw."""

    _fields = [
        ("content_type", cms.ContentType),
        ("content", core.Any, {"explicit": 0, "optional": True}),
    ]


class BerSignedData(cms.SignedData):  # type: ignore[misc]
    """SignedData (RFC 5652 §5.1) whose encapContentInfo tolerates constructed eContent."""

    _fields = [
        ("version", cms.CMSVersion),
        ("digest_algorithms", cms.DigestAlgorithms),
        ("encap_content_info", BerEncapsulatedContentInfo),
        ("certificates", cms.CertificateSet, {"implicit": 0, "optional": True}),
        ("crls", cms.RevocationInfoChoices, {"implicit": 1, "optional": True}),
        ("signer_infos", cms.SignerInfos),
    ]
    _spec_callbacks: dict[str, object] = {}


class BerEncryptedContentInfo(core.Sequence):  # type: ignore[misc]
    """EncryptedContentInfo (RFC 5652 §6.1) with encryptedContent kept raw."""

    _fields = [
        ("content_type", cms.ContentType),
        ("content_encryption_algorithm", cms.EncryptionAlgorithm),
        ("encrypted_content", core.Any, {"optional": True}),
    ]


class BerEnvelopedData(cms.EnvelopedData):  # type: ignore[misc]
    """EnvelopedData (RFC 5652 §6.1) tolerating a constructed encryptedContent."""

    _fields = [
        ("version", cms.CMSVersion),
        ("originator_info", cms.OriginatorInfo, {"implicit": 0, "optional": True}),
        ("recipient_infos", cms.RecipientInfos),
        ("encrypted_content_info", BerEncryptedContentInfo),
        ("unprotected_attrs", cms.CMSAttributes, {"implicit": 1, "optional": True}),
    ]


class BerContentInfo(cms.ContentInfo):  # type: ignore[misc]
    """ContentInfo (RFC 5652 §3) mapping to the BER-tolerant containers above."""

    _oid_specs = dict(cms.ContentInfo._oid_specs, signed_data=BerSignedData, enveloped_data=BerEnvelopedData)


def raw_encoding(value: core.Asn1Value) -> bytes:
    """The bytes of a parsed value exactly as received (``Any.dump()`` would re-parse it)."""
    return (value._header or b"") + (value.contents or b"") + (value._trailer or b"")


def ber_octets(encoded: bytes, *, explicit: bool = False) -> bytes:
    """The octets of one encoded OCTET STRING, primitive or constructed, with any tag.

    X.690 §8.7: a constructed OCTET STRING is a series of OCTET STRING segments, each of which
    may itself be constructed. ``explicit`` strips one EXPLICIT tag first (eContent is
    ``[0] EXPLICIT OCTET STRING``). Nesting depth is bounded (untrusted input).
    """
    from asn1crypto import parser

    _cls, method, _tag, _hdr, contents, _trl = parser.parse(encoded, strict=True)
    if explicit:
        _cls, method, _tag, _hdr, contents, _trl = parser.parse(contents, strict=True)
    return _merge_segments(contents, 0) if method else contents


def _merge_segments(contents: bytes, depth: int) -> bytes:
    from asn1crypto import parser

    if depth > 8:
        raise ValueError("OCTET STRING nested too deeply")
    out = bytearray()
    pointer = 0
    while pointer < len(contents):
        class_, method, tag, hdr, inner, trailer = parser.parse(contents[pointer:])
        pointer += len(hdr) + len(inner) + len(trailer)
        if class_ == 0 and tag == 0 and not inner and method == 0:
            continue  # end-of-contents octets
        if class_ != 0 or tag != 4:
            raise ValueError("constructed OCTET STRING segment is not an OCTET STRING")
        out += _merge_segments(inner, depth + 1) if method else inner
    return bytes(out)
