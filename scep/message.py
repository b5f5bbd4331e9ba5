"""SCEP messages as frozen dataclasses: pkiMessage requests and CertRep (RFC 8894 §3.2, §3.3).

Bytes in, objects out: :meth:`PkiMessage.parse` / :meth:`CertRep.parse` read the outer
SignedData and its SCEP attributes (no verification yet, so that a reply can still be built
for a message that fails its checks); ``verify()`` and ``open()`` do the cryptography.
``build()`` produces DER.

messageData inside the pkcsPKIEnvelope (RFC 8894 §3.3):

=====================  ===============================
PKCSReq 19, Renewal 17  PKCS#10 CSR (:func:`decode_csr`)
CertPoll 20             IssuerAndSubject
GetCert 21, GetCRL 22   IssuerAndSerialNumber
CertRep 3 SUCCESS       degenerate certs-only SignedData
=====================  ===============================
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from asn1crypto import cms as acms
from asn1crypto import x509 as ax509
from cryptography import x509

from ca import cms_der
from scep import cms
from scep.asn1 import (
    OID_FAIL_INFO,
    OID_FAIL_INFO_TEXT,
    OID_MESSAGE_TYPE,
    OID_PKI_STATUS,
    OID_RECIPIENT_NONCE,
    OID_SENDER_NONCE,
    OID_TRANSACTION_ID,
)
from scep.asn1 import FailInfo, IssuerAndSubject as _AsnIssuerAndSubject, MessageType, PkiStatus
from scep.errors import BadRequestError, ScepDecodeError

NONCE_BYTES = 16  # RFC 8894 §3.2.1.5
MAX_TRANSACTION_ID = 128


def new_nonce() -> bytes:
    """A fresh 16-byte senderNonce (RFC 8894 §3.2.1.5)."""
    return os.urandom(NONCE_BYTES)


def _single_value(name: str, sm: cms.SignedMessage, kind: str, *, required: bool) -> tuple[object] | None:
    """The one value of a SCEP signed attribute (RFC 8894 §3.2.1), decoded; None if absent."""
    values = sm.attribute_values(name)
    if not values:
        if required:
            raise ScepDecodeError(f"missing {name}")
        return None
    if len(values) != 1:
        raise ScepDecodeError(f"{name} must have exactly one value")
    try:
        return (values[0].native,)
    except Exception:  # noqa: BLE001
        raise ScepDecodeError(f"{name} is not {kind}") from None


def _printable(name: str, sm: cms.SignedMessage, *, required: bool = True) -> str | None:
    got = _single_value(name, sm, "a PrintableString", required=required)
    if got is None:
        return None
    if not isinstance(got[0], str):
        raise ScepDecodeError(f"{name} is not a string")
    return got[0]


def _octets(name: str, sm: cms.SignedMessage, *, required: bool = True) -> bytes | None:
    got = _single_value(name, sm, "an OCTET STRING", required=required)
    if got is None:
        return None
    if not isinstance(got[0], bytes) or not 1 <= len(got[0]) <= 64:
        raise ScepDecodeError(f"{name} has a bad length")
    return got[0]


#: SCEP signed attributes (RFC 8894 §3.2.1): asn1crypto name -> (OID, value encoder)
_ATTRIBUTES = {
    "scep_message_type": (OID_MESSAGE_TYPE, cms_der.printable_string),
    "scep_pki_status": (OID_PKI_STATUS, cms_der.printable_string),
    "scep_fail_info": (OID_FAIL_INFO, cms_der.printable_string),
    "scep_transaction_id": (OID_TRANSACTION_ID, cms_der.printable_string),
    "scep_fail_info_text": (OID_FAIL_INFO_TEXT, cms_der.utf8_string),
    "scep_sender_nonce": (OID_SENDER_NONCE, cms_der.octet_string),
    "scep_recipient_nonce": (OID_RECIPIENT_NONCE, cms_der.octet_string),
}


def _attr(name: str, value: str | bytes) -> bytes:
    """One SCEP signed attribute in DER (RFC 8894 §3.2.1): PrintableString, UTF8String
    (failInfoText) or OCTET STRING (nonces)."""
    oid, encode = _ATTRIBUTES[name]
    return cms.attribute(oid, encode(value))  # type: ignore[operator]


# --- messageData payloads --------------------------------------------------------------------


def _name_to_asn(name: x509.Name) -> ax509.Name:
    return ax509.Name.load(name.public_bytes())


def _name_via_cert(der: bytes) -> x509.Name:
    """A DER Name as a cryptography Name (cryptography has no public Name loader)."""
    asn = ax509.Name.load(der)
    rdns: list[x509.RelativeDistinguishedName] = []
    for rdn in asn.chosen:
        attrs = []
        for ava in rdn:
            oid = x509.ObjectIdentifier(ava["type"].dotted)
            value = ava["value"].native
            if not isinstance(value, str):
                value = str(value)
            attrs.append(x509.NameAttribute(oid, value, _string_type(ava["value"])))
        rdns.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(rdns)


def _string_type(value: object) -> x509.name._ASN1Type:
    from asn1crypto import core

    mapping = {
        core.PrintableString: x509.name._ASN1Type.PrintableString,
        core.UTF8String: x509.name._ASN1Type.UTF8String,
        core.IA5String: x509.name._ASN1Type.IA5String,
        core.BMPString: x509.name._ASN1Type.BMPString,
        core.TeletexString: x509.name._ASN1Type.T61String,
        core.UniversalString: x509.name._ASN1Type.UniversalString,
    }
    chosen = getattr(value, "chosen", value)
    for cls, t in mapping.items():
        if isinstance(chosen, cls):
            return t
    return x509.name._ASN1Type.UTF8String


@dataclass(frozen=True)
class IssuerAndSerial:
    """IssuerAndSerialNumber (RFC 5652 §10.2.4): GetCert and GetCRL messageData (RFC 8894 §3.3.4)."""

    issuer: x509.Name
    serial: int

    def to_der(self) -> bytes:
        """DER encoding."""
        return bytes(
            acms.IssuerAndSerialNumber(
                {"issuer": _name_to_asn(self.issuer), "serial_number": self.serial}
            ).dump(force=True)
        )

    @classmethod
    def from_der(cls, der: bytes) -> IssuerAndSerial:
        """Parse; raises :class:`BadRequestError` (the envelope opened, so a CertRep follows)."""
        try:
            ias = acms.IssuerAndSerialNumber.load(der, strict=True)
            serial = ias["serial_number"].native
            issuer = _name_via_cert(ias["issuer"].dump())
        except Exception:  # noqa: BLE001
            raise BadRequestError("messageData is not an IssuerAndSerialNumber") from None
        if not isinstance(serial, int):
            raise BadRequestError("bad serial number")
        return cls(issuer=issuer, serial=serial)


@dataclass(frozen=True)
class IssuerAndSubject:
    """CertPoll messageData (RFC 8894 §3.3.3)."""

    issuer: x509.Name
    subject: x509.Name

    def to_der(self) -> bytes:
        """DER encoding."""
        return bytes(
            _AsnIssuerAndSubject(
                {"issuer": _name_to_asn(self.issuer), "subject": _name_to_asn(self.subject)}
            ).dump(force=True)
        )

    @classmethod
    def from_der(cls, der: bytes) -> IssuerAndSubject:
        """Parse; raises :class:`BadRequestError`."""
        try:
            ias = _AsnIssuerAndSubject.load(der, strict=True)
            return cls(
                issuer=_name_via_cert(ias["issuer"].dump()),
                subject=_name_via_cert(ias["subject"].dump()),
            )
        except Exception:  # noqa: BLE001
            raise BadRequestError("messageData is not an IssuerAndSubject") from None


def decode_csr(der: bytes) -> x509.CertificateSigningRequest:
    """PKCSReq/RenewalReq messageData: a PKCS#10 request (RFC 8894 §3.3.1).

    Parsed with cryptography, not asn1crypto: certmonger puts a BMPString friendlyName in its
    CSR that asn1crypto 1.5 rejects.
    """
    try:
        return x509.load_der_x509_csr(der)
    except Exception:  # noqa: BLE001
        raise BadRequestError("messageData is not a PKCS#10 request") from None


def challenge_password(csr: x509.CertificateSigningRequest) -> str | None:
    """The CSR's challengePassword attribute (RFC 2985 §5.4.1), any string type, or None."""
    try:
        attr = csr.attributes.get_attribute_for_oid(x509.oid.AttributeOID.CHALLENGE_PASSWORD)
    except x509.AttributeNotFound:
        return None
    except Exception:  # noqa: BLE001
        return None
    value = attr.value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value)


