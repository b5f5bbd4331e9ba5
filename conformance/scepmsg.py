"""SCEP messages built and read by the suite itself (RFC 8894 §3), with asn1crypto structures
and cryptography primitives, independent of the server's and client's code so that a bug shared
by our own client and server cannot hide.

One cohesive thing: both ends of one pkiMessage exchange as the suite sees them, the request it
builds (signed attributes, envelope, SignedData) and the CertRep it reads back (signature,
attributes, envelope, certs-only content), with the one algorithm table both need.

Nothing here does I/O: bytes in, objects out.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any

from asn1crypto import cms, core
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding as sympad, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from conformance import ber

# RFC 8894 §3.2.1: the SCEP signed attributes (id-VeriSign pki attributes).
OID_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
OID_PKI_STATUS = "2.16.840.1.113733.1.9.3"
OID_FAIL_INFO = "2.16.840.1.113733.1.9.4"
OID_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
OID_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
OID_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
OID_FAIL_INFO_TEXT = "1.3.6.1.5.5.7.24.1"
ATTR_NAMES = {OID_MESSAGE_TYPE: "messageType", OID_PKI_STATUS: "pkiStatus", OID_FAIL_INFO: "failInfo",
              OID_SENDER_NONCE: "senderNonce", OID_RECIPIENT_NONCE: "recipientNonce",
              OID_TRANSACTION_ID: "transactionID", OID_FAIL_INFO_TEXT: "failInfoText"}

# RFC 8894 §3.3: message types; §3.2.1.3 pkiStatus; §3.2.1.4 failInfo.
PKCS_REQ, RENEWAL_REQ, CERT_POLL, GET_CERT, GET_CRL, CERT_REP = 19, 17, 20, 21, 22, 3
STATUS_NAMES = {"0": "SUCCESS", "2": "FAILURE", "3": "PENDING"}
FAIL_NAMES = {"0": "badAlg", "1": "badMessageCheck", "2": "badRequest", "3": "badTime", "4": "badCertId"}

# Content-encryption algorithms: capability keyword -> (asn1crypto name, key bytes, block bytes).
CIPHERS: dict[str, tuple[str, int, int]] = {
    "DES": ("des", 8, 8),
    "DES3": ("tripledes_3key", 24, 8),
    "AES-128": ("aes128_cbc", 16, 16),
    "AES-256": ("aes256_cbc", 32, 16),
}
CIPHER_BY_ASN1 = {v[0]: k for k, v in CIPHERS.items()} | {"aes192_cbc": "AES-192"}
DIGESTS: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "MD5": ("md5", hashes.MD5), "SHA-1": ("sha1", hashes.SHA1), "SHA-256": ("sha256", hashes.SHA256),
    "SHA-384": ("sha384", hashes.SHA384), "SHA-512": ("sha512", hashes.SHA512),
}
DIGEST_BY_ASN1 = {v[0]: k for k, v in DIGESTS.items()}


class MessageError(Exception):
    """A reply could not be read; the message says which part, for the evidence."""


def _hash(name: str) -> hashes.HashAlgorithm:
    return DIGESTS[name][1]()


def _ber_octets_at(data: bytes, pos: int) -> tuple[bytes, int]:
    tag, start, length = ber.header(data, pos)
    if not tag & 0x20:
        return data[start:start + length], start + length
    out = b""
    p = start
    while True:
        if length < 0 and data[p:p + 2] == b"\x00\x00":
            return out, p + 2
        if length >= 0 and p >= start + length:
            return out, p
        chunk, p = _ber_octets_at(data, p)
        out += chunk


def ber_octets(tlv: bytes) -> bytes:
    """The value of an OCTET STRING TLV in DER or BER (constructed, indefinite-length) form."""
    return _ber_octets_at(tlv, 0)[0]


def raw_attribute(oid: str, value_der: bytes) -> cms.CMSAttribute:
    """An Attribute with one value given as exact DER (SCEP types are unknown to asn1crypto)."""
    return cms.CMSAttribute.load(ber.tlv(0x30, ber.oid(oid) + ber.tlv(0x31, value_der)))


def printable(text: str) -> bytes:
    """A PrintableString TLV (RFC 8894 §3.2.1: messageType, pkiStatus, failInfo, transactionID)."""
    return ber.tlv(0x13, text.encode("ascii"))


def octets(data: bytes) -> bytes:
    """An OCTET STRING TLV (senderNonce, recipientNonce)."""
    return ber.tlv(0x04, data)


# ------------------------------------------------------------------ identities and CSRs
@dataclass
class Identity:
    """A requester key with a self-signed certificate (RFC 8894 §2.3) or a CA-issued one."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, bits)


