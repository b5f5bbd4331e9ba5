"""What a SCEP answer is made of, apart from the CMS: the exact content types (RFC 8894 §4.2,
§4.3, §4.7), the HTTP-neutral :class:`Reply`, and the failInfo and public failInfoText of each
core refusal (§3.2.1.4, §3.2.1.4.5)."""

from __future__ import annotations

from dataclasses import dataclass

from ca.errors import RejectReason
from scep.asn1 import FailInfo

CT_CA_CERT = "application/x-x509-ca-cert"
CT_CA_RA_CERT = "application/x-x509-ca-ra-cert"
CT_NEXT_CA_CERT = "application/x-x509-next-ca-cert"
CT_PKI_MESSAGE = "application/x-pki-message"


@dataclass(frozen=True)
class Reply:
    """An HTTP-neutral answer: body bytes and the exact content type."""

    body: bytes
    content_type: str


#: The failInfo of each core refusal that has one of its own; every other refusal is badRequest.
_FAIL_INFO = {
    RejectReason.BAD_ALG: FailInfo.BAD_ALG,
    RejectReason.BAD_MESSAGE_CHECK: FailInfo.BAD_MESSAGE_CHECK,
    RejectReason.BAD_CERT_ID: FailInfo.BAD_CERT_ID,
}

#: The failInfoText an anonymous peer may read for each core refusal (RFC 8894 §3.2.1.4.5). The
#: core's detail (which can quote a database or backend error) goes to the log and audit only.
PUBLIC_TEXT = {
    RejectReason.BAD_REQUEST: "bad request",
    RejectReason.BAD_ALG: "algorithm not allowed",
    RejectReason.BAD_MESSAGE_CHECK: "message check failed",
    RejectReason.BAD_CERT_ID: "no matching certificate",
    RejectReason.NOT_AUTHORIZED: "not authorized",
    RejectReason.UNAUTHENTICATED: "not authorized",
    RejectReason.POLICY: "request not allowed by the profile",
    RejectReason.REJECTED: "request rejected",
    RejectReason.UNAVAILABLE: "service unavailable; retry later",
    RejectReason.THROTTLED: "too many failed attempts; retry later",
}


def public_text(reason: RejectReason) -> str:
    """The fixed failInfoText for a core refusal: never the core's internal detail."""
    return PUBLIC_TEXT.get(reason, "bad request")


def fail_info_for(reason: RejectReason) -> FailInfo:
    """The failInfo of a CertRep FAILURE for a core refusal (RFC 8894 §3.2.1.4)."""
    return _FAIL_INFO.get(reason, FailInfo.BAD_REQUEST)
