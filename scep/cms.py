"""The CMS layer of SCEP: verify, decrypt, encrypt, sign (RFC 8894 §3.1, RFC 5652).

One cohesive thing: RFC 5652 as SCEP uses it, SignedData and EnvelopedData parsed, verified,
decrypted and built, sharing one algorithm table and one failure shape (MessageCheckError, no
oracle).

Bytes in, objects out. asn1crypto parses and builds the structures; cryptography does every
primitive (signature, RSA key transport, block cipher), including 3DES and single DES from
``cryptography.hazmat.decrepit`` when a caller's allow-list permits them.

Why not ``cryptography``'s PKCS#7 helpers: they cannot add SCEP's authenticated attributes,
reorder certificate sets, and decrypt AES-128/256-CBC only (RFC 8894 §3.2).

Rules that the wire makes surprising:

* The signature covers the signed attributes **as received** (RFC 5652 §5.4 asks signers for
  DER, but some clients send unsorted or BER sets; re-encoding would break them), and
  messageDigest covers the eContent octets as received (constructed OCTET STRINGs merged).
* Every failure of verification or decryption raises the one :class:`MessageCheckError`.
* We emit DER with a primitive encryptedContent (asn1crypto-based clients reject the
  constructed form) and SignerInfo.signatureAlgorithm = rsaEncryption (strongSwan rejects
  sha*WithRSAEncryption there).
* ``certificates`` is a SET OF, which DER would sort; SCEP clients read ``certs[0]`` as the
  issued certificate, so certs-only structures are emitted in the caller's order by hand.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from asn1crypto import algos, cms, core
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ca import cms_der
from scep.asn1 import BerContentInfo, ber_octets, raw_encoding  # importing registers the SCEP attributes
from scep.errors import BadAlgError, MessageCheckError, ScepDecodeError

#: Decrypts an RSA key-transport blob: ``RSAPrivateKey.decrypt`` has exactly this shape, and so
#: does an HSM-backed ``Decrypter.decrypt``.
Decrypt = Callable[[bytes, AsymmetricPadding], bytes]
#: Signs ``data`` hashing with ``hash``: PKCS#1 v1.5 for RSA, ECDSA for EC keys.
Sign = Callable[[bytes, hashes.HashAlgorithm], bytes]

MAX_MESSAGE_BYTES = 1 << 20  # size cap before parsing (docs/ARCHITECTURE.md, issuance contract step 1)

# --- algorithm tables --------------------------------------------------------------------

#: digest name (asn1crypto spelling) -> cryptography hash class
DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

#: content-encryption cipher name -> (asn1crypto algorithm id, key length, block size)
CIPHERS: dict[str, tuple[str, int, int]] = {
    "des": ("des", 8, 8),
    "3des": ("tripledes_3key", 24, 8),
    "aes128": ("aes128_cbc", 16, 16),
    "aes192": ("aes192_cbc", 24, 16),
    "aes256": ("aes256_cbc", 32, 16),
}
_CIPHER_BY_ALG = {alg: name for name, (alg, _k, _b) in CIPHERS.items()}

_SIG_ALG_HASH = {
    "sha1_rsa": "sha1",
    "sha224_rsa": "sha224",
    "sha256_rsa": "sha256",
    "sha384_rsa": "sha384",
    "sha512_rsa": "sha512",
    "md5_rsa": "md5",
    "sha1_ecdsa": "sha1",
    "sha224_ecdsa": "sha224",
    "sha256_ecdsa": "sha256",
    "sha384_ecdsa": "sha384",
    "sha512_ecdsa": "sha512",
}


def hash_for(digest: str) -> hashes.HashAlgorithm:
    """The cryptography hash object for an asn1crypto digest name."""
    try:
        return DIGESTS[digest]()
    except KeyError:
        raise BadAlgError(f"unsupported digest {digest!r}") from None


# --- parsing the outer SignedData ---------------------------------------------------------


@dataclass(frozen=True)
class SignedMessage:
    """A parsed, **not yet verified** SignedData with exactly one SignerInfo (RFC 5652 §5).

    ``content`` is the eContent octets as received (None when detached/absent).
    ``signed_attrs_encoding`` is the exact byte string the signature covers (the received
    signedAttrs with its [0] tag replaced by SET, RFC 5652 §5.4).
    """

    content_type: str
    content: bytes | None
    certificates: tuple[x509.Certificate, ...]
    signer: x509.Certificate | None
    digest: str
    signature_algorithm: str
    signature: bytes
    signed_attrs: cms.CMSAttributes
    signed_attrs_encoding: bytes
    crls: tuple[bytes, ...] = ()

    def attribute_values(self, name: str) -> list[core.Asn1Value]:
        """The values of the signed attribute called ``name`` (asn1crypto name)."""
        out: list[core.Asn1Value] = []
        for attr in self.signed_attrs:
            if attr["type"].native == name:
                out.extend(attr["values"])
        return out


def _load_certificate(value: cms.CertificateChoices) -> x509.Certificate | None:
    if value.name != "certificate":
        return None
    return x509.load_der_x509_certificate(value.chosen.dump())


def _same_name(a: ax509.Name, b: ax509.Name) -> bool:
    """RFC 5280 §7.1 name matching; byte-equal DER first (the usual case: the peer copied our
    issuer), asn1crypto's string-prepared comparison (slow) only when the bytes differ."""
    return bool(a.dump() == b.dump() or a == b)