# --- the request pkiMessage --------------------------------------------------------------------


@dataclass(frozen=True)
class PkiMessage:
    """A client pkiMessage (RFC 8894 §3.2): PKCSReq, RenewalReq, CertPoll, GetCert, GetCRL.

    ``message_type`` is the raw integer: unknown and forbidden types (18) must still parse so
    that the server can answer them with a signed FAILURE.
    """

    message_type: int
    transaction_id: str
    sender_nonce: bytes
    signed: cms.SignedMessage | None = field(default=None, compare=False, repr=False)

    @property
    def known_type(self) -> MessageType | None:
        """The :class:`MessageType`, or None for a number RFC 8894 does not define."""
        try:
            return MessageType(self.message_type)
        except ValueError:
            return None

    @property
    def signer(self) -> x509.Certificate | None:
        """The certificate that signed the request (self-signed or one we issued)."""
        return self.signed.signer if self.signed else None

    @property
    def digest(self) -> str:
        """The client's digest algorithm (mirrored in the reply)."""
        return self.signed.digest if self.signed else "sha256"

    @classmethod
    def parse(cls, der: bytes) -> PkiMessage:
        """Parse a pkiMessage; raises :class:`ScepDecodeError` if it is not one (HTTP 400)."""
        sm = cms.parse_signed(der)
        mtype = _printable("scep_message_type", sm)
        txid = _printable("scep_transaction_id", sm)
        nonce = _octets("scep_sender_nonce", sm)
        assert mtype is not None and txid is not None and nonce is not None
        if not mtype.isdigit() or len(mtype) > 4:
            raise ScepDecodeError("messageType is not a number")
        if not txid or len(txid) > MAX_TRANSACTION_ID:
            raise ScepDecodeError("transactionID empty or too long")
        return cls(message_type=int(mtype), transaction_id=txid, sender_nonce=nonce, signed=sm)

    def verify(self, *, allowed_digests: Collection[str] | None = None) -> None:
        """Check the CMS signature and messageDigest (RFC 8894 §3.2; MessageCheckError)."""
        if self.signed is None:
            raise ScepDecodeError("not a parsed message")
        cms.verify_signed(self.signed, allowed_digests=allowed_digests)

    def open(
        self,
        decrypt: cms.Decrypt,
        recipients: Sequence[x509.Certificate],
        allowed_ciphers: Collection[str],
    ) -> cms.Decrypted:
        """Decrypt the pkcsPKIEnvelope (RFC 8894 §3.2.2)."""
        if self.signed is None:
            raise ScepDecodeError("not a parsed message")
        if self.signed.content is None:
            raise BadRequestError("request without pkcsPKIEnvelope")
        return cms.decrypt_enveloped(self.signed.content, decrypt, recipients, allowed_ciphers)

    def addressed_to(self, cert: x509.Certificate) -> bool:
        """True when the pkcsPKIEnvelope has a RecipientInfo for ``cert`` (RFC 5652 §6.2.1)."""
        if self.signed is None or self.signed.content is None:
            return False
        return cms.addressed_to(self.signed.content, cert)

    def build(
        self,
        message_data: bytes,
        *,
        signer_cert: x509.Certificate,
        sign: cms.Sign,
        recipient: x509.Certificate,
        cipher: str = "aes256",
        digest: str = "sha256",
        key_transport: cms.KeyTransport | None = None,
    ) -> bytes:
        """DER pkiMessage: SignedData over EnvelopedData(message_data) (RFC 8894 §3.2)."""
        envelope = cms.encrypt_enveloped(message_data, recipient, cipher, key_transport)
        attrs = [
            _attr("scep_message_type", str(self.message_type)),
            _attr("scep_transaction_id", self.transaction_id),
            _attr("scep_sender_nonce", self.sender_nonce),
        ]
        return cms.sign_signed_data(envelope, attrs, signer_cert, sign, digest)


