"""OCSP (RFC 6960) codec: parse a request, build a signed response. Bytes in, bytes out.

The responder logic (which CA, which status) lives in :meth:`ca.issuer.Issuer.ocsp`; this module
only knows the wire format. A response is signed by the CA itself or by a delegated responder
whose certificate the CA issued with id-kp-OCSPSigning (RFC 6960 §4.2.2.2), through a
:class:`ca.keys.Signer`, so file keys and HSM keys are alike.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from asn1crypto import algos as aalgos
from asn1crypto import core as asn1core
from asn1crypto import keys as akeys
from asn1crypto import ocsp as aocsp
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.api import REASONS
from ca.errors import ParseError
from ca import tbs
from ca.keys import Signer, default_hash

#: RFC 6960 §2.1: requests are small; anything bigger is refused before parsing.
MAX_REQUEST_BYTES = 16 * 1024

#: RFC 6960 §4.4.1: nonces are 1..32 octets (RFC 8954); longer ones are refused.
MAX_NONCE_BYTES = 32


class Status(enum.Enum):
    """certStatus of a SingleResponse (RFC 6960 §2.2)."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Query:
    """The one CertID a request asks about (RFC 6960 §4.1.1) and its nonce."""

    serial: int
    hash_algorithm: hashes.HashAlgorithm
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    nonce: bytes | None


@dataclass(frozen=True)
class Responder:
    """Who signs responses for a CA: the CA itself (``cert`` is the CA certificate) or a
    delegated responder certificate issued by it (RFC 6960 §4.2.2.2)."""

    ca_cert: x509.Certificate
    cert: x509.Certificate
    signer: Signer

    @property
    def delegated(self) -> bool:
        """True when a separate OCSP signing certificate signs the responses."""
        return self.cert != self.ca_cert


def check_delegated_responder(ca_cert: x509.Certificate, cert: x509.Certificate) -> str | None:
    """Why ``cert`` cannot sign OCSP responses for ``ca_cert`` (None when it can)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:
        return "is not issued by the CA it would answer for (RFC 6960 §4.2.2.2)"
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "has no extendedKeyUsage id-kp-OCSPSigning"
    if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        return "has no extendedKeyUsage id-kp-OCSPSigning"
    return None


def parse_request(der: bytes) -> Query:
    """Parse an OCSPRequest (RFC 6960 §4.1); one CertID per request (RFC 5019 §2.1.1)."""
    if len(der) > MAX_REQUEST_BYTES:
        raise ParseError(f"OCSP request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        req = ocsp.load_der_ocsp_request(der)
        nonce = None
        for ext in req.extensions:
            if isinstance(ext.value, x509.OCSPNonce):
                nonce = ext.value.nonce
        query = Query(serial=req.serial_number, hash_algorithm=req.hash_algorithm,
                      issuer_name_hash=req.issuer_name_hash, issuer_key_hash=req.issuer_key_hash, nonce=nonce)
    except (ValueError, TypeError, NotImplementedError, RecursionError, x509.UnsupportedGeneralNameType) as exc:
        raise ParseError(f"OCSP request does not parse: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - one gate for untrusted bytes (docs/ARCHITECTURE.md, issuance contract step 1)
        raise ParseError(f"OCSP request does not parse: {type(exc).__name__}") from None
    if nonce is not None and not 1 <= len(nonce) <= MAX_NONCE_BYTES:
        raise ParseError(f"OCSP nonce of {len(nonce)} octets (RFC 8954: 1 to 32)")
    return query


def issuer_hashes(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of a CA for a CertID (RFC 6960 §4.1.1)."""
    name = hashes.Hash(algorithm)
    name.update(issuer.subject.public_bytes())
    spki = issuer.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    key_bits = akeys.PublicKeyInfo.load(spki)["public_key"].contents[1:]  # the BIT STRING's value octets
    key = hashes.Hash(algorithm)
    key.update(key_bits)
    return name.finalize(), key.finalize()


