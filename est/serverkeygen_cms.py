"""The server-generated key CMS of /serverkeygen (RFC 7030 §4.4.2): the encrypted key part is
ContentInfo(EnvelopedData(SignedData(AsymmetricKeyPackage))) (RFC 5652 §5-6, RFC 5958 §4),
built for a KEK (RFC 7030 §4.4.1.1) or an RSA recipient (§4.4.1.2) and opened again by the client.

A codec: bytes in, objects out, no aiohttp, no asyncio (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
from dataclasses import dataclass

from asn1crypto import algos, cms, keys
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap
from cryptography.hazmat.primitives import hashes, keywrap, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric import padding as apadding
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ca import cms_der
from ca.keys import FileKey, Signer
from est.asn1 import Oid, RawAsymmetricKeyPackage
from est.errors import BadRequest, ProtocolError
from est.signerinfo import HASHES, UnsupportedSignerKey, embedded_signer, verify_signer_info

@dataclass(frozen=True)
class KekRecipient:
    """A symmetric key-encryption key named by DecryptKeyIdentifier (RFC 7030 §4.4.1.1);
    wrapped with AES key wrap (RFC 3394 / RFC 3565), 16, 24 or 32 bytes."""

    key_id: bytes
    kek: bytes


@dataclass(frozen=True)
class KeyTransRecipient:
    """An RSA certificate named by AsymmetricDecryptKeyIdentifier (RFC 7030 §4.4.1.2), the
    recipient identified by subjectKeyIdentifier (RFC 5652 §6.2.1), RSAES-OAEP (RFC 8017)."""

    certificate: x509.Certificate
    key_id: bytes


def subject_key_identifier(cert: x509.Certificate) -> bytes:
    """The certificate's SKI extension, or the RFC 5280 §4.2.1.2 method 1 value."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return bytes(ext.value.digest)
    except x509.ExtensionNotFound:
        return bytes(x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest)


def _signature_algorithm(signer: Signer) -> tuple[str, str]:
    """(digest name, asn1crypto signature algorithm name) for the server's signing key
    (RFC 5754 §3.2-3.3, RFC 8419 §3 for Ed25519)."""
    key = signer.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "sha256", "sha256_rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size > 384:
            return "sha512", "sha512_ecdsa"
        if key.curve.key_size > 256:
            return "sha384", "sha384_ecdsa"
        return "sha256", "sha256_ecdsa"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "sha512", "ed25519"
    raise ValueError(f"unsupported signing key {type(key).__name__}")


def _sign(signer: Signer, data: bytes, digest: str) -> bytes:
    """Sign through the :class:`ca.keys.Signer` (a PEM key or a PKCS#11 key): PKCS#1 v1.5 or
    ECDSA over ``digest``; Ed25519 hashes internally (RFC 8032)."""
    if isinstance(signer.public_key(), ed25519.Ed25519PublicKey):
        return signer.sign(data, None)
    return signer.sign(data, HASHES[digest])


def as_signer(key: Signer | PrivateKeyTypes) -> Signer:
    """A :class:`ca.keys.Signer` for a cryptography private key (RSA, EC, Ed25519); a Signer as is."""
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        return FileKey(key)
    if isinstance(key, Signer):
        return key
    raise ValueError(f"unsupported signing key {type(key).__name__}")


@functools.lru_cache(maxsize=16)
def _package_signer_template(signer_cert: x509.Certificate, sig_name: str, digest_name: str) -> cms_der.SignerTemplate:
    """The key package signer's blobs, encoded once (RFC 5652 §5.3): issuerAndSerialNumber,
    the digest and signature AlgorithmIdentifiers, the signer certificate."""
    der = signer_cert.public_bytes(serialization.Encoding.DER)
    return cms_der.SignerTemplate(
        sid=cms_der.issuer_and_serial_number(der),
        digest_algorithm=bytes(algos.DigestAlgorithm({"algorithm": digest_name}).dump()),
        signature_algorithm=bytes(algos.SignedDigestAlgorithm({"algorithm": sig_name}).dump()),
        certificates=cms_der.certificate_set([der]),
    )


_KP_A_KEY_PACKAGE = cms_der.oid(Oid.KP_A_KEY_PACKAGE)
_CONTENT_TYPE_KEY_PACKAGE = cms_der.attribute(cms_der.ID_CONTENT_TYPE, _KP_A_KEY_PACKAGE)