def self_signed(key: rsa.RSAPrivateKey, cn: str) -> Identity:
    """The transient self-signed requester certificate of RFC 8894 §2.3."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), True)
            .sign(key, hashes.SHA256()))
    return Identity(key, cert)


def make_csr(key: Any, cn: str, challenge: str | None, *, digest: Any = None,
             o: str | None = None) -> bytes:
    """A PKCS #10 request (DER) with the challengePassword as a PrintableString (RFC 8894 §3.3.1)."""
    from cryptography.x509.name import _ASN1Type
    from cryptography.x509.oid import AttributeOID

    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if o:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o))
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    if challenge is not None:
        b = b.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode(),
                            _tag=_ASN1Type.PrintableString)
    return b.sign(key, digest or hashes.SHA256()).public_bytes(serialization.Encoding.DER)


# ------------------------------------------------------------------ building pkiMessages
def _issuer_and_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    acert = ax509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    return cms.IssuerAndSerialNumber({"issuer": acert.issuer, "serial_number": acert.serial_number})


def _block_cipher(name: str, key: bytes) -> Any:
    if name in ("DES", "DES3"):
        return TripleDES(key * 3 if len(key) == 8 else key)
    return algorithms.AES(key)


def encrypt_content(data: bytes, cipher: str) -> tuple[bytes, bytes, bytes]:
    """(key, iv, ciphertext) with PKCS #7 padding in CBC mode."""
    _, klen, block = CIPHERS[cipher]
    key, iv = os.urandom(klen), os.urandom(block)
    padder = sympad.PKCS7(block * 8).padder()
    padded = padder.update(data) + padder.finalize()
    enc = Cipher(_block_cipher(cipher, key), modes.CBC(iv)).encryptor()
    return key, iv, enc.update(padded) + enc.finalize()


def envelope(data: bytes, recipient: x509.Certificate, cipher: str) -> bytes:
    """pkcsPKIEnvelope (RFC 8894 §3.2.2): EnvelopedData to ``recipient`` with RSA PKCS #1 v1.5
    key transport, primitive encryptedContent, as a ContentInfo in DER."""
    key, iv, ct = encrypt_content(data, cipher)
    pub = recipient.public_key()
    if not isinstance(pub, rsa.RSAPublicKey):
        raise MessageError("the recipient certificate has no RSA key (SCEP key transport needs RSA)")
    ek = pub.encrypt(key, padding.PKCS1v15())
    ed = cms.EnvelopedData({
        "version": "v0",
        "recipient_infos": [cms.RecipientInfo(name="ktri", value=cms.KeyTransRecipientInfo({
            "version": "v0",
            "rid": cms.RecipientIdentifier(name="issuer_and_serial_number", value=_issuer_and_serial(recipient)),
            "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
            "encrypted_key": ek}))],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": CIPHERS[cipher][0], "parameters": core.OctetString(iv)},
            "encrypted_content": ct},
    })
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": ed}).dump())


@dataclass
class Built:
    """A pkiMessage and what the suite needs to judge the reply."""

    der: bytes
    transaction_id: str
    sender_nonce: bytes
    message_type: int
    digest: str
    cipher: str | None