def _sid_matches(sid: cms.SignerIdentifier, cert: x509.Certificate) -> bool:
    """RFC 5652 §5.3: issuerAndSerialNumber or subjectKeyIdentifier."""
    acert = ax509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    if sid.name == "issuer_and_serial_number":
        ias = sid.chosen
        return bool(ias["serial_number"].native == cert.serial_number and _same_name(ias["issuer"], acert.issuer))
    if sid.name == "subject_key_identifier":
        ski = acert.key_identifier
        return ski is not None and hmac.compare_digest(ski, sid.chosen.native)
    return False


def load_content_info(der: bytes, expected: str) -> cms.ContentInfo:
    """Load a ContentInfo of type ``expected`` ('signed_data', 'enveloped_data'), BER accepted.

    The one parse gate for CMS: size cap first, every exception becomes ScepDecodeError.
    """
    if len(der) > MAX_MESSAGE_BYTES:
        raise ScepDecodeError("message too large")
    try:
        info = BerContentInfo.load(der, strict=True)
        ctype = info["content_type"].native
        info["content"].contents  # noqa: B018  (parses the tag/length of the content)
    except (ValueError, TypeError, KeyError, RecursionError, OverflowError) as exc:
        raise ScepDecodeError(f"not a CMS ContentInfo: {exc.__class__.__name__}") from None
    if ctype != expected:
        raise ScepDecodeError(f"content type {ctype!r}, expected {expected!r}")
    return info


def parse_signed(der: bytes) -> SignedMessage:
    """Parse a SignedData pkiMessage (RFC 8894 §3.2) without verifying it.

    Raises :class:`ScepDecodeError` on anything undecodable.
    """
    info = load_content_info(der, "signed_data")
    try:
        sd = info["content"]
        eci = sd["encap_content_info"]
        content_type = eci["content_type"].dotted
        content: bytes | None = None
        if not isinstance(eci["content"], core.Void):
            content = ber_octets(raw_encoding(eci["content"]), explicit=True)
        certs: list[x509.Certificate] = []
        for choice in sd["certificates"] or []:
            cert = _load_certificate(choice)
            if cert is not None:
                certs.append(cert)
        crls = tuple(c.dump() for c in (sd["crls"] or []))
        signer_infos = sd["signer_infos"]
        if len(signer_infos) != 1:
            raise ScepDecodeError(f"{len(signer_infos)} SignerInfos, SCEP needs exactly one")
        si = signer_infos[0]
        signed_attrs = si["signed_attrs"]
        if not isinstance(signed_attrs, cms.CMSAttributes) or signed_attrs.contents is None:
            raise ScepDecodeError("SignerInfo without signed attributes")
        for attr in signed_attrs:  # parse each attribute's type and values inside the gate
            attr["type"].native  # noqa: B018
            list(attr["values"])
        encoding = _signed_attrs_encoding(signed_attrs)
        signer = next((c for c in certs if _sid_matches(si["sid"], c)), None)
        return SignedMessage(
            content_type=content_type,
            content=content,
            certificates=tuple(certs),
            signer=signer,
            digest=si["digest_algorithm"]["algorithm"].native,
            signature_algorithm=si["signature_algorithm"]["algorithm"].native,
            signature=si["signature"].native,
            signed_attrs=signed_attrs,
            signed_attrs_encoding=encoding,
            crls=crls,
        )
    except ScepDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001  (the parse gate: every failure is one error)
        raise ScepDecodeError(f"malformed SignedData: {exc.__class__.__name__}") from None


