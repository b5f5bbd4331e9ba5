"""Server-side key generation for /serverkeygen (RFC 7030 §4.4): whom the generated key is
encrypted to (§4.4.1.1-2), the request re-signed with the generated key, and the multipart
answer, key part then certificate (§4.4.2). The decisions around it (authentication, PoP,
issuance) stay in est/service.py; the CMS is est/serverkeygen_cms.py. No aiohttp, no asn1crypto.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PublicKeyTypes

from est import asn1, wire
from est.errors import BadRequest, EstError, NotImplementedOperation
from est.serverkeygen_cms import (
    KekRecipient,
    KeyTransRecipient,
    build_server_generated_key,
    subject_key_identifier,
)
from est.settings import EstSettings, LabelRule

if TYPE_CHECKING:
    from est.service import TlsInfo


def recipient(rule: LabelRule, settings: EstSettings, csr: x509.CertificateSigningRequest,
              tls: TlsInfo) -> KekRecipient | KeyTransRecipient | None:
    """Whom to encrypt the generated key to, from the CSR's DecryptKeyIdentifier or
    AsymmetricDecryptKeyIdentifier (RFC 7030 §4.4.1.1-2); None: the key travels as PKCS#8 in
    the TLS session. Raises BadRequest for an unknown KEK or recipient, NotImplementedOperation
    when no key-package signer is configured."""
    sym, asym = asn1.decrypt_key_identifiers(csr)
    found: KekRecipient | KeyTransRecipient | None = None
    if sym is not None:
        kek = rule.keks.get(sym)
        if kek is None:
            raise BadRequest("DecryptKeyIdentifier names no KEK known for this label")
        found = KekRecipient(sym, kek)
    elif asym is not None:
        candidates = list(rule.recipients)
        if tls.peer_certificate is not None:
            candidates.insert(0, tls.peer_certificate)
        for cert in candidates:
            if subject_key_identifier(cert) == asym:
                if not isinstance(cert.public_key(), rsa.RSAPublicKey):
                    raise BadRequest("AsymmetricDecryptKeyIdentifier names a non-RSA key; only RSA "
                                     "key transport is supported for server-generated keys")
                found = KeyTransRecipient(cert, asym)
                break
        else:
            raise BadRequest("AsymmetricDecryptKeyIdentifier matches neither the TLS client certificate "
                             "nor a configured recipient")
    if found is not None and (settings.signer_key is None or settings.signer_cert is None):
        raise NotImplementedOperation("encrypted server-generated keys need "
                                      "[est] serverkeygen_signer_cert/_key (or the TLS key)")
    return found


def rebuild_csr(csr: x509.CertificateSigningRequest,
                key: CertificateIssuerPrivateKeyTypes) -> x509.CertificateSigningRequest:
    """The client's request re-signed with the generated key: same subject and requested
    extensions (the profile still filters them), so the core's PoP check holds (RFC 7030 §4.4.1)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(csr.subject)
    try:
        for ext in csr.extensions:
            builder = builder.add_extension(ext.value, ext.critical)
    except ValueError:
        raise BadRequest("the CSR's extension request does not parse") from None
    return builder.sign(key, wire.csr_signature_hash(key))


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def answer(key: CertificateIssuerPrivateKeyTypes, certs: Sequence[x509.Certificate],
           to: KekRecipient | KeyTransRecipient | None, settings: EstSettings,
           framing: wire.Base64Framing) -> tuple[str, bytes]:
    """(Content-Type, body) of the /serverkeygen answer (RFC 7030 §4.4.2): the key as PKCS#8,
    or encrypted to ``to`` and signed by the configured key-package signer, then ``certs``
    (the issued certificate first). The issued certificate must carry ``key``."""
    if _spki(certs[0].public_key()) != _spki(key.public_key()):
        raise EstError("issued certificate does not carry the generated key", status=500)
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    key_part = pkcs8
    if to is not None:
        if settings.signer_key is None or settings.signer_cert is None:
            raise NotImplementedOperation("encrypted server-generated keys need a key-package signer")
        key_part = build_server_generated_key(pkcs8, signer_key=settings.signer_key,
                                              signer_cert=settings.signer_cert, recipient=to)
    return wire.build_serverkeygen_response(key_part, wire.encode_certs_only(certs),
                                            encrypted=to is not None, framing=framing)