def is_for(query: Query, issuer: x509.Certificate) -> bool:
    """True when the request's CertID names ``issuer``."""
    return issuer_hashes(issuer, query.hash_algorithm) == (query.issuer_name_hash, query.issuer_key_hash)


def error_response(status: ocsp.OCSPResponseStatus) -> bytes:
    """An unsigned error response: malformedRequest, internalError, tryLater, unauthorized
    (RFC 6960 §2.3, §4.2.1)."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)




def build_response(
    query: Query,
    responder: Responder,
    status: Status,
    *,
    this_update: dt.datetime,
    next_update: dt.datetime | None,
    revoked_at: dt.datetime | None = None,
    reason: str | None = None,
) -> bytes:
    """A signed BasicOCSPResponse for the query's CertID (RFC 6960 §4.2.1).

    The responder is identified by key hash (§4.2.2.3, what RFC 5019 recommends); a delegated
    responder's certificate goes into ``certs`` so clients can verify it (§4.2.2.2); the
    request's nonce is echoed (§4.4.1).
    """
    cert_status: aocsp.CertStatus
    if status is Status.REVOKED:
        assert revoked_at is not None
        flag = REASONS.get(reason or "unspecified") or x509.ReasonFlags.unspecified
        info: dict[str, Any] = {"revocation_time": _gtime(revoked_at)}
        if flag is not x509.ReasonFlags.unspecified:  # RFC 5280 §5.3.1: omit rather than "unspecified"
            info["revocation_reason"] = flag.name
        cert_status = aocsp.CertStatus(name="revoked", value=aocsp.RevokedInfo(info))
    else:
        cert_status = aocsp.CertStatus(name=status.value, value=asn1core.Null())
    single: dict[str, Any] = {
        "cert_id": {
            "hash_algorithm": {"algorithm": query.hash_algorithm.name},
            "issuer_name_hash": query.issuer_name_hash,
            "issuer_key_hash": query.issuer_key_hash,
            "serial_number": query.serial,
        },
        "cert_status": cert_status,
        "this_update": _gtime(this_update),
    }
    if next_update is not None:
        single["next_update"] = _gtime(next_update)
    data: dict[str, Any] = {
        "responder_id": aocsp.ResponderId(name="by_key", value=issuer_hashes(responder.cert, hashes.SHA1())[1]),
        "produced_at": _gtime(dt.datetime.now(dt.timezone.utc)),
        "responses": [single],
    }
    if query.nonce is not None:
        data["response_extensions"] = [{"extn_id": "nonce", "critical": False, "extn_value": query.nonce}]
    return _sign(aocsp.ResponseData(data), responder)


def _gtime(value: dt.datetime) -> dt.datetime:
    """GeneralizedTime without fractional seconds (RFC 5280 §4.1.2.5.2, as RFC 6960 §4.2.2.1 asks)."""
    return value.astimezone(dt.timezone.utc).replace(microsecond=0)


def _sign(tbs_data: aocsp.ResponseData, responder: Responder) -> bytes:
    """Sign the tbsResponseData once through the responder's :class:`Signer` (RFC 6960 §4.2.1);
    a delegated responder's certificate goes into ``certs`` (§4.2.2.2)."""
    signer = responder.signer
    algorithm = default_hash(signer.public_key())
    sig_alg = aalgos.SignedDigestAlgorithm.load(tbs.signature_algorithm(signer.public_key(), algorithm))
    body = tbs_data.dump(force=True)
    fields: dict[str, Any] = {
        "tbs_response_data": aocsp.ResponseData.load(body),
        "signature_algorithm": sig_alg,
        "signature": signer.sign(body, algorithm),
    }
    if responder.delegated:
        fields["certs"] = [ax509.Certificate.load(responder.cert.public_bytes(serialization.Encoding.DER))]
    return bytes(aocsp.OCSPResponse({
        "response_status": "successful",
        "response_bytes": {"response_type": "basic_ocsp_response", "response": aocsp.BasicOCSPResponse(fields)},
    }).dump())
