"""CA key rollover (RFC 4210 §4.4 "Root CA Key Update", RFC 7030 §4.1.3, RFC 8894 §3.5.2 and
§4.7): the next CA's certificate, the link certificates, and what a CA publishes meanwhile.

A rollover is between two CAs of the configuration: the current one (``[cas.OLD] next_ca =
"NEW"``) and its successor. Before ``activate_at`` the old CA issues and publishes the successor
(EST /cacerts carries the link certificates, SCEP GetNextCACert the successor); from then on the
old CA's profiles issue from the successor, while the old CA keeps signing CRLs and answering
OCSP and renewals for the certificates it signed, until the last of them expires.

For a root (a self-signed CA certificate) the old and new keys certify each other:

- NewWithNew: the new self-signed root;
- NewWithOld: the new public key signed with the old private key (relying parties that still
  trust only the old root reach certificates of the new CA through it);
- OldWithNew: the old public key signed with the new private key (relying parties that already
  trust the new root still validate certificates of the old CA).

An issuing CA (signed by a parent) is replaced by a new certificate from the same parent; no link
certificates are needed since both chain to the same anchor.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from ca.api import CABackend, CAChain, CertificateTemplate, SupportsCRL
from ca.errors import CAError
from ca.keys import FileKey, Signer, default_hash, sign_certificate

#: What ``enroll ca rollover --key-type`` accepts.
KEY_TYPES = ("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384")


def is_root(cert: x509.Certificate) -> bool:
    """A self-signed (and self-issued) CA certificate (RFC 5280 §3.2)."""
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # noqa: BLE001  (any failure means: not self-signed)
        return False
    return True


def new_key(key_type: str) -> CertificateIssuerPrivateKeyTypes:
    """A fresh CA key of one of :data:`KEY_TYPES`."""
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(65537, int(key_type[4:]))
    curves: dict[str, ec.EllipticCurve] = {"ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1()}
    if key_type not in curves:
        raise CAError(f"unknown key type {key_type!r}; use one of {', '.join(KEY_TYPES)}")
    return ec.generate_private_key(curves[key_type])


def key_type_of(pub: object) -> str:
    """The :data:`KEY_TYPES` name of a CA public key (the default for the next key)."""
    if isinstance(pub, rsa.RSAPublicKey):
        return f"rsa-{max(2048, pub.key_size)}"
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.key_size >= 384:
        return "ec-p384"
    return "ec-p256"


def _ski(cert_or_key: x509.Certificate | CertificateIssuerPublicKeyTypes) -> x509.SubjectKeyIdentifier:
    if isinstance(cert_or_key, x509.Certificate):
        try:
            return cert_or_key.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.SubjectKeyIdentifier.from_public_key(cert_or_key.public_key())
    return x509.SubjectKeyIdentifier.from_public_key(cert_or_key)


def ca_certificate(*, subject: x509.Name, public_key: CertificateIssuerPublicKeyTypes, issuer: x509.Name,
                   issuer_ski: x509.SubjectKeyIdentifier | None, signer: Signer, not_before: dt.datetime,
                   not_after: dt.datetime, path_length: int | None) -> x509.Certificate:
    """A CA certificate (RFC 5280 §4.2.1.9 basicConstraints cA, §4.2.1.3 keyCertSign and
    cRLSign, §4.2.1.1/§4.2.1.2 key identifiers), signed through ``signer``."""
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
         .serial_number(secrets.randbits(127) | (1 << 64))
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                      crl_sign=True, encipher_only=False, decipher_only=False), True)
         .add_extension(ski, False))
    if issuer_ski is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), False)
    return sign_certificate(b, signer, default_hash(signer.public_key()))


def _path_length(cert: x509.Certificate) -> int | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        return None


def with_cn(name: x509.Name, cn: str | None) -> x509.Name:
    """``name`` with its commonName replaced by ``cn`` (unchanged when ``cn`` is None)."""
    if cn is None:
        return name
    attrs = [a for a in name if a.oid != NameOID.COMMON_NAME]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class NextCA:
    """The product of a rollover: the successor's certificate and key, its chain above it, and
    for a root the link certificates (NewWithOld, OldWithNew)."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    chain: tuple[x509.Certificate, ...]  # parents of ``cert`` up to the anchor (empty for a root)
    new_with_old: x509.Certificate | None = None
    old_with_new: x509.Certificate | None = None

    @property
    def links(self) -> tuple[x509.Certificate, ...]:
        """The link certificates to publish (RFC 7030 §4.1.3)."""
        return tuple(c for c in (self.old_with_new, self.new_with_old) if c is not None)