def _signed_attrs_encoding(attrs: cms.CMSAttributes) -> bytes:
    """The received signedAttrs bytes with the IMPLICIT [0] tag turned back into SET OF.

    RFC 5652 §5.4: the digest is over the EXPLICIT SET OF encoding; we keep the length octets
    and contents exactly as the client sent them.
    """
    header: bytes = attrs._header or b""  # the original tag + length octets as received
    if not header:
        return bytes(attrs.untag().dump(force=True))  # built locally: canonical DER
    return b"\x31" + header[1:] + bytes(attrs.contents) + bytes(attrs._trailer or b"")


def verify_signed(message: SignedMessage, *, allowed_digests: Collection[str] | None = None) -> None:
    """Check messageDigest, contentType and the signer's signature (RFC 5652 §5.4, §5.6).

    Raises :class:`MessageCheckError` (one shape) for every failure, :class:`BadAlgError` for a
    digest the caller does not allow, in ``digestAlgorithm`` or in the hash that
    ``signatureAlgorithm`` names (sha1WithRSAEncryption, md5WithRSAEncryption: RFC 5652 §5.3).
    """
    if allowed_digests is not None and message.digest not in allowed_digests:
        raise BadAlgError(f"digest {message.digest} not allowed")
    sig_hash = _SIG_ALG_HASH.get(message.signature_algorithm, message.digest)
    if allowed_digests is not None and sig_hash not in allowed_digests:
        raise BadAlgError(f"signature algorithm {message.signature_algorithm} ({sig_hash}) not allowed")
    if message.signer is None:
        raise MessageCheckError("no certificate matches the SignerInfo sid")
    try:
        hash_alg = hash_for(message.digest)
    except BadAlgError:
        raise
    digests = message.attribute_values("message_digest")
    ctypes = message.attribute_values("content_type")
    if len(digests) != 1 or len(ctypes) != 1:
        raise MessageCheckError("messageDigest/contentType attribute missing or repeated")
    if ctypes[0].dotted != message.content_type:
        raise MessageCheckError("contentType attribute does not match eContentType")
    h = hashes.Hash(hash_alg)
    h.update(message.content or b"")
    if not hmac.compare_digest(h.finalize(), digests[0].native):
        raise MessageCheckError("messageDigest mismatch")
    try:
        sig_hash_alg = hash_for(sig_hash)
    except BadAlgError:
        raise
    key = message.signer.public_key()
    candidates = [message.signed_attrs_encoding]
    der = message.signed_attrs.untag().dump(force=True)
    if der != message.signed_attrs_encoding:
        candidates.append(der)
    for data in candidates:
        try:
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(message.signature, data, padding.PKCS1v15(), sig_hash_alg)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(message.signature, data, ec.ECDSA(sig_hash_alg))
            else:
                raise MessageCheckError("unsupported signer key type")
            return
        except InvalidSignature:
            continue
        except MessageCheckError:
            raise
        except Exception:  # noqa: BLE001
            continue
    raise MessageCheckError("signature does not verify")


# --- EnvelopedData -----------------------------------------------------------------------


@dataclass(frozen=True)
class KeyTransport:
    """How the content-encryption key was wrapped (RFC 8894 §3.2.1.1: rsaEncryption; OAEP too)."""

    oaep: bool = False
    oaep_hash: str = "sha1"
    mgf_hash: str = "sha1"

    def padding(self) -> AsymmetricPadding:
        """The cryptography padding object."""
        if not self.oaep:
            return padding.PKCS1v15()
        return padding.OAEP(
            mgf=padding.MGF1(hash_for(self.mgf_hash)), algorithm=hash_for(self.oaep_hash), label=None
        )


@dataclass(frozen=True)
class Decrypted:
    """The plaintext of an EnvelopedData and the algorithms the sender chose (to mirror)."""

    plaintext: bytes
    cipher: str
    key_transport: KeyTransport


def _block_cipher(name: str, key: bytes) -> algorithms.AES | TripleDES:
    if name.startswith("aes"):
        return algorithms.AES(key)
    if name == "des":
        # single DES = 3DES with K1 = K2 = K3 (only reached when the profile allows legacy)
        return TripleDES(key * 3)
    return TripleDES(key)