def pki_message(message_type: int, transaction_id: str, signer: Identity, inner: bytes | None, *,
                digest: str = "SHA-256", sender_nonce: bytes | None = None, cipher: str | None = None,
                tamper_signature: bool = False, tamper_content: bool = False,
                message_type_text: str | None = None) -> Built:
    """A signed pkiMessage (RFC 8894 §3.2): SignedData over ``inner`` (already an envelope, or
    None for no content) with contentType, signingTime, messageDigest, messageType,
    transactionID and senderNonce; SignerInfo algorithm rsaEncryption. ``tamper_*`` make the
    negative cases: a flipped signature bit, or content changed after signing."""
    nonce = sender_nonce if sender_nonce is not None else os.urandom(16)
    alg = DIGESTS[digest][0]
    content = inner if inner is not None else b""
    h = hashes.Hash(_hash(digest))
    h.update(content)
    attrs = cms.CMSAttributes([
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute({"type": "signing_time",
                          "values": [cms.Time(name="utc_time", value=dt.datetime.now(dt.timezone.utc))]}),
        cms.CMSAttribute({"type": "message_digest", "values": [h.finalize()]}),
        raw_attribute(OID_MESSAGE_TYPE, printable(message_type_text or str(message_type))),
        raw_attribute(OID_TRANSACTION_ID, printable(transaction_id)),
        raw_attribute(OID_SENDER_NONCE, octets(nonce)),
    ])
    to_sign = attrs.dump()
    signature = signer.key.sign(to_sign, padding.PKCS1v15(), _hash(digest))
    if tamper_signature:
        signature = signature[:-1] + bytes([signature[-1] ^ 0x01])
    if tamper_content and inner is not None:
        content = content[:-1] + bytes([content[-1] ^ 0x01])
    encap: dict[str, Any] = {"content_type": "data"}
    if inner is not None:
        encap["content"] = content
    sd = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [{"algorithm": alg}],
        "encap_content_info": encap,
        "certificates": [cms.CertificateChoices(name="certificate",
                                                value=ax509.Certificate.load(signer.cert_der))],
        "signer_infos": [{
            "version": "v1",
            "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value=_issuer_and_serial(signer.cert)),
            "digest_algorithm": {"algorithm": alg},
            "signed_attrs": attrs,
            "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
            "signature": signature,
        }],
    })
    der = cms.ContentInfo({"content_type": "signed_data", "content": sd}).dump()
    return Built(der, transaction_id, nonce, message_type, digest, cipher)


def issuer_and_serial_der(issuer: x509.Name, serial: int) -> bytes:
    """IssuerAndSerialNumber (GetCert/GetCRL messageData, RFC 8894 §3.3.4)."""
    return bytes(cms.IssuerAndSerialNumber({"issuer": ax509.Name.load(issuer.public_bytes()),
                                            "serial_number": serial}).dump())


def issuer_and_subject_der(issuer: x509.Name, subject: x509.Name) -> bytes:
    """IssuerAndSubject (CertPoll messageData, RFC 8894 §3.3.3)."""
    return ber.tlv(0x30, issuer.public_bytes() + subject.public_bytes())