def _validity(old: x509.Certificate, days: int | None, now: dt.datetime | None) -> tuple[dt.datetime, dt.timedelta]:
    """Where the next CA's validity starts (five minutes back, for clock skew) and how long it
    lasts: ``days``, or as long as ``old`` did."""
    start = (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(minutes=5)
    return start, dt.timedelta(days=days) if days else old.not_valid_after_utc - old.not_valid_before_utc


def next_root(old: x509.Certificate, old_signer: Signer, *, key_type: str | None = None, days: int | None = None,
              cn: str | None = None, now: dt.datetime | None = None) -> NextCA:
    """The next root and both link certificates (RFC 4210 §4.4). The new root lives as long as
    the old one did unless ``days`` says otherwise; the links live until the old root expires."""
    if not is_root(old):
        raise CAError("the current CA certificate is not self-signed: roll it over as an issuing CA")
    if old_signer.public_key() != old.public_key():
        raise CAError("the key does not match the current CA certificate")
    start, life = _validity(old, days, now)
    key = new_key(key_type or key_type_of(old.public_key()))
    signer = FileKey(key)
    subject = with_cn(old.subject, cn)
    pub = key.public_key()
    new_ski = x509.SubjectKeyIdentifier.from_public_key(pub)
    plen = _path_length(old)
    root = ca_certificate(subject=subject, public_key=pub, issuer=subject, issuer_ski=new_ski, signer=signer,
                          not_before=start, not_after=start + life, path_length=plen)
    link_end = min(old.not_valid_after_utc, start + life)
    new_with_old = ca_certificate(subject=subject, public_key=pub, issuer=old.subject, issuer_ski=_ski(old),
                                  signer=old_signer, not_before=start, not_after=link_end, path_length=plen)
    old_with_new = ca_certificate(subject=old.subject, public_key=old_signer.public_key(), issuer=subject,
                                  issuer_ski=new_ski, signer=signer, not_before=start, not_after=link_end,
                                  path_length=_path_length(old))
    return NextCA(root, key, (), new_with_old, old_with_new)


def next_issuing(old: x509.Certificate, parent: x509.Certificate, parent_signer: Signer,
                 parent_chain: Sequence[x509.Certificate] = (), *, key_type: str | None = None,
                 days: int | None = None, cn: str | None = None, now: dt.datetime | None = None) -> NextCA:
    """The next issuing CA, signed by the same parent as ``old`` (RFC 5280 §4.1.2.4); its
    validity ends no later than the parent's."""
    if old.issuer != parent.subject:
        raise CAError("the parent certificate is not the issuer of the current CA certificate")
    if parent_signer.public_key() != parent.public_key():
        raise CAError("the parent key does not match the parent certificate")
    start, life = _validity(old, days, now)
    end = min(start + life, parent.not_valid_after_utc)
    key = new_key(key_type or key_type_of(old.public_key()))
    cert = ca_certificate(subject=with_cn(old.subject, cn), public_key=key.public_key(), issuer=parent.subject,
                          issuer_ski=_ski(parent), signer=parent_signer, not_before=start, not_after=end,
                          path_length=_path_length(old))
    return NextCA(cert, key, (parent, *parent_chain))


def publication(chain: Sequence[x509.Certificate], *, successor: Sequence[x509.Certificate] = (),
                links: Sequence[x509.Certificate] = (),
                predecessor: Sequence[x509.Certificate] = (), predecessor_links: Sequence[x509.Certificate] = ()
                ) -> CAChain:
    """What a CA publishes (RFC 7030 §4.1.3, RFC 8894 §4.7).

    ``chain``: the CA's own chain, issuer first. While it has a ``successor`` (its chain,
    issuer first) it publishes the link certificates in EST /cacerts and the successor through
    SCEP GetNextCACert. A CA that succeeded a root publishes the old root (OldWithOld) and the
    links, so clients that trust only the old root can still reach it. A CA that succeeded an
    issuing CA publishes the old issuing CA, which the certificates it signed still chain through
    (RFC 7030 §4.1.3: every certificate needed to build a chain from an EST CA-issued certificate).
    """
    rollover: list[x509.Certificate] = []
    if successor:
        rollover += links
    if predecessor and is_root(predecessor[-1]) and predecessor[-1] not in chain:
        rollover += [predecessor[-1], *predecessor_links]
    if predecessor and not is_root(predecessor[0]) and predecessor[0] not in chain:
        rollover.append(predecessor[0])
    return CAChain(issuer=chain[0], chain=tuple(chain), rollover=tuple(dict.fromkeys(rollover)),
                   next_issuer=successor[0] if successor else None)


class RollingCA:
    """A CA backend with a successor (:class:`ca.api.RollsOver`): everything else is the wrapped
    backend's (signing, CRLs), so the CA keeps answering for what it signed."""

    def __init__(self, inner: CABackend, successor: str, activate_at: dt.datetime | None) -> None:
        self.inner = inner
        self.name = inner.name
        self._successor = successor
        self.activate_at = activate_at

    def successor(self, now: dt.datetime) -> str | None:
        """The successor's name once ``activate_at`` has passed (`enroll ca activate`)."""
        if self.activate_at is not None and now >= self.activate_at:
            return self._successor
        return None

    async def ca_chain(self) -> CAChain:
        """The wrapped CA's publication (rollover certificates included)."""
        return await self.inner.ca_chain()

    async def sign(self, template: CertificateTemplate) -> x509.Certificate:
        """Sign with the wrapped CA (RFC 5280 §4.1)."""
        return await self.inner.sign(template)

    async def sign_crl(self, revoked: list[x509.RevokedCertificate], number: int, this_update: dt.datetime,
                       next_update: dt.datetime) -> x509.CertificateRevocationList:
        """The old key keeps signing CRLs for its certificates (RFC 5280 §5)."""
        if not isinstance(self.inner, SupportsCRL):
            raise CAError(f"CA {self.name!r} cannot sign CRLs")
        return await self.inner.sign_crl(revoked, number, this_update, next_update)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)