def _recipient_matches(rid: cms.RecipientIdentifier, acert: ax509.Certificate) -> bool:
    if rid.name == "issuer_and_serial_number":
        ias = rid.chosen
        return bool(
            ias["serial_number"].native == acert.serial_number and _same_name(ias["issuer"], acert.issuer)
        )
    if rid.name == "subject_key_identifier":
        ski = acert.key_identifier
        return ski is not None and hmac.compare_digest(ski, rid.chosen.native)
    return False


def _key_transport(alg: cms.KeyEncryptionAlgorithm) -> KeyTransport:
    name = alg["algorithm"].native
    if name == "rsaes_pkcs1v15":
        return KeyTransport()
    if name == "rsaes_oaep":
        params = alg["parameters"]
        if params.native is None:
            return KeyTransport(oaep=True)
        oaep_hash = params["hash_algorithm"]["algorithm"].native
        mgf = params["mask_gen_algorithm"]
        mgf_hash = mgf["parameters"]["algorithm"].native if mgf["parameters"].native else "sha1"
        return KeyTransport(oaep=True, oaep_hash=oaep_hash, mgf_hash=mgf_hash)
    raise BadAlgError(f"key transport {name} not supported")


def addressed_to(der: bytes, cert: x509.Certificate) -> bool:
    """True when the EnvelopedData has a key-transport RecipientInfo for ``cert`` (RFC 5652
    §6.2.1); False for anything that does not parse (decryption then fails in one shape)."""
    try:
        env = load_content_info(der, "enveloped_data")["content"]
        acert = ax509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
        return any(ri.name == "ktri" and _recipient_matches(ri.chosen["rid"], acert) for ri in env["recipient_infos"])
    except Exception:  # noqa: BLE001  (parse gate)
        return False


def decrypt_enveloped(
    der: bytes,
    decrypt: Decrypt,
    recipients: Sequence[x509.Certificate],
    allowed_ciphers: Collection[str],
) -> Decrypted:
    """Open an EnvelopedData addressed to one of ``recipients`` (RFC 5652 §6, RFC 8894 §3.2.2).

    ``decrypt`` unwraps the content-encryption key with the private key of the matching
    recipient (one RA key per call: pass only certificates of that key). A cipher outside
    ``allowed_ciphers`` is refused with :class:`BadAlgError` before any private-key operation;
    every other failure (no matching recipient, bad key transport, bad padding) raises the one
    :class:`MessageCheckError`.
    """
    try:
        info = load_content_info(der, "enveloped_data")
    except ScepDecodeError as exc:
        raise MessageCheckError(f"envelope: {exc.detail}") from None
    try:
        env = info["content"]
        eci = env["encrypted_content_info"]
        alg = eci["content_encryption_algorithm"]
        alg_name = alg["algorithm"].native
        cipher = _CIPHER_BY_ALG.get(alg_name)
        iv = alg["parameters"].native
        ciphertext_value = eci["encrypted_content"]
        ciphertext = b"" if isinstance(ciphertext_value, core.Void) else ber_octets(raw_encoding(ciphertext_value))
        ris = list(env["recipient_infos"])
    except Exception:  # noqa: BLE001
        raise MessageCheckError("malformed EnvelopedData") from None
    if cipher is None:
        raise BadAlgError(f"content encryption {alg_name} not supported")
    if cipher not in allowed_ciphers:
        raise BadAlgError(f"content encryption {cipher} not allowed by this profile")
    _alg_id, key_len, block = CIPHERS[cipher]
    aes_recipients = [ax509.Certificate.load(c.public_bytes(serialization.Encoding.DER)) for c in recipients]
    chosen: cms.KeyTransRecipientInfo | None = None
    for ri in ris:
        if ri.name != "ktri":
            continue
        if any(_recipient_matches(ri.chosen["rid"], a) for a in aes_recipients):
            chosen = ri.chosen
            break
    if chosen is None:
        raise MessageCheckError("no RecipientInfo for our certificate")
    transport = _key_transport(chosen["key_encryption_algorithm"])
    failed = False
    try:
        key = decrypt(chosen["encrypted_key"].native, transport.padding())
    except Exception:  # noqa: BLE001
        key = b""
    if len(key) != key_len:
        # RFC 3218 §2.3.2: carry on with a random key so that timing does not tell why
        failed = True
        key = os.urandom(key_len)
    try:
        if not isinstance(iv, bytes) or len(iv) != block or len(ciphertext) % block or not ciphertext:
            raise ValueError("iv/length")
        dec = Cipher(_block_cipher(cipher, key), modes.CBC(iv)).decryptor()
        padded = dec.update(ciphertext) + dec.finalize()
        plaintext = _unpad(padded, block)
    except Exception:  # noqa: BLE001
        raise MessageCheckError("content decryption failed") from None
    if failed:
        raise MessageCheckError("content decryption failed")
    return Decrypted(plaintext=plaintext, cipher=cipher, key_transport=transport)