def _signed_key_package(
    pkcs8_der: bytes, signer_key: Signer, signer_cert: x509.Certificate
) -> bytes:
    """SignedData (v3, eContentType id-ct-KP-aKeyPackage) over an AsymmetricKeyPackage holding
    the one generated key, signed by the party that generated it (RFC 7030 §4.4.2)."""
    keys.PrivateKeyInfo.load(pkcs8_der, strict=True)  # must be a PrivateKeyInfo
    package = cms_der.tlv(0x30, pkcs8_der)  # AsymmetricKeyPackage: SEQUENCE OF OneAsymmetricKey
    digest_name, sig_name = _signature_algorithm(signer_key)
    digest = hashlib.new(digest_name, package).digest()
    signed_attrs = cms_der.signed_attributes(
        [
            _CONTENT_TYPE_KEY_PACKAGE,
            cms_der.attribute(cms_der.ID_SIGNING_TIME, cms_der.utc_time(_now())),
            cms_der.attribute(cms_der.ID_MESSAGE_DIGEST, cms_der.octet_string(digest)),
        ]
    )
    # RFC 5652 §5.4: the signature covers the DER of the attributes with a SET OF tag.
    return cms_der.signed_data(
        _package_signer_template(signer_cert, sig_name, digest_name),
        version=3,  # RFC 5652 §5.1: eContentType is not id-data
        econtent_type=_KP_A_KEY_PACKAGE,
        econtent=package,
        signed_attrs=signed_attrs,
        signature=_sign(signer_key, signed_attrs, digest_name),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


#: AES key wrap by KEK length (RFC 3394 §3 OIDs as registered by RFC 3565 §2.3.2)
_WRAP_BY_LEN = {
    16: cms_der.oid("2.16.840.1.101.3.4.1.5"),
    24: cms_der.oid("2.16.840.1.101.3.4.1.25"),
    32: cms_der.oid("2.16.840.1.101.3.4.1.45"),
}
_AES256_CBC = cms_der.oid("2.16.840.1.101.3.4.1.42")
#: RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 8017 A.2.1, RFC 4055 §4.1)
_RSAES_OAEP_SHA256 = bytes(
    algos.EncryptionAlgorithm(
        {
            "algorithm": "rsaes_oaep",
            "parameters": algos.RSAESOAEPParams(
                {
                    "hash_algorithm": {"algorithm": "sha256"},
                    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
                }
            ),
        }
    ).dump()
)


def build_server_generated_key(
    pkcs8_der: bytes,
    *,
    signer_key: Signer | PrivateKeyTypes,
    signer_cert: x509.Certificate,
    recipient: KekRecipient | KeyTransRecipient,
) -> bytes:
    """The encrypted /serverkeygen key part (RFC 7030 §4.4.2): ContentInfo(EnvelopedData(
    SignedData(AsymmetricKeyPackage))), content encrypted with AES-256-CBC (RFC 3565)."""
    inner = _signed_key_package(pkcs8_der, as_signer(signer_key), signer_cert)
    cek = os.urandom(32)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(inner) + padder.finalize()
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(padded) + enc.finalize()
    if isinstance(recipient, KekRecipient):
        alg = _WRAP_BY_LEN.get(len(recipient.kek))
        if alg is None:
            raise ValueError("KEK must be 16, 24 or 32 bytes (AES key wrap)")
        ri = cms_der.kek_recipient(
            recipient.key_id,
            cms_der.algorithm_identifier(alg),
            keywrap.aes_key_wrap(recipient.kek, cek),
        )
    else:
        pub = recipient.certificate.public_key()
        if not isinstance(pub, rsa.RSAPublicKey):
            raise BadRequest(
                "AsymmetricDecryptKeyIdentifier names a non-RSA key; this server encrypts "
                "server-generated keys to RSA recipients only (RFC 5652 §6.2.1 key transport)"
            )
        encrypted_key = pub.encrypt(
            cek,
            apadding.OAEP(
                mgf=apadding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
            ),
        )
        # version 2: rid is [0] subjectKeyIdentifier (RFC 5652 §6.2.1)
        ri = cms_der.key_trans_recipient(
            2, cms_der.tlv(0x80, recipient.key_id), _RSAES_OAEP_SHA256, encrypted_key
        )
    return cms_der.enveloped_data(
        version=2,  # RFC 5652 §6.1: a v2 ktri or a kekri present
        recipient_infos=[ri],
        content_type=cms_der.ID_SIGNED_DATA,
        content_encryption_algorithm=cms_der.algorithm_identifier(
            _AES256_CBC, cms_der.octet_string(iv)
        ),
        encrypted_content=ciphertext,
    )


@dataclass(frozen=True)
class OpenedKey:
    """A decrypted server-generated key and the certificate that signed its package."""

    private_key: PrivateKeyTypes
    pkcs8_der: bytes
    signer: x509.Certificate | None


def open_server_generated_key(
    der: bytes,
    *,
    kek: KekRecipient | None = None,
    private_key: PrivateKeyTypes | None = None,
) -> OpenedKey:
    """Client side of RFC 7030 §4.4.2: decrypt with the KEK or the RSA key, verify the
    SignedData signature with its embedded certificate (authorizing that signer is the
    caller's job), and return the key. Raises ProtocolError."""
    try:
        info = cms.ContentInfo.load(der)
        if info["content_type"].native != "enveloped_data":
            raise ProtocolError("server-generated key is not EnvelopedData")
        env = info["content"]
        cek: bytes | None = None
        for ri in env["recipient_infos"]:
            if ri.name == "kekri" and kek is not None:
                if bytes(ri.chosen["kekid"]["key_identifier"].native) != kek.key_id:
                    continue
                cek = keywrap.aes_key_unwrap(kek.kek, bytes(ri.chosen["encrypted_key"].native))
            elif ri.name == "ktri" and isinstance(private_key, rsa.RSAPrivateKey):
                alg = ri.chosen["key_encryption_algorithm"]
                enc_key = bytes(ri.chosen["encrypted_key"].native)
                if alg["algorithm"].native == "rsaes_oaep":
                    params = alg["parameters"]
                    h = params["hash_algorithm"]["algorithm"].native
                    mh = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
                    halg = {"sha1": hashes.SHA1(), **HASHES}
                    cek = private_key.decrypt(
                        enc_key,
                        apadding.OAEP(mgf=apadding.MGF1(halg[mh]), algorithm=halg[h], label=None),
                    )
                else:
                    cek = private_key.decrypt(enc_key, apadding.PKCS1v15())
            if cek is not None:
                break
        if cek is None:
            raise ProtocolError("no RecipientInfo matches the supplied key")
        eci = env["encrypted_content_info"]
        calg = eci["content_encryption_algorithm"]
        if calg["algorithm"].native not in ("aes128_cbc", "aes192_cbc", "aes256_cbc"):
            raise ProtocolError(f"unsupported content encryption {calg['algorithm'].native}")
        iv = bytes(calg["parameters"].native)
        dec = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
        padded = dec.update(bytes(eci["encrypted_content"].native)) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        inner = unpadder.update(padded) + unpadder.finalize()
        sd_info = cms.ContentInfo.load(inner)
        if sd_info["content_type"].native != "signed_data":
            raise ProtocolError("encrypted content is not SignedData")
        sd = sd_info["content"]
        econtent = sd["encap_content_info"]
        if econtent["content_type"].dotted != Oid.KP_A_KEY_PACKAGE:
            raise ProtocolError("SignedData does not carry an AsymmetricKeyPackage")
        package_der = bytes(econtent["content"].contents)
        signer = _verify_signed_data(sd, package_der)
        package = RawAsymmetricKeyPackage.load(package_der)
        pkcs8 = bytes(package[0].dump())
        key = serialization.load_der_private_key(pkcs8, password=None)
    except ProtocolError:
        raise
    except (InvalidUnwrap, InvalidSignature) as exc:
        raise ProtocolError(f"server-generated key does not decrypt/verify: {exc!r}") from None
    except Exception as exc:  # noqa: BLE001 - one error for every failure
        raise ProtocolError(f"server-generated key does not open: {exc}") from None
    return OpenedKey(key, pkcs8, signer)


def _verify_signed_data(sd: cms.SignedData, content: bytes) -> x509.Certificate:
    """Verify the single SignerInfo with the embedded signer certificate (RFC 5652 §5.6)."""
    infos = list(sd["signer_infos"])
    if len(infos) != 1:
        raise ProtocolError("expected exactly one SignerInfo")
    si = infos[0]
    signer = embedded_signer(sd, si["sid"])
    if signer is None:
        raise ProtocolError("signer certificate not included")
    digest_name = si["digest_algorithm"]["algorithm"].native
    md = None
    for attr in si["signed_attrs"]:
        if attr["type"].native == "message_digest":
            md = bytes(attr["values"][0].native)
    if md is None or md != hashlib.new(digest_name, content).digest():
        raise ProtocolError("messageDigest does not match the key package")
    try:
        verify_signer_info(signer.public_key(), si, digest_name)
    except UnsupportedSignerKey:
        raise ProtocolError("unsupported signer key") from None
    return signer
