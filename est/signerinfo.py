"""One CMS SignerInfo, verified (RFC 5652 §5.4, §5.6): shared by the /fullcmc request codec
(est/cmc.py, RFC 5272 §3.2.1) and the server-generated key package (est/serverkeygen_cms.py,
RFC 7030 §4.4.2). Bytes in, verdict out; no I/O.
"""

from __future__ import annotations

from typing import Any

from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric import padding as apadding

#: The digests a SignerInfo may use here (RFC 5754 §2).
HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512(),
}


class UnsupportedSignerKey(Exception):
    """The signer's key is of a type no CMS signature here uses (RFC 5652 §5.6)."""


def embedded_signer(sd: cms.SignedData, sid: cms.SignerIdentifier) -> x509.Certificate | None:
    """The certificate in ``sd`` that an issuerAndSerialNumber ``sid`` names (RFC 5652 §5.3);
    None when none matches or ``sid`` is a subjectKeyIdentifier."""
    if sid.name != "issuer_and_serial_number":
        return None
    ias = sid.chosen
    signer: x509.Certificate | None = None
    for choice in sd["certificates"] or []:
        if choice.name == "certificate" and choice.chosen.issuer == ias["issuer"] \
                and choice.chosen.serial_number == ias["serial_number"].native:
            signer = x509.load_der_x509_certificate(bytes(choice.chosen.dump()))
    return signer


def verify_signer_info(key: Any, si: cms.SignerInfo, digest_name: str) -> None:
    """Verify ``si``'s signature with ``key`` over its signed attributes as received, their
    ``[0]`` tag read as SET OF (RFC 5652 §5.4): PKCS#1 v1.5 or RSASSA-PSS (RFC 4056), ECDSA over
    ``digest_name``, EdDSA (RFC 8419). Raises InvalidSignature (or KeyError/ValueError for bad
    parameters) and :class:`UnsupportedSignerKey`."""
    data = b"\x31" + bytes(si["signed_attrs"].dump())[1:]
    signature = bytes(si["signature"].native)
    if isinstance(key, rsa.RSAPublicKey):
        if si["signature_algorithm"].signature_algo == "rsassa_pss":
            params = si["signature_algorithm"]["parameters"]
            pss_hash = HASHES[params["hash_algorithm"]["algorithm"].native]
            key.verify(signature, data, apadding.PSS(apadding.MGF1(pss_hash), params["salt_length"].native),
                       pss_hash)
        else:
            key.verify(signature, data, apadding.PKCS1v15(), HASHES[digest_name])
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(HASHES[digest_name]))
    elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        key.verify(signature, data)
    else:
        raise UnsupportedSignerKey(type(key).__name__)