def _unpad(data: bytes, block: int) -> bytes:
    """PKCS#7 / RFC 5652 §6.3 padding removal."""
    n = data[-1]
    if n < 1 or n > block or data[-n:] != bytes([n]) * n:
        raise ValueError("padding")
    return data[:-n]


@functools.lru_cache(maxsize=16)
def _key_encryption_algorithm(transport: KeyTransport) -> bytes:
    """The KeyEncryptionAlgorithmIdentifier DER of ``transport`` (encoded once per process)."""
    if transport.oaep:
        kea = cms.KeyEncryptionAlgorithm(
            {
                "algorithm": "rsaes_oaep",
                "parameters": algos.RSAESOAEPParams(
                    {
                        "hash_algorithm": {"algorithm": transport.oaep_hash},
                        "mask_gen_algorithm": {
                            "algorithm": "mgf1",
                            "parameters": {"algorithm": transport.mgf_hash},
                        },
                    }
                ),
            }
        )
    else:
        kea = cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15", "parameters": core.Null()})
    return bytes(kea.dump(force=True))


#: content-encryption cipher name -> its OID TLV (RFC 8018 B.2.1, RFC 3565 §4.1)
_CIPHER_OIDS: dict[str, bytes] = {
    name: cms_der.oid(algos.EncryptionAlgorithmId.unmap(alg_id)) for name, (alg_id, _k, _b) in CIPHERS.items()
}


