"""Building SCEP PKIMessages for the in-process harness (our own client's codecs)."""

from __future__ import annotations

import secrets

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scep import cms
from scep.client import self_signed_signer, simple_csr
from scep.message import CertRep, PkiMessage, new_nonce


def pkcsreq(recipient: x509.Certificate, key: rsa.RSAPrivateKey, cn: str, challenge: str | None, *,
            txid: str | None = None, csr_der: bytes | None = None, cipher: str = "aes128",
            signer: x509.Certificate | None = None, mtype: int = 19) -> bytes:
    csr = simple_csr(key, cn, challenge)
    msg = PkiMessage(message_type=mtype, transaction_id=txid or secrets.token_hex(8), sender_nonce=new_nonce())
    return msg.build(csr_der if csr_der is not None else csr.public_bytes(serialization.Encoding.DER),
                     signer_cert=signer or self_signed_signer(key, csr.subject), sign=cms.rsa_signer(key),
                     recipient=recipient, cipher=cipher, digest="sha256")


def reply(body: bytes) -> CertRep:
    return CertRep.parse(body)