def transaction_id_for(key: Any) -> str:
    """A transactionID: hex SHA-256 of the public key (RFC 8894 §3.2.1.1 suggests a key hash)."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    h = hashes.Hash(hashes.SHA256())
    h.update(spki)
    return h.finalize().hex().upper()


# ------------------------------------------------------------------ reading replies
@dataclass
class Attr:
    """One signed attribute as received: its universal tag and content bytes."""

    oid: str
    tag: int
    content: bytes
    count: int

    @property
    def text(self) -> str:
        return self.content.decode("latin-1")


@dataclass
class CertRep:
    """A parsed CertRep (RFC 8894 §3.3.2), with everything the checks assert on."""

    der: bytes
    version: int
    digest_algorithms: list[str]
    signer_digest: str
    signer_sig_alg: str
    signer_cert: x509.Certificate | None
    signature_ok: bool
    signature_problem: str
    message_digest_ok: bool | None
    attrs: dict[str, Attr]
    econtent: bytes | None
    certificates: list[x509.Certificate] = field(default_factory=list)

    def attr_text(self, oid: str) -> str | None:
        a = self.attrs.get(oid)
        return a.text if a else None

    @property
    def status(self) -> str | None:
        return self.attr_text(OID_PKI_STATUS)

    @property
    def status_name(self) -> str:
        s = self.status
        return STATUS_NAMES.get(s or "", f"{s!r}")

    @property
    def fail_info(self) -> str | None:
        return self.attr_text(OID_FAIL_INFO)

    def summary(self) -> str:
        parts = [f"pkiStatus={self.status_name}"]
        if self.fail_info is not None:
            parts.append(f"failInfo={FAIL_NAMES.get(self.fail_info, self.fail_info)}")
        t = self.attrs.get(OID_FAIL_INFO_TEXT)
        if t:
            parts.append(f"failInfoText={t.content.decode('utf-8', 'replace')!r}")
        mt = self.attr_text(OID_MESSAGE_TYPE)
        parts.append(f"messageType={mt}")
        return ", ".join(parts)

    def attribute_lines(self) -> list[str]:
        out = []
        for oid, a in self.attrs.items():
            name = ATTR_NAMES.get(oid, oid)
            shown = a.content.hex() if a.tag == 0x04 else repr(a.text)
            out.append(f"signed attribute {name}: tag 0x{a.tag:02x} value {shown}")
        return out


def _load_cert(der: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def _sid_matches(sid: cms.SignerIdentifier, cert: x509.Certificate) -> bool:
    if sid.name == "issuer_and_serial_number":
        ias = sid.chosen
        return bool(ias["serial_number"].native == cert.serial_number
                    and ias["issuer"].dump() == cert.issuer.public_bytes())
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return False
    return bool(sid.chosen.native == ski)


def verify_signature(pub: Any, signature: bytes, data: bytes, digest: str) -> None:
    """Raise InvalidSignature unless ``signature`` by ``pub`` covers ``data``."""
    if isinstance(pub, rsa.RSAPublicKey):
        pub.verify(signature, data, padding.PKCS1v15(), _hash(digest))
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        pub.verify(signature, data, ec.ECDSA(_hash(digest)))
    else:
        raise MessageError(f"unsupported signer key {type(pub).__name__}")


def parse_certrep(der: bytes, extra_certs: list[x509.Certificate] = ()) -> CertRep:  # type: ignore[assignment]
    """Read a CertRep: SignedData, signer, signature and messageDigest over the bytes as
    received, the SCEP attributes with their tags. Raises MessageError on a structure error."""
    try:
        ci = cms.ContentInfo.load(der)
        ctype = ci["content_type"].dotted
        if ctype != "1.2.840.113549.1.7.2":
            raise MessageError(f"ContentInfo contentType is {ctype}, not signedData (1.2.840.113549.1.7.2)")
        sd = ci["content"]
        version = int(sd["version"].native if isinstance(sd["version"].native, int)
                      else str(sd["version"].native).lstrip("v"))
        dalgs = [a["algorithm"].native for a in sd["digest_algorithms"]]
        certs: list[x509.Certificate] = []
        if sd["certificates"].native is not None:
            for c in sd["certificates"]:
                if c.name == "certificate":
                    loaded = _load_cert(c.chosen.dump())
                    if loaded is not None:
                        certs.append(loaded)
        sis = sd["signer_infos"]
        if len(sis) != 1:
            raise MessageError(f"SignedData has {len(sis)} SignerInfos; a CertRep has exactly one")
        si = sis[0]
        eci = sd["encap_content_info"]
        econtent: bytes | None = None
        if eci["content"].native is not None:
            econtent = eci["content"].contents if eci["content"].method == 0 else eci["content"].native
            if not isinstance(econtent, bytes):
                econtent = eci["content"].parsed.dump() if hasattr(eci["content"], "parsed") else None
        signed = si["signed_attrs"]
        if signed.native is None:
            raise MessageError("SignerInfo has no signedAttrs")
        attrs: dict[str, Attr] = {}
        mdigest: bytes | None = None
        for a in signed:
            oid = a["type"].dotted
            values = list(a["values"])
            if oid == "1.2.840.113549.1.9.4":
                mdigest = values[0].native if values else None
                continue
            if not values:
                continue
            raw = values[0].dump()
            parsed = core.load(raw)
            attrs[oid] = Attr(oid, raw[0], parsed.contents or b"", len(values))
        signer_digest = DIGEST_BY_ASN1.get(si["digest_algorithm"]["algorithm"].native,
                                           si["digest_algorithm"]["algorithm"].dotted)
        sig_alg = si["signature_algorithm"]["algorithm"].dotted
        signer_cert = next((c for c in [*certs, *extra_certs] if _sid_matches(si["sid"], c)), None)
        sig_ok, problem = False, ""
        md_ok: bool | None = None
        if signer_digest not in DIGESTS:
            problem = f"unknown digest algorithm {signer_digest}"
        elif signer_cert is None:
            problem = "no certificate in the reply (or from GetCACert) matches the SignerInfo sid"
        else:
            to_verify = b"\x31" + signed.dump()[1:]
            try:
                verify_signature(signer_cert.public_key(), si["signature"].native, to_verify, signer_digest)
                sig_ok = True
            except Exception as exc:  # noqa: BLE001 - any failure is the verdict
                problem = f"signature does not verify: {type(exc).__name__} {exc}"
            if mdigest is not None:
                h = hashes.Hash(_hash(signer_digest))
                h.update(econtent or b"")
                md_ok = h.finalize() == mdigest
        return CertRep(der, version, dalgs, signer_digest, sig_alg, signer_cert, sig_ok, problem, md_ok,
                       attrs, econtent, certs)
    except MessageError:
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: every failure is one error
        raise MessageError(f"not a readable CMS SignedData: {type(exc).__name__}: {exc}") from None


@dataclass
class Decrypted:
    """The pkcsPKIEnvelope of a reply, opened."""

    plaintext: bytes
    cipher: str
    recipient_matches: bool
    constructed_content: bool
    key_transport: str


def decrypt_envelope(der: bytes, me: Identity) -> Decrypted:
    """Open EnvelopedData addressed to ``me`` (RSA v1.5 or OAEP; DES, 3DES, AES-CBC)."""
    try:
        ci = cms.ContentInfo.load(der)
        if ci["content_type"].dotted != "1.2.840.113549.1.7.3":
            raise MessageError(f"pkcsPKIEnvelope contentType is {ci['content_type'].dotted}, not envelopedData")
        ed = ci["content"]
        chosen = None
        for ri in ed["recipient_infos"]:
            if ri.name != "ktri":
                continue
            rid = ri.chosen["rid"]
            if rid.name == "issuer_and_serial_number":
                ias = rid.chosen
                if (ias["serial_number"].native == me.cert.serial_number
                        and ias["issuer"].dump() == me.cert.issuer.public_bytes()):
                    chosen = ri.chosen
                    break
        matches = chosen is not None
        if chosen is None:
            ktris = [ri.chosen for ri in ed["recipient_infos"] if ri.name == "ktri"]
            if not ktris:
                raise MessageError("no KeyTransRecipientInfo in the envelope")
            chosen = ktris[0]
        kalg = chosen["key_encryption_algorithm"]["algorithm"].native
        if kalg == "rsaes_oaep":
            pad: Any = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
        else:
            pad = padding.PKCS1v15()
        try:
            cek = me.key.decrypt(chosen["encrypted_key"].native, pad)
        except ValueError:
            raise MessageError("the content-encryption key does not decrypt with the requester's key "
                               "(not encrypted to the request signer)") from None
        # Read EncryptedContentInfo generically: asn1crypto refuses the constructed (BER)
        # encryptedContent that some servers send, and the suite must report it, not crash.
        ed_children = ber.children(ber.tlv(0x30, ed.contents))
        eci = ber.children(ed_children[2])
        calg = cms.EncryptionAlgorithm.load(eci[1])
        cname = CIPHER_BY_ASN1.get(calg["algorithm"].native, calg["algorithm"].dotted)
        if len(eci) < 3:
            raise MessageError("the envelope has no encryptedContent")
        raw_ec = eci[2]
        constructed = bool(raw_ec[0] & 0x20)
        ct = ber_octets(raw_ec)
        if cname == "AES-192":
            cipher_obj: Any = algorithms.AES(cek)
            block = 16
        elif cname in CIPHERS:
            cipher_obj, block = _block_cipher(cname, cek), CIPHERS[cname][2]
        else:
            raise MessageError(f"unknown content-encryption algorithm {cname}")
        iv = calg["parameters"].native
        dec = Cipher(cipher_obj, modes.CBC(iv)).decryptor()
        padded = dec.update(ct) + dec.finalize()
        unpad = sympad.PKCS7(block * 8).unpadder()
        plain = unpad.update(padded) + unpad.finalize()
        return Decrypted(plain, cname, matches, constructed, kalg)
    except MessageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise MessageError(f"cannot open the pkcsPKIEnvelope: {type(exc).__name__}: {exc}") from None


@dataclass
class CertsOnly:
    """A degenerate certificates-only SignedData (RFC 8894 §3.4), as received."""

    version: int
    digest_algorithm_count: int
    has_econtent: bool
    econtent_type: str
    signer_count: int
    certificates: list[x509.Certificate]
    crls: list[x509.CertificateRevocationList]

    def shape_problems(self) -> list[str]:
        out = []
        if self.version != 1:
            out.append(f"version is {self.version}, expected 1")
        if self.digest_algorithm_count:
            out.append(f"digestAlgorithms has {self.digest_algorithm_count} entries, expected none")
        if self.econtent_type != "1.2.840.113549.1.7.1":
            out.append(f"encapContentInfo type {self.econtent_type}, expected id-data")
        if self.has_econtent:
            out.append("encapContentInfo carries eContent, expected none")
        if self.signer_count:
            out.append(f"{self.signer_count} SignerInfos, expected none")
        return out


def parse_certs_only(der: bytes) -> CertsOnly:
    """Read a degenerate SignedData, keeping the certificate order as received."""
    try:
        ci = cms.ContentInfo.load(der)
        if ci["content_type"].dotted != "1.2.840.113549.1.7.2":
            raise MessageError(f"contentType {ci['content_type'].dotted}, not signedData")
        sd = ci["content"]
        v = sd["version"].native
        version = int(str(v).lstrip("v"))
        certs: list[x509.Certificate] = []
        if sd["certificates"].native is not None:
            for c in sd["certificates"]:
                loaded = _load_cert(c.chosen.dump()) if c.name == "certificate" else None
                if loaded is None:
                    raise MessageError("a certificates entry is not an X.509 certificate")
                certs.append(loaded)
        crls: list[x509.CertificateRevocationList] = []
        if sd["crls"].native is not None:
            for c in sd["crls"]:
                crls.append(x509.load_der_x509_crl(c.chosen.dump()))
        eci = sd["encap_content_info"]
        return CertsOnly(version, len(sd["digest_algorithms"]), eci["content"].native is not None,
                         eci["content_type"].dotted, len(sd["signer_infos"]), certs, crls)
    except MessageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise MessageError(f"not a degenerate certificates-only SignedData: {type(exc).__name__}: {exc}") from None


def public_key_der(obj: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a key, certificate or CSR."""
    pub = obj.public_key() if hasattr(obj, "public_key") else obj
    return bytes(pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """True if ``ca`` signed ``cert``."""
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except Exception:  # noqa: BLE001
        return False
