"""Full PKI Request / Response codec (RFC 7030 §4.3, RFC 5272 as updated by RFC 6402).

Bytes in, objects out, no I/O: :func:`parse_request` reads a ``ContentInfo`` that holds a
``PKIData`` (bare, content type id-cct-PKIData, or encapsulated in a SignedData) and returns the
facts the EST service needs; :func:`build_response` writes the ``PKIResponse`` in an unsigned
SignedData (RFC 5272 §3.3, §4.1: the issued certificates travel in its ``certificates``). The
response is not signed: the TLS server authentication of RFC 7030 §3.3 authenticates it.

One cohesive thing: the Full PKI Request/Response codec, its RFC 5272 ASN.1 types, the parse
gate with its CMC failure codes, and the response writer and reader, both ends of one exchange.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms, core, parser
from asn1crypto import csr as acsr
from asn1crypto import x509 as ax509
from cryptography import x509

from ca.errors import RejectReason
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from est.signerinfo import HASHES, UnsupportedSignerKey, embedded_signer, verify_signer_info

#: RFC 5272 §3.2 / §3.3 content types.
ID_CCT_PKI_DATA = "1.3.6.1.5.5.7.12.2"
ID_CCT_PKI_RESPONSE = "1.3.6.1.5.5.7.12.3"
_SIGNED_DATA = "1.2.840.113549.1.7.2"
#: RFC 5272 §3.2.2: at most this many body parts of any kind in one PKIData (a bound, not a rule).
MAX_BODY_PARTS = 32


class Control(enum.Enum):
    """id-cmc-* control attribute OIDs (RFC 5272 §6, RFC 6402 §2)."""

    STATUS_INFO = "1.3.6.1.5.5.7.7.1"
    IDENTIFICATION = "1.3.6.1.5.5.7.7.2"
    IDENTITY_PROOF = "1.3.6.1.5.5.7.7.3"
    DATA_RETURN = "1.3.6.1.5.5.7.7.4"
    TRANSACTION_ID = "1.3.6.1.5.5.7.7.5"
    SENDER_NONCE = "1.3.6.1.5.5.7.7.6"
    RECIPIENT_NONCE = "1.3.6.1.5.5.7.7.7"
    ADD_EXTENSIONS = "1.3.6.1.5.5.7.7.8"
    ENCRYPTED_POP = "1.3.6.1.5.5.7.7.9"
    DECRYPTED_POP = "1.3.6.1.5.5.7.7.10"
    LRA_POP_WITNESS = "1.3.6.1.5.5.7.7.11"
    GET_CERT = "1.3.6.1.5.5.7.7.15"
    GET_CRL = "1.3.6.1.5.5.7.7.16"
    REVOKE_REQUEST = "1.3.6.1.5.5.7.7.17"
    REG_INFO = "1.3.6.1.5.5.7.7.18"
    RESPONSE_INFO = "1.3.6.1.5.5.7.7.19"
    QUERY_PENDING = "1.3.6.1.5.5.7.7.21"
    POP_LINK_RANDOM = "1.3.6.1.5.5.7.7.22"
    POP_LINK_WITNESS = "1.3.6.1.5.5.7.7.23"
    CONFIRM_CERT_ACCEPTANCE = "1.3.6.1.5.5.7.7.24"
    STATUS_INFO_V2 = "1.3.6.1.5.5.7.7.25"
    TRUSTED_ANCHORS = "1.3.6.1.5.5.7.7.26"
    AUTH_DATA = "1.3.6.1.5.5.7.7.27"
    BATCH_REQUESTS = "1.3.6.1.5.5.7.7.28"
    BATCH_RESPONSES = "1.3.6.1.5.5.7.7.29"
    PUBLISH_CERT = "1.3.6.1.5.5.7.7.30"
    MOD_CERT_TEMPLATE = "1.3.6.1.5.5.7.7.31"
    CONTROL_PROCESSED = "1.3.6.1.5.5.7.7.32"
    POP_LINK_WITNESS_V2 = "1.3.6.1.5.5.7.7.33"
    IDENTITY_PROOF_V2 = "1.3.6.1.5.5.7.7.34"


class Status(enum.IntEnum):
    """``CMCStatus`` (RFC 5272 §6.1.4)."""

    SUCCESS = 0
    FAILED = 2
    PENDING = 3
    NO_SUPPORT = 4
    CONFIRM_REQUIRED = 5
    POP_REQUIRED = 6
    PARTIAL = 7


class FailInfo(enum.IntEnum):
    """``CMCFailInfo`` (RFC 5272 §6.1.4)."""

    BAD_ALG = 0
    BAD_MESSAGE_CHECK = 1
    BAD_REQUEST = 2
    BAD_TIME = 3
    BAD_CERT_ID = 4
    UNSUPPORTED_EXT = 5
    MUST_ARCHIVE_KEYS = 6
    BAD_IDENTITY = 7
    POP_REQUIRED = 8
    POP_FAILED = 9
    NO_KEY_REUSE = 10
    INTERNAL_CA_ERROR = 11
    TRY_LATER = 12
    AUTH_DATA_FAIL = 13


# --- ASN.1 (RFC 5272 §3.2-§3.3, §6; RFC 6402 §2) ---------------------------------------------


class _ContentInfo(core.Sequence):  # type: ignore[misc]
    """``ContentInfo ::= SEQUENCE { contentType, content [0] EXPLICIT ANY }`` (RFC 5652 §3),
    read without opening the content (asn1crypto's ContentInfo knows no id-cct-PKIData)."""

    _fields = [("content_type", core.ObjectIdentifier), ("content", core.Any, {"explicit": 0})]


class BodyPartID(core.Integer):  # type: ignore[misc]
    """``BodyPartID ::= INTEGER(0..4294967295)`` (RFC 5272 §3.2.1)."""


class _AttributeValues(core.SetOf):  # type: ignore[misc]
    _child_spec = core.Any


class TaggedAttribute(core.Sequence):  # type: ignore[misc]
    """``TaggedAttribute ::= SEQUENCE { bodyPartID, attrType OID, attrValues SET OF
    AttributeValue }`` (RFC 5272 §3.2.1.1)."""

    _fields = [
        ("body_part_id", BodyPartID),
        ("attr_type", core.ObjectIdentifier),
        ("attr_values", _AttributeValues),
    ]


class TaggedCertificationRequest(core.Sequence):  # type: ignore[misc]
    """``TaggedCertificationRequest ::= SEQUENCE { bodyPartID, certificationRequest }``
    (RFC 5272 §3.2.1.2.1)."""

    _fields = [
        ("body_part_id", BodyPartID),
        ("certification_request", acsr.CertificationRequest),
    ]


class OtherRequestMsg(core.Sequence):  # type: ignore[misc]
    """The ``orm`` arm of TaggedRequest (RFC 5272 §3.2.1.2)."""

    _fields = [
        ("body_part_id", BodyPartID),
        ("request_message_type", core.ObjectIdentifier),
        ("request_message_value", core.Any),
    ]


class TaggedRequest(core.Choice):  # type: ignore[misc]
    """``TaggedRequest ::= CHOICE { tcr [0], crm [1] CertReqMsg, orm [2] }`` (RFC 5272
    §3.2.1.2, IMPLICIT TAGS). ``crm`` (RFC 4211) is kept opaque: this server answers it
    noSupport."""

    _alternatives = [
        ("tcr", TaggedCertificationRequest, {"implicit": 0}),
        ("crm", core.Sequence, {"implicit": 1}),
        ("orm", OtherRequestMsg, {"implicit": 2}),
    ]


class TaggedContentInfo(core.Sequence):  # type: ignore[misc]
    """``TaggedContentInfo ::= SEQUENCE { bodyPartID, contentInfo }`` (RFC 5272 §3.2.1.3)."""

    _fields = [
        ("body_part_id", BodyPartID),
        ("content_info", core.Any),  # never opened: this server answers noSupport
    ]


class OtherMsg(core.Sequence):  # type: ignore[misc]
    """``OtherMsg ::= SEQUENCE { bodyPartID, otherMsgType, otherMsgValue }`` (RFC 5272 §3.2.1.4)."""

    _fields = [
        ("body_part_id", BodyPartID),
        ("other_msg_type", core.ObjectIdentifier),
        ("other_msg_value", core.Any),
    ]


class TaggedAttributes(core.SequenceOf):  # type: ignore[misc]
    _child_spec = TaggedAttribute


class TaggedRequests(core.SequenceOf):  # type: ignore[misc]
    _child_spec = TaggedRequest


class TaggedContentInfos(core.SequenceOf):  # type: ignore[misc]
    _child_spec = TaggedContentInfo


class OtherMsgs(core.SequenceOf):  # type: ignore[misc]
    _child_spec = OtherMsg


class PKIData(core.Sequence):  # type: ignore[misc]
    """``PKIData`` (RFC 5272 §3.2.1)."""

    _fields = [
        ("control_sequence", TaggedAttributes),
        ("req_sequence", TaggedRequests),
        ("cms_sequence", TaggedContentInfos),
        ("other_msg_sequence", OtherMsgs),
    ]


class PKIResponse(core.Sequence):  # type: ignore[misc]
    """``PKIResponse`` (RFC 5272 §3.3.1)."""

    _fields = [
        ("control_sequence", TaggedAttributes),
        ("cms_sequence", TaggedContentInfos),
        ("other_msg_sequence", OtherMsgs),
    ]


class PendInfo(core.Sequence):  # type: ignore[misc]
    """``PendInfo ::= SEQUENCE { pendToken OCTET STRING, pendTime GeneralizedTime }``
    (RFC 5272 §6.1.1)."""

    _fields = [("pend_token", core.OctetString), ("pend_time", core.GeneralizedTime)]


class BodyPartPath(core.SequenceOf):  # type: ignore[misc]
    """``BodyPartPath ::= SEQUENCE SIZE (1..MAX) OF BodyPartID`` (RFC 5272 §3.2.2)."""

    _child_spec = BodyPartID


class BodyPartReference(core.Choice):  # type: ignore[misc]
    """``BodyPartReference ::= CHOICE { bodyPartID, bodyPartPath }`` (RFC 5272 §3.2.2)."""

    _alternatives = [("body_part_id", BodyPartID), ("body_part_path", BodyPartPath)]


class BodyPartReferences(core.SequenceOf):  # type: ignore[misc]
    _child_spec = BodyPartReference


class ExtendedFailInfo(core.Sequence):  # type: ignore[misc]
    """``extendedFailInfo [1] SEQUENCE { failInfoOID, failInfoValue }`` (RFC 6402 §2.6)."""

    _fields = [("fail_info_oid", core.ObjectIdentifier), ("fail_info_value", core.Any)]


class OtherStatusInfo(core.Choice):  # type: ignore[misc]
    """``OtherStatusInfo ::= CHOICE { failInfo, pendInfo, extendedFailInfo [1] }`` (RFC 5272
    §6.1.1 as updated by RFC 6402 §2.6)."""

    _alternatives = [
        ("fail_info", core.Integer),
        ("pend_info", PendInfo),
        ("extended_fail_info", ExtendedFailInfo, {"implicit": 1}),
    ]


class CMCStatusInfoV2(core.Sequence):  # type: ignore[misc]
    """``CMCStatusInfoV2`` (RFC 5272 §6.1.1)."""

    _fields = [
        ("cmc_status", core.Integer),
        ("body_list", BodyPartReferences),
        ("status_string", core.UTF8String, {"optional": True}),
        ("other_info", OtherStatusInfo, {"optional": True}),
    ]


# --- request facts ----------------------------------------------------------------------------


class CmcError(Exception):
    """A Full PKI Request this server refuses, with the CMC answer it gets (RFC 5272 §6.1.4)."""

    def __init__(self, detail: str, *, status: Status = Status.FAILED,
                 fail_info: FailInfo = FailInfo.BAD_REQUEST, body_part: int = 0) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.fail_info = fail_info
        self.body_part = body_part


@dataclass(frozen=True)
class CmcRequest:
    """What a Full PKI Request asks: one PKCS#10 request and the controls it carries."""

    body_part_id: int
    csr_der: bytes
    transaction_id: int | None = None
    sender_nonce: bytes | None = None
    signed: bool = False
    signer: x509.Certificate | None = None  # None on a signed request: signed by the request key


#: Controls a client may send that this server understands (RFC 5272 §6.6, §6.6 nonces).
_HANDLED = {Control.TRANSACTION_ID, Control.SENDER_NONCE, Control.REG_INFO}


def _load(spec: Any, der: bytes) -> Any:
    value = spec.load(der, strict=True)
    if isinstance(value, (core.Sequence, core.SequenceOf)):
        value._parse_children(recurse=True)  # the whole structure, here (ANY contents stay opaque)
    else:
        value.native  # noqa: B018 - force parsing here
    return value


def _unwrap(der: bytes) -> tuple[bytes, cms.SignedData | None]:
    """The PKIData DER inside ``der`` and the SignedData around it, if any."""
    outer = _ContentInfo.load(der, strict=True)
    ctype = outer["content_type"].dotted
    if ctype == ID_CCT_PKI_DATA:
        return bytes(parser.parse(outer["content"].dump())[4]), None  # inside [0] EXPLICIT
    if ctype != _SIGNED_DATA:
        raise CmcError(f"content type {ctype} is neither id-cct-PKIData nor SignedData (RFC 5272 §3.2)")
    sd = _load(cms.ContentInfo, der)["content"]
    encap = sd["encap_content_info"]
    if encap["content_type"].dotted != ID_CCT_PKI_DATA:
        raise CmcError("the SignedData does not encapsulate id-cct-PKIData (RFC 5272 §3.2); "
                       "nested CMS content is not accepted")
    content = encap["content"]
    if isinstance(content, core.Void) or content is None:
        raise CmcError("the SignedData carries no PKIData (detached content is not accepted)")
    return bytes(content.native), sd


def parse_request(der: bytes) -> CmcRequest:
    """Parse gate for a Full PKI Request (RFC 5272 §3.2): every failure is a :class:`CmcError`.

    Rules: exactly one TaggedRequest, a PKCS#10 one (``tcr``); no cmsSequence or
    otherMsgSequence; body part IDs unique and non-zero (RFC 5272 §3.2.2); every control
    understood, or the request fails (RFC 5272 §3.2.1.1: controls are not ignored)."""
    try:
        pki_der, sd = _unwrap(der)
        pki = _load(PKIData, pki_der)
    except CmcError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
        raise CmcError("the body is not a DER ContentInfo holding a PKIData (RFC 5272 §3.2)") from None
    controls = list(pki["control_sequence"])
    requests = list(pki["req_sequence"])
    cmss = list(pki["cms_sequence"])
    others = list(pki["other_msg_sequence"])
    if len(controls) + len(requests) + len(cmss) + len(others) > MAX_BODY_PARTS:
        raise CmcError(f"more than {MAX_BODY_PARTS} body parts")
    seen: set[int] = set()
    for part in (*controls, *cmss, *others):
        _body_part(part["body_part_id"].native, seen)
    req_ids = []
    for req in requests:
        req_ids.append(_body_part(req.chosen["body_part_id"].native, seen))
    if cmss:
        raise CmcError("cmsSequence is not supported (no nested CMS content)", status=Status.NO_SUPPORT,
                       body_part=cmss[0]["body_part_id"].native)
    if others:
        raise CmcError("otherMsgSequence is not supported", status=Status.NO_SUPPORT,
                       body_part=others[0]["body_part_id"].native)
    if len(requests) != 1:
        raise CmcError(f"exactly one TaggedRequest is accepted, not {len(requests)} (RFC 7030 §4.3)")
    req = requests[0]
    if req.name != "tcr":
        raise CmcError("only PKCS#10 requests (tcr) are supported", status=Status.NO_SUPPORT,
                       body_part=req_ids[0])
    transaction_id = sender_nonce = None
    for ctl in controls:
        oid = ctl["attr_type"].dotted
        bpid = ctl["body_part_id"].native
        try:
            control = Control(oid)
        except ValueError:
            raise CmcError(f"unknown control {oid}", fail_info=FailInfo.BAD_REQUEST, body_part=bpid) from None
        if control not in _HANDLED:
            raise CmcError(f"control {control.name} is not supported by this server", status=Status.NO_SUPPORT,
                           body_part=bpid)
        values = list(ctl["attr_values"])
        if len(values) != 1:
            raise CmcError(f"control {control.name} must carry exactly one value", body_part=bpid)
        try:
            if control is Control.TRANSACTION_ID:
                if transaction_id is not None:
                    raise CmcError("transactionId appears twice", body_part=bpid)
                transaction_id = int(_load(core.Integer, values[0].dump()).native)
                if transaction_id < 0:
                    raise CmcError("transactionId must not be negative", body_part=bpid)
            elif control is Control.SENDER_NONCE:
                if sender_nonce is not None:
                    raise CmcError("senderNonce appears twice", body_part=bpid)
                sender_nonce = bytes(_load(core.OctetString, values[0].dump()).native)
                if len(sender_nonce) > 64:
                    raise CmcError("senderNonce longer than 64 bytes", body_part=bpid)
        except CmcError:
            raise
        except (ValueError, TypeError):
            raise CmcError(f"control {control.name} does not parse", body_part=bpid) from None
    csr_der = bytes(req.chosen["certification_request"].dump())
    signer = None
    if sd is not None:
        signer = _verify(sd, pki_der, csr_der)
    return CmcRequest(req_ids[0], csr_der, transaction_id, sender_nonce, sd is not None, signer)


def _body_part(value: int, seen: set[int]) -> int:
    if value <= 0 or value > 0xFFFFFFFF:
        raise CmcError(f"bodyPartID {value} out of range (1..4294967295; 0 names the PKIData, RFC 5272 §3.2.2)")
    if value in seen:
        raise CmcError(f"bodyPartID {value} is used twice (RFC 5272 §3.2.2)", body_part=value)
    seen.add(value)
    return value


def _verify(sd: cms.SignedData, content: bytes, csr_der: bytes) -> x509.Certificate | None:
    """RFC 5272 §3.2.1 / RFC 5652 §5.6: one SignerInfo, signed attributes with the content type
    and message digest, signed by a certificate in the SignedData or by the request's own key
    (identified by subjectKeyIdentifier). Returns the signer certificate (None: the request key)."""
    infos = list(sd["signer_infos"])
    if len(infos) != 1:
        raise CmcError("the SignedData must carry exactly one SignerInfo", fail_info=FailInfo.BAD_MESSAGE_CHECK)
    si = infos[0]
    digest_name = si["digest_algorithm"]["algorithm"].native
    if digest_name not in HASHES:
        raise CmcError(f"digest {digest_name} is not accepted", fail_info=FailInfo.BAD_ALG)
    attrs = si["signed_attrs"]
    if not attrs or isinstance(attrs, core.Void):
        raise CmcError("the SignerInfo carries no signed attributes (RFC 5652 §5.3)",
                       fail_info=FailInfo.BAD_MESSAGE_CHECK)
    digest = ctype = None
    for attr in attrs:
        name = attr["type"].native
        if name == "message_digest":
            digest = bytes(attr["values"][0].native)
        elif name == "content_type":
            ctype = attr["values"][0].dotted
    if ctype != ID_CCT_PKI_DATA:
        raise CmcError("the signed contentType attribute is not id-cct-PKIData", fail_info=FailInfo.BAD_MESSAGE_CHECK)
    if digest is None or digest != hashlib.new(digest_name, content).digest():
        raise CmcError("the messageDigest does not match the PKIData", fail_info=FailInfo.BAD_MESSAGE_CHECK)
    signer: x509.Certificate | None = None
    if si["sid"].name == "issuer_and_serial_number":
        signer = embedded_signer(sd, si["sid"])
        if signer is None:
            raise CmcError("the signer certificate is not in the SignedData", fail_info=FailInfo.BAD_MESSAGE_CHECK)
        key: Any = signer.public_key()
    else:
        key = x509.load_der_x509_csr(csr_der).public_key()
    try:
        verify_signer_info(key, si, digest_name)
    except UnsupportedSignerKey:
        raise CmcError("unsupported signer key", fail_info=FailInfo.BAD_ALG) from None
    except (InvalidSignature, KeyError, ValueError, TypeError):
        raise CmcError("the SignedData signature does not verify", fail_info=FailInfo.BAD_MESSAGE_CHECK) from None
    return signer


# --- response ---------------------------------------------------------------------------------


def _attr(body_part: int, control: Control, value: Any) -> TaggedAttribute:
    return TaggedAttribute({"body_part_id": body_part, "attr_type": control.value, "attr_values": [value]})


def build_response(
    status: Status,
    body_part: int,
    *,
    certificates: Sequence[x509.Certificate] = (),
    status_string: str | None = None,
    fail_info: FailInfo | None = None,
    pend_token: bytes | None = None,
    pend_time: dt.datetime | None = None,
    transaction_id: int | None = None,
    recipient_nonce: bytes | None = None,
) -> bytes:
    """DER ContentInfo(SignedData(PKIResponse)) with a CMCStatusInfoV2 for ``body_part``,
    the transactionId echoed and the client's senderNonce as recipientNonce (RFC 5272 §3.3,
    §6.1, §6.6); certificates in ``SignedData.certificates`` (RFC 5272 §3.3.1)."""
    info: dict[str, Any] = {"cmc_status": int(status), "body_list": [BodyPartReference({"body_part_id": body_part})]}
    if status_string:
        info["status_string"] = status_string[:200]
    if fail_info is not None:
        info["other_info"] = OtherStatusInfo({"fail_info": int(fail_info)})
    elif pend_token is not None and pend_time is not None:
        info["other_info"] = OtherStatusInfo({"pend_info": PendInfo({
            "pend_token": pend_token, "pend_time": pend_time.replace(microsecond=0)})})
    controls = [_attr(1, Control.STATUS_INFO_V2, CMCStatusInfoV2(info))]
    next_id = 2
    if transaction_id is not None:
        controls.append(_attr(next_id, Control.TRANSACTION_ID, core.Integer(transaction_id)))
        next_id += 1
    if recipient_nonce is not None:
        controls.append(_attr(next_id, Control.RECIPIENT_NONCE, core.OctetString(recipient_nonce)))
    response = PKIResponse({"control_sequence": controls, "cms_sequence": [], "other_msg_sequence": []})
    sd = cms.SignedData({
        "version": "v3",  # RFC 5652 §5.1: eContentType other than id-data
        "digest_algorithms": [],
        "encap_content_info": {"content_type": ID_CCT_PKI_RESPONSE,
                               "content": core.ParsableOctetString(response.dump())},
        "certificates": [ax509.Certificate.load(c.public_bytes(Encoding.DER)) for c in certificates] or None,
        "signer_infos": [],
    })
    if not certificates:
        del sd["certificates"]
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": sd}).dump())


@dataclass(frozen=True)
class CmcResponse:
    """A decoded PKIResponse (for the client and tests)."""

    status: Status
    body_list: tuple[int, ...]
    status_string: str | None
    fail_info: int | None
    pend_token: bytes | None
    transaction_id: int | None
    recipient_nonce: bytes | None
    certificates: tuple[x509.Certificate, ...]


def parse_response(der: bytes) -> CmcResponse:
    """Read a Full PKI Response (RFC 5272 §3.3); raises ValueError on anything else."""
    info = _load(cms.ContentInfo, der)
    if info["content_type"].dotted != _SIGNED_DATA:
        raise ValueError("not a SignedData")
    sd = info["content"]
    if sd["encap_content_info"]["content_type"].dotted != ID_CCT_PKI_RESPONSE:
        raise ValueError("the SignedData does not carry id-cct-PKIResponse")
    resp = _load(PKIResponse, bytes(sd["encap_content_info"]["content"].native))
    status_info = None
    tid = nonce = None
    for ctl in resp["control_sequence"]:
        oid = ctl["attr_type"].dotted
        value = ctl["attr_values"][0].dump()
        if oid == Control.STATUS_INFO_V2.value:
            status_info = _load(CMCStatusInfoV2, value)
        elif oid == Control.TRANSACTION_ID.value:
            tid = int(_load(core.Integer, value).native)
        elif oid == Control.RECIPIENT_NONCE.value:
            nonce = bytes(_load(core.OctetString, value).native)
    if status_info is None:
        raise ValueError("no CMCStatusInfoV2 control")
    other = status_info["other_info"]
    fail = pend = None
    if not isinstance(other, core.Void) and other is not None and other.name:
        if other.name == "fail_info":
            fail = int(other.chosen.native)
        elif other.name == "pend_info":
            pend = bytes(other.chosen["pend_token"].native)
    certs = tuple(x509.load_der_x509_certificate(bytes(c.chosen.dump()))
                  for c in (sd["certificates"] or []) if c.name == "certificate")
    ss = status_info["status_string"]
    return CmcResponse(Status(int(status_info["cmc_status"].native)),
                       tuple(int(r.chosen.native) if r.name == "body_part_id" else 0 for r in status_info["body_list"]),
                       None if isinstance(ss, core.Void) else str(ss.native), fail, pend, tid, nonce, certs)


def build_request(csr_der: bytes, *, body_part_id: int = 1, transaction_id: int | None = None,
                  sender_nonce: bytes | None = None) -> bytes:
    """An unsigned Full PKI Request: ContentInfo(id-cct-PKIData) with one PKCS#10 request
    (RFC 5272 §3.2; RFC 7030 §4.3.1 leaves signing to the TLS client authentication)."""
    controls = []
    next_id = body_part_id + 1
    if transaction_id is not None:
        controls.append(_attr(next_id, Control.TRANSACTION_ID, core.Integer(transaction_id)))
        next_id += 1
    if sender_nonce is not None:
        controls.append(_attr(next_id, Control.SENDER_NONCE, core.OctetString(sender_nonce)))
    tcr = TaggedCertificationRequest({"body_part_id": body_part_id,
                                      "certification_request": acsr.CertificationRequest.load(csr_der)})
    pki = PKIData({"control_sequence": controls, "req_sequence": [TaggedRequest({"tcr": tcr})],
                   "cms_sequence": [], "other_msg_sequence": []})
    return bytes(_PKIDataInfo({"content_type": ID_CCT_PKI_DATA, "content": pki}).dump())


class _PKIDataInfo(core.Sequence):  # type: ignore[misc]
    """ContentInfo (RFC 5652 §3) holding an unsigned PKIData (RFC 5272 §3.2), for writing."""

    _fields = [("content_type", core.ObjectIdentifier), ("content", PKIData, {"explicit": 0})]


# --- mapping to and from the core -------------------------------------------------------------

_FAIL_INFO = {
    RejectReason.BAD_REQUEST: FailInfo.BAD_REQUEST,
    RejectReason.BAD_ALG: FailInfo.BAD_ALG,
    RejectReason.BAD_MESSAGE_CHECK: FailInfo.BAD_MESSAGE_CHECK,
    RejectReason.BAD_CERT_ID: FailInfo.BAD_CERT_ID,
    RejectReason.NOT_AUTHORIZED: FailInfo.BAD_IDENTITY,
    RejectReason.UNAUTHENTICATED: FailInfo.BAD_IDENTITY,
    RejectReason.POLICY: FailInfo.BAD_REQUEST,
    RejectReason.REJECTED: FailInfo.BAD_REQUEST,
    RejectReason.UNAVAILABLE: FailInfo.INTERNAL_CA_ERROR,
    RejectReason.THROTTLED: FailInfo.TRY_LATER,
}


def fail_info_for(reason: RejectReason) -> FailInfo:
    """The CMCFailInfo (RFC 5272 §6.1.4) for a core refusal."""
    return _FAIL_INFO.get(reason, FailInfo.BAD_REQUEST)


def failure_response(err: CmcError, req: CmcRequest | None) -> bytes:
    """The PKIResponse for a request refused before issuance (RFC 5272 §6.1.4): failed with a
    failInfo, or noSupport; the transactionId and senderNonce echoed when they were read."""
    return build_response(err.status, err.body_part or (req.body_part_id if req else 0),
                          status_string=err.detail,
                          fail_info=err.fail_info if err.status is Status.FAILED else None,
                          transaction_id=req.transaction_id if req else None,
                          recipient_nonce=req.sender_nonce if req else None)


def scoped_transaction_id(transaction_id: int, user: str | None, certificate: x509.Certificate | None) -> str:
    """The core's transaction id for a CMC transactionId (RFC 5272 §6.6): scoped to who
    authenticated, so two clients that pick the same number never meet (``cmc:`` + digest)."""
    who = hashlib.sha256()
    who.update((user or "").encode() + b"\0")
    if certificate is not None:
        who.update(certificate.fingerprint(hashes.SHA256()))
    who.update(b"\0" + str(transaction_id).encode())
    return "cmc:" + who.hexdigest()[:40]
