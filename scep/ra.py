"""The registration authority that answers for a CA (RFC 8894 §2.1.2): its certificates and keys."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from ca.keys import PrivateKey


@dataclass(frozen=True)
class RA:
    """The registration authority answering for a CA (RFC 8894 §2.1.2).

    ``cert``/``key`` sign CertReps (and decrypt requests addressed to ``cert``); the keys are
    :class:`ca.keys.PrivateKey` (a Signer and a Decrypter: a file or a PKCS#11 token).
    ``is_ca``: the CA's own certificate and key act as RA (GetCACert is then a single DER).
    ``extra``: certificates published after the RA certificate(s) (e.g. its chain).
    ``enc_cert``/``enc_key``: the Microsoft NDES layout's second RA certificate, for key
    encipherment only; a request whose RecipientInfo names it is decrypted with ``enc_key``.
    """

    cert: x509.Certificate
    key: PrivateKey
    is_ca: bool = False
    extra: tuple[x509.Certificate, ...] = ()
    enc_cert: x509.Certificate | None = None
    enc_key: PrivateKey | None = None

    def published(self) -> list[x509.Certificate]:
        """The RA certificates GetCACert lists before the CA chain: signer, encryption RA, extra."""
        return [self.cert, *([self.enc_cert] if self.enc_cert is not None else []), *self.extra]