def encrypt_enveloped(
    plaintext: bytes,
    recipient: x509.Certificate,
    cipher: str = "aes256",
    key_transport: KeyTransport | None = None,
) -> bytes:
    """Build a DER EnvelopedData ContentInfo for one RSA recipient (RFC 5652 §6.1).

    Version 0, KeyTransRecipientInfo by issuerAndSerialNumber, primitive encryptedContent.
    """
    if cipher not in CIPHERS:
        raise BadAlgError(f"cipher {cipher!r} unknown")
    transport = key_transport or KeyTransport()
    _alg_id, key_len, block = CIPHERS[cipher]
    key = os.urandom(key_len)
    iv = os.urandom(block)
    pad = block - len(plaintext) % block
    enc = Cipher(_block_cipher(cipher, key), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(plaintext + bytes([pad]) * pad) + enc.finalize()
    pub = recipient.public_key()
    if not isinstance(pub, rsa.RSAPublicKey):
        raise BadAlgError("recipient key is not RSA: SCEP key transport needs RSA")
    encrypted_key = pub.encrypt(key, transport.padding())
    rid = cms_der.issuer_and_serial_number(recipient.public_bytes(serialization.Encoding.DER))
    ktri = cms_der.key_trans_recipient(0, rid, _key_encryption_algorithm(transport), encrypted_key)
    return cms_der.enveloped_data(
        version=0,
        recipient_infos=[ktri],
        content_type=cms_der.ID_DATA,
        content_encryption_algorithm=cms_der.algorithm_identifier(_CIPHER_OIDS[cipher], cms_der.octet_string(iv)),
        encrypted_content=ciphertext,
    )


# --- SignedData building ------------------------------------------------------------------


def certs_only(
    certificates: Sequence[x509.Certificate], crls: Sequence[x509.CertificateRevocationList] = ()
) -> bytes:
    """A degenerate certs-only SignedData (RFC 8894 §3.4, RFC 5652 §5.2), certificates in order.

    Version 1, empty digestAlgorithms, id-data without eContent, empty signerInfos. The SET OF
    certificates keeps the caller's order (issued certificate or RA first): the set is covered by
    no signature and clients read ``certs[0]``.
    """
    return cms_der.certs_only(
        [c.public_bytes(serialization.Encoding.DER) for c in certificates],
        [c.public_bytes(serialization.Encoding.DER) for c in crls],
    )


def parse_certs_only(der: bytes) -> tuple[list[x509.Certificate], list[x509.CertificateRevocationList]]:
    """Certificates (in received order) and CRLs of a degenerate SignedData."""
    info = load_content_info(der, "signed_data")
    try:
        sd = info["content"]
        certs = [c for c in (_load_certificate(x) for x in (sd["certificates"] or [])) if c is not None]
        crls = [x509.load_der_x509_crl(c.dump()) for c in (sd["crls"] or [])]
    except Exception as exc:  # noqa: BLE001
        raise ScepDecodeError(f"malformed certs-only: {exc.__class__.__name__}") from None
    return certs, crls


@functools.lru_cache(maxsize=64)
def signer_template(
    signer_cert: x509.Certificate, digest: str, certificates: tuple[x509.Certificate, ...]
) -> cms_der.SignerTemplate:
    """The per-signer blobs of a SCEP SignedData, encoded once per (signer, digest, chain):
    issuerAndSerialNumber, the digest AlgorithmIdentifier, rsaEncryption (RSA) or
    ecdsa-with-SHA* (EC) and the DER-sorted certificates (RFC 5652 §5.1, §5.3)."""
    pub = signer_cert.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        sig_alg = cms.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"})
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        sig_alg = cms.SignedDigestAlgorithm({"algorithm": f"{digest}_ecdsa"})
    else:
        raise BadAlgError("signer key must be RSA or EC")
    ders = [c.public_bytes(serialization.Encoding.DER) for c in certificates]
    return cms_der.SignerTemplate(
        sid=cms_der.issuer_and_serial_number(signer_cert.public_bytes(serialization.Encoding.DER)),
        digest_algorithm=bytes(algos.DigestAlgorithm({"algorithm": digest}).dump()),
        signature_algorithm=bytes(sig_alg.dump()),
        certificates=cms_der.certificate_set(ders),
    )


def attribute(attr_type: str, value: bytes) -> bytes:
    """One signed attribute with a single encoded value (RFC 5652 §5.3), type as dotted OID."""
    return cms_der.attribute(_attr_oid(attr_type), value)


@functools.lru_cache(maxsize=32)
def _attr_oid(dotted: str) -> bytes:
    return cms_der.oid(dotted)


def sign_signed_data(
    content: bytes | None,
    attributes: Sequence[cms.CMSAttribute | bytes],
    signer_cert: x509.Certificate,
    sign: Sign,
    digest: str = "sha256",
    certificates: Sequence[x509.Certificate] | None = None,
    signing_time: dt.datetime | None = None,
) -> bytes:
    """Build and sign a SignedData ContentInfo carrying SCEP attributes (RFC 8894 §3.2.1).

    ``content`` (id-data) may be None: FAILURE/PENDING CertReps carry no pkcsPKIEnvelope; the
    messageDigest is then over the empty string. SignerInfo.signatureAlgorithm is rsaEncryption
    for RSA keys (the form strict clients accept); signed attributes are DER-sorted.
    ``attributes`` are DER (:func:`attribute`) or asn1crypto CMSAttribute objects.
    """
    hash_alg = hash_for(digest)
    certs = tuple(certificates) if certificates is not None else (signer_cert,)
    template = signer_template(signer_cert, digest, certs)
    h = hashes.Hash(hash_alg)
    h.update(content or b"")
    attrs = [
        _CONTENT_TYPE_DATA,
        cms_der.attribute(cms_der.ID_MESSAGE_DIGEST, cms_der.octet_string(h.finalize())),
    ]
    if signing_time is not None:
        attrs.append(cms_der.attribute(cms_der.ID_SIGNING_TIME, cms_der.utc_time(signing_time)))
    attrs.extend(a if isinstance(a, bytes) else bytes(a.dump(force=True)) for a in attributes)
    signed_attrs = cms_der.signed_attributes(attrs)
    return cms_der.signed_data(
        template,
        version=1,
        econtent_type=cms_der.ID_DATA,
        econtent=content,
        signed_attrs=signed_attrs,
        signature=sign(signed_attrs, hash_alg),
    )


_CONTENT_TYPE_DATA = cms_der.attribute(cms_der.ID_CONTENT_TYPE, cms_der.ID_DATA)


def rsa_signer(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Sign:
    """A :data:`Sign` for a cryptography private key (file keys, tests, the client)."""

    def _sign(data: bytes, hash_alg: hashes.HashAlgorithm) -> bytes:
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hash_alg)
        return key.sign(data, ec.ECDSA(hash_alg))

    return _sign
