"""The suite's own Full PKI Request writer and Full PKI Response reader (RFC 5272 §3.2-3.3,
§6.1, §6.6; RFC 6402), independent of the server code: enough to send one PKCS#10 request with
a transactionId and senderNonce and to judge the answer."""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import cms, core
from cryptography import x509

from conformance import ber

ID_CCT_PKI_DATA = "1.3.6.1.5.5.7.12.2"
ID_CCT_PKI_RESPONSE = "1.3.6.1.5.5.7.12.3"
ID_CMC_STATUS_INFO_V2 = "1.3.6.1.5.5.7.7.25"
ID_CMC_TRANSACTION_ID = "1.3.6.1.5.5.7.7.5"
ID_CMC_SENDER_NONCE = "1.3.6.1.5.5.7.7.6"
ID_CMC_RECIPIENT_NONCE = "1.3.6.1.5.5.7.7.7"
STATUS_NAMES = {0: "success", 2: "failed", 3: "pending", 4: "noSupport", 5: "confirmRequired",
                6: "popRequired", 7: "partial"}


class CmcMessageError(Exception):
    """The answer is not a Full PKI Response."""


def _seq(*parts: bytes) -> bytes:
    return ber.tlv(0x30, b"".join(parts))


def _int(value: int) -> bytes:
    return bytes(core.Integer(value).dump())


def _control(bpid: int, oid: str, value_der: bytes) -> bytes:
    # TaggedAttribute ::= SEQUENCE { bodyPartID, attrType, attrValues SET OF } (RFC 5272 §3.2.1.1)
    return _seq(_int(bpid), ber.oid(oid), ber.tlv(0x31, value_der))


def full_pki_request(csr_der: bytes, transaction_id: int, sender_nonce: bytes) -> bytes:
    """ContentInfo { id-cct-PKIData, [0] PKIData } with controls transactionId (body part 2),
    senderNonce (3) and one TaggedRequest tcr [0] IMPLICIT { bodyPartID 1, the CSR }."""
    controls = _seq(_control(2, ID_CMC_TRANSACTION_ID, _int(transaction_id)),
                    _control(3, ID_CMC_SENDER_NONCE, bytes(core.OctetString(sender_nonce).dump())))
    tcr = ber.tlv(0xA0, _int(1) + csr_der)
    pki = _seq(controls, _seq(tcr), _seq(), _seq())
    return _seq(ber.oid(ID_CCT_PKI_DATA), ber.tlv(0xA0, pki))


@dataclass(frozen=True)
class CmcAnswer:
    status: int
    fail_info: int | None
    transaction_id: int | None
    recipient_nonce: bytes | None
    certificates: tuple[x509.Certificate, ...]

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, str(self.status))


def read_full_pki_response(der: bytes) -> CmcAnswer:
    """Status, failInfo, echoed controls and certificates of a ContentInfo(SignedData(PKIResponse))."""
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise CmcMessageError(f"content type {info['content_type'].dotted}, not SignedData")
        sd = info["content"]
        encap = sd["encap_content_info"]
        if encap["content_type"].dotted != ID_CCT_PKI_RESPONSE:
            raise CmcMessageError(f"eContentType {encap['content_type'].dotted}, not id-cct-PKIResponse")
        response = bytes(encap["content"].native)
        control_seq = ber.children(response)[0]
        status = fail = tid = None
        nonce = None
        for ctl in ber.children(control_seq):
            _bpid, oid_der, values = ber.children(ctl)
            oid = core.ObjectIdentifier.load(oid_der).dotted
            value = ber.children(values)[0]
            if oid == ID_CMC_STATUS_INFO_V2:
                fields = ber.children(value)
                status = int(core.Integer.load(fields[0]).native)
                for extra in fields[2:]:
                    if extra[0] == 0x02:  # OtherStatusInfo failInfo CMCFailInfo (INTEGER)
                        fail = int(core.Integer.load(extra).native)
            elif oid == ID_CMC_TRANSACTION_ID:
                tid = int(core.Integer.load(value).native)
            elif oid == ID_CMC_RECIPIENT_NONCE:
                nonce = bytes(core.OctetString.load(value).native)
        if status is None:
            raise CmcMessageError("no CMCStatusInfoV2 control (RFC 5272 §6.1)")
        certs = tuple(x509.load_der_x509_certificate(bytes(c.chosen.dump()))
                      for c in (sd["certificates"] or []) if c.name == "certificate")
    except CmcMessageError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise CmcMessageError(f"not a Full PKI Response: {exc}") from None
    return CmcAnswer(status, fail, tid, nonce, certs)