# --- CertRep ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertRep:
    """A CertRep (messageType 3, RFC 8894 §3.3.2).

    ``envelope`` is the DER EnvelopedData of a SUCCESS (None for FAILURE/PENDING).
    """

    status: PkiStatus
    transaction_id: str
    recipient_nonce: bytes
    sender_nonce: bytes = field(default_factory=new_nonce)
    fail_info: FailInfo | None = None
    fail_info_text: str | None = None
    envelope: bytes | None = field(default=None, repr=False)
    signed: cms.SignedMessage | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def success_envelope(
        payload: bytes,
        recipient: x509.Certificate,
        cipher: str,
        key_transport: cms.KeyTransport | None = None,
    ) -> bytes:
        """Encrypt a degenerate certs-only payload to the request signer (RFC 8894 §3.3.2)."""
        return cms.encrypt_enveloped(payload, recipient, cipher, key_transport)

    def build(
        self,
        *,
        signer_cert: x509.Certificate,
        sign: cms.Sign,
        digest: str = "sha256",
        certificates: Sequence[x509.Certificate] | None = None,
    ) -> bytes:
        """DER CertRep signed by the RA/CA (rsaEncryption SignerInfo, mirrored digest)."""
        if self.status is PkiStatus.SUCCESS and self.envelope is None:
            raise ValueError("SUCCESS needs an envelope")
        if self.status is PkiStatus.FAILURE and self.fail_info is None:
            raise ValueError("FAILURE needs a failInfo (RFC 8894 §3.2.1.4)")
        attrs = [
            _attr("scep_message_type", str(int(MessageType.CERT_REP))),
            _attr("scep_pki_status", str(int(self.status))),
            _attr("scep_transaction_id", self.transaction_id),
            _attr("scep_sender_nonce", self.sender_nonce),
            _attr("scep_recipient_nonce", self.recipient_nonce),
        ]
        if self.status is PkiStatus.FAILURE and self.fail_info is not None:
            attrs.append(_attr("scep_fail_info", str(int(self.fail_info))))
            if self.fail_info_text:
                attrs.append(_attr("scep_fail_info_text", self.fail_info_text))
        content = self.envelope if self.status is PkiStatus.SUCCESS else None
        return cms.sign_signed_data(content, attrs, signer_cert, sign, digest, certificates)

    @classmethod
    def parse(cls, der: bytes) -> CertRep:
        """Parse a CertRep (client side); raises :class:`ScepDecodeError`."""
        sm = cms.parse_signed(der)
        if _printable("scep_message_type", sm) != str(int(MessageType.CERT_REP)):
            raise ScepDecodeError("not a CertRep")
        status_text = _printable("scep_pki_status", sm)
        try:
            status = PkiStatus(int(status_text or ""))
        except ValueError:
            raise ScepDecodeError("bad pkiStatus") from None
        fail_info: FailInfo | None = None
        fi = _printable("scep_fail_info", sm, required=False)
        if fi is not None:
            try:
                fail_info = FailInfo(int(fi))
            except ValueError:
                raise ScepDecodeError("bad failInfo") from None
        text_values = sm.attribute_values("scep_fail_info_text")
        fit = str(text_values[0].native) if text_values else None
        txid = _printable("scep_transaction_id", sm)
        assert txid is not None
        return cls(
            status=status,
            transaction_id=txid,
            recipient_nonce=_octets("scep_recipient_nonce", sm, required=False) or b"",
            sender_nonce=_octets("scep_sender_nonce", sm, required=False) or b"",
            fail_info=fail_info,
            fail_info_text=fit,
            envelope=sm.content if status is PkiStatus.SUCCESS else None,
            signed=sm,
        )

    def verify(self, trusted_signers: Sequence[x509.Certificate] | None = None) -> None:
        """Verify the signature; with ``trusted_signers`` the signer must be one of them."""
        if self.signed is None:
            raise ScepDecodeError("not a parsed CertRep")
        cms.verify_signed(self.signed)
        if trusted_signers is not None:
            signer = self.signed.signer
            if signer is None or signer.public_key() not in [c.public_key() for c in trusted_signers]:
                from scep.errors import MessageCheckError

                raise MessageCheckError("CertRep not signed by the CA/RA")

    def open(
        self,
        decrypt: cms.Decrypt,
        recipient: x509.Certificate,
        allowed_ciphers: Collection[str] = frozenset(cms.CIPHERS),
    ) -> tuple[list[x509.Certificate], list[x509.CertificateRevocationList]]:
        """Decrypt a SUCCESS and return its certificates (in order) and CRLs."""
        if self.envelope is None:
            raise ScepDecodeError("CertRep has no envelope")
        dec = cms.decrypt_enveloped(self.envelope, decrypt, [recipient], allowed_ciphers)
        return cms.parse_certs_only(dec.plaintext)
