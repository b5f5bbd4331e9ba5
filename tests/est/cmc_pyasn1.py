"""Full PKI Requests built, and PKIResponses decoded, with pyasn1-alt-modules (rfc5652, rfc6402):
an ASN.1 encoder maintained outside this project by an author of the CMC RFCs."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5280, rfc5652, rfc6402

TRANSACTION_ID = rfc6402.id_cmc_transactionId
SENDER_NONCE = rfc6402.id_cmc_senderNonce
IDENTIFICATION = rfc6402.id_cmc_identification


def control(bpid: int, oid: univ.ObjectIdentifier, value: Any) -> rfc6402.TaggedAttribute:
    attr = rfc6402.TaggedAttribute()
    attr["bodyPartID"] = bpid
    attr["attrType"] = oid
    attr["attrValues"].append(encoder.encode(value))
    return attr


def pkcs10_request(bpid: int, csr: x509.CertificationRequest) -> rfc6402.TaggedRequest:
    der = csr.public_bytes(serialization.Encoding.DER)
    decoded, _ = decoder.decode(der, asn1Spec=rfc6402.CertificationRequest())
    req = rfc6402.TaggedRequest()
    tcr = req["tcr"]
    tcr["bodyPartID"] = bpid
    tcr["certificationRequest"] = decoded
    return req


def pki_data(controls: Sequence[rfc6402.TaggedAttribute], requests: Sequence[rfc6402.TaggedRequest],
             cms: Sequence[tuple[int, bytes]] = ()) -> bytes:
    pki = rfc6402.PKIData()
    for c in controls:
        pki["controlSequence"].append(c)
    for r in requests:
        pki["reqSequence"].append(r)
    for bpid, content_info in cms:
        tci = rfc6402.TaggedContentInfo()
        tci["bodyPartID"] = bpid
        tci["contentInfo"], _ = decoder.decode(content_info, asn1Spec=rfc5652.ContentInfo())
        pki["cmsSequence"].append(tci)
    pki["otherMsgSequence"].clear()
    return encoder.encode(pki)


def unsigned(pki_der: bytes) -> bytes:
    info = rfc5652.ContentInfo()
    info["contentType"] = rfc6402.id_cct_PKIData
    info["content"] = univ.Any(pki_der)
    return encoder.encode(info)


def signed(pki_der: bytes, key: ec.EllipticCurvePrivateKey, *, cert: x509.Certificate | None = None,
           econtent_type: univ.ObjectIdentifier = rfc6402.id_cct_PKIData) -> bytes:
    """SignedData over ``pki_der`` (RFC 5652 §5), ECDSA-SHA256 with signed attributes; the sid
    names ``cert`` (issuerAndSerialNumber, certificate included) or the key (subjectKeyIdentifier)."""
    sd = rfc5652.SignedData()
    sd["version"] = 3
    alg = rfc5280.AlgorithmIdentifier()
    alg["algorithm"] = rfc5280.univ.ObjectIdentifier("2.16.840.1.101.3.4.2.1")
    sd["digestAlgorithms"].append(alg)
    sd["encapContentInfo"]["eContentType"] = econtent_type
    sd["encapContentInfo"]["eContent"] = pki_der
    si = rfc5652.SignerInfo()
    if cert is not None:
        si["version"] = 1
        ias = si["sid"]["issuerAndSerialNumber"]
        ias["issuer"], _ = decoder.decode(cert.issuer.public_bytes(), asn1Spec=rfc5280.Name())
        ias["serialNumber"] = cert.serial_number
        cert_choice = rfc5652.CertificateChoices()
        cert_choice["certificate"], _ = decoder.decode(cert.public_bytes(serialization.Encoding.DER),
                                                       asn1Spec=rfc5280.Certificate())
        sd["certificates"].append(cert_choice)
    else:
        si["version"] = 3
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
        si["sid"]["subjectKeyIdentifier"] = ski
    si["digestAlgorithm"] = alg
    attrs = si["signedAttrs"]
    ct = rfc5652.Attribute()
    ct["attrType"] = rfc5652.id_contentType
    ct["attrValues"].append(econtent_type)
    md = rfc5652.Attribute()
    md["attrType"] = rfc5652.id_messageDigest
    md["attrValues"].append(univ.OctetString(hashlib.sha256(pki_der).digest()))
    attrs.append(ct)
    attrs.append(md)
    to_sign = _signed_attrs_der(ct, md)
    sig_alg = rfc5280.AlgorithmIdentifier()
    sig_alg["algorithm"] = univ.ObjectIdentifier("1.2.840.10045.4.3.2")
    si["signatureAlgorithm"] = sig_alg
    si["signature"] = key.sign(to_sign, ec.ECDSA(hashes.SHA256()))
    sd["signerInfos"].append(si)
    info = rfc5652.ContentInfo()
    info["contentType"] = rfc5652.id_signedData
    info["content"] = univ.Any(encoder.encode(sd))
    return encoder.encode(info)


def _signed_attrs_der(*attrs: rfc5652.Attribute) -> bytes:
    """RFC 5652 §5.4: the signature covers the DER of the attributes as a SET OF."""
    s = univ.SetOf(componentType=rfc5652.Attribute())
    for i, a in enumerate(attrs):
        s[i] = a
    return encoder.encode(s)


@dataclass
class Response:
    status: int
    body_list: list[int]
    status_string: str | None
    fail_info: int | None
    pend_token: bytes | None
    transaction_id: int | None
    recipient_nonce: bytes | None
    certificates: list[x509.Certificate]
    signer_infos: int


def decode_response(der: bytes) -> Response:
    """Decode a Full PKI Response with pyasn1-alt-modules only."""
    info, rest = decoder.decode(der, asn1Spec=rfc5652.ContentInfo())
    assert not rest and info["contentType"] == rfc5652.id_signedData
    sd, _ = decoder.decode(info["content"], asn1Spec=rfc5652.SignedData())
    assert sd["encapContentInfo"]["eContentType"] == rfc6402.id_cct_PKIResponse
    resp, _ = decoder.decode(sd["encapContentInfo"]["eContent"], asn1Spec=rfc6402.PKIResponse())
    out = Response(-1, [], None, None, None, None, None, [], len(sd["signerInfos"]))
    for ctl in resp["controlSequence"]:
        value = ctl["attrValues"][0]
        if ctl["attrType"] == rfc6402.id_cmc_statusInfoV2:
            st, _ = decoder.decode(value, asn1Spec=rfc6402.CMCStatusInfoV2())
            out.status = int(st["cMCStatus"])
            out.body_list = [int(r["bodyPartID"]) for r in st["bodyList"]]
            if st["statusString"].isValue:
                out.status_string = str(st["statusString"])
            other = st["otherInfo"]
            if other.isValue:
                if other.getName() == "failInfo":
                    out.fail_info = int(other["failInfo"])
                elif other.getName() == "pendInfo":
                    out.pend_token = bytes(other["pendInfo"]["pendToken"])
        elif ctl["attrType"] == rfc6402.id_cmc_transactionId:
            out.transaction_id = int(decoder.decode(value, asn1Spec=univ.Integer())[0])
        elif ctl["attrType"] == rfc6402.id_cmc_recipientNonce:
            out.recipient_nonce = bytes(decoder.decode(value, asn1Spec=univ.OctetString())[0])
    if sd["certificates"].isValue:
        for choice in sd["certificates"]:
            out.certificates.append(x509.load_der_x509_certificate(encoder.encode(choice["certificate"])))
    return out
