"""The local CA backend: a CA certificate and its key in PEM files (or any :class:`Signer`)."""

from __future__ import annotations

from cryptography import x509

from ca.api import CAChain, CertificateTemplate
from ca.keys import Signer, default_hash, sign_certificate, sign_crl

import datetime as dt


class LocalCA:
    """Signs templates with a key it holds (file key today, PKCS#11 through the same Signer)."""

    def __init__(self, name: str, chain: CAChain, signer: Signer) -> None:
        self.name = name
        self._chain = chain
        self._signer = signer
        self._hash = default_hash(signer.public_key())
        if chain.issuer.public_key() != signer.public_key():
            from ca.errors import ConfigError

            raise ConfigError(f"cas.{name}.key", "the key does not match the CA certificate")

    def sign_bytes(self, data: bytes) -> tuple[bytes, str | None]:
        """A signature over ``data`` with the CA key and the name of its hash (None for Ed25519):
        what signs the manifest of an export bundle (``enroll export``)."""
        return self._signer.sign(data, self._hash), self._hash.name if self._hash is not None else None

    async def ca_chain(self) -> CAChain:
        """The published chain, issuer first (RFC 7030 §4.1.3)."""
        return self._chain

    async def sign(self, template: CertificateTemplate) -> x509.Certificate:
        """Sign exactly the template (RFC 5280 §4.1)."""
        b = (
            x509.CertificateBuilder()
            .subject_name(template.subject)
            .issuer_name(self._chain.issuer.subject)
            .public_key(template.public_key)
            .serial_number(template.serial)
            .not_valid_before(template.not_before)
            .not_valid_after(template.not_after)
        )
        for ext, critical in template.extensions:
            b = b.add_extension(ext, critical)
        return sign_certificate(b, self._signer, self._hash)

    async def sign_crl(
        self,
        revoked: list[x509.RevokedCertificate],
        number: int,
        this_update: dt.datetime,
        next_update: dt.datetime,
    ) -> x509.CertificateRevocationList:
        """Sign a CRL with CRL number and AKI (RFC 5280 §5.2.1, §5.2.3)."""
        issuer = self._chain.issuer
        # The builder copies its entry list on every add: hand it the whole list at once (O(n)).
        b = (
            x509.CertificateRevocationListBuilder(revoked_certificates=list(revoked))
            .issuer_name(issuer.subject)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(number), False)
        )
        try:
            ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        except x509.ExtensionNotFound:
            pass
        return sign_crl(b, self._signer, self._hash)
