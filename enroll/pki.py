"""The embedded default's development PKI, made by ``enroll init`` (and by the tests).

Root CA -> issuing CA -> {SCEP RA, TLS server, example client}; plus a stand-in manufacturer CA
with an example IDevID for the bootstrap profile. Keys are written mode 0600. With
:func:`with_ndes_ra` the SCEP RA becomes the Microsoft NDES pair: a signing RA (digitalSignature)
and an encryption RA (keyEncipherment only), both issued by the issuing CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.keys import FileKey, Signer, default_hash, sign_certificate, write_private_key


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes


_FILE_KEYS = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, dsa.DSAPrivateKey, ed25519.Ed25519PrivateKey,
              ed448.Ed448PrivateKey)


@dataclass(frozen=True)
class TokenPair:
    """A certificate whose private key stays in a PKCS#11 token (ca/pkcs11.py), used through
    the :class:`ca.keys.Signer` it is."""

    cert: x509.Certificate
    key: Signer


def _name(cn: str, org: str = "Enroll Development") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    subject: x509.Name,
    key: CertificateIssuerPrivateKeyTypes | Signer,
    issuer: Pair | TokenPair | None,
    *,
    ca: bool = False,
    path_length: int | None = None,
    days: int = 3650,
    eku: list[x509.ObjectIdentifier] | None = None,
    sans: list[x509.GeneralName] | None = None,
    key_encipherment: bool = False,
    not_before: dt.datetime | None = None,
    digital_signature: bool = True,
) -> x509.Certificate:
    """One certificate with the extensions RFC 5280 §4.2 expects for its role."""
    now = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    signer_key = issuer.key if issuer else key
    issuer_name = issuer.cert.subject if issuer else subject
    pub = key.public_key()
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(pub)
        .serial_number(secrets.randbits(127) | (1 << 64))
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=key_encipherment,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), False)
    )
    if issuer is not None:
        ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), False)
    if isinstance(issuer, TokenPair):
        # A token key signs the TBSCertificate through the Signer (RFC 5280 §4.1.1.3).
        return sign_certificate(b, issuer.key, default_hash(issuer.key.public_key()))
    if not isinstance(signer_key, _FILE_KEYS):
        raise TypeError("a self-signed certificate needs a private key object")
    algorithm = hashes.SHA384() if isinstance(signer_key, ec.EllipticCurvePrivateKey) and \
        signer_key.curve.key_size >= 384 else hashes.SHA256()
    return b.sign(signer_key, algorithm)


def recertify(cert: x509.Certificate, public_key: CertificatePublicKeyTypes,
              issuer: Pair | TokenPair) -> x509.Certificate:
    """``cert`` again (subject, validity, extensions) for ``public_key``, issued by ``issuer``
    with a fresh serial: the key identifiers follow the new key and issuer (RFC 5280 §4.2.1.1-2).
    ``enroll init --pkcs11`` moves the development PKI's keys into a token with it."""
    b = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(issuer.cert.subject)
         .public_key(public_key).serial_number(secrets.randbits(127) | (1 << 64))
         .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc))
    for ext in cert.extensions:
        if not isinstance(ext.value, x509.SubjectKeyIdentifier | x509.AuthorityKeyIdentifier):
            b = b.add_extension(ext.value, ext.critical)
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
    ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
    signer: Signer = issuer.key if isinstance(issuer, TokenPair) else FileKey(issuer.key)
    return sign_certificate(b, signer, default_hash(signer.public_key()))


@dataclass(frozen=True)
class DevPKI:
    """Everything ``enroll init`` creates."""

    root: Pair
    issuing: Pair
    ra: Pair
    tls: Pair
    client: Pair
    manufacturer: Pair
    idevid: Pair
    ra_enc: Pair | None = None  # the NDES layout's encryption RA (with_ndes_ra); ra then only signs


def make_dev_pki(hostnames: tuple[str, ...] = ("localhost",),
                 addresses: tuple[str, ...] = ("127.0.0.1", "::1")) -> DevPKI:
    """Generate the development PKI in memory."""
    root_key = rsa.generate_private_key(65537, 3072)
    root = Pair(make_cert(_name("Enroll Dev Root CA"), root_key, None, ca=True, days=7300), root_key)
    iss_key = rsa.generate_private_key(65537, 2048)
    issuing = Pair(make_cert(_name("Enroll Dev Issuing CA"), iss_key, root, ca=True, path_length=0, days=3650),
                   iss_key)
    ra_key = rsa.generate_private_key(65537, 2048)
    ra = Pair(make_cert(_name("Enroll Dev SCEP RA"), ra_key, issuing, days=1825, key_encipherment=True), ra_key)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    tls = Pair(make_cert(_name(hostnames[0]), tls_key, issuing, days=825, eku=[ExtendedKeyUsageOID.SERVER_AUTH],
                         sans=sans), tls_key)
    cl_key = ec.generate_private_key(ec.SECP256R1())
    client = Pair(make_cert(_name("example-client"), cl_key, issuing, days=365,
                            eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), cl_key)
    mf_key = ec.generate_private_key(ec.SECP256R1())
    manufacturer = Pair(make_cert(_name("Example Manufacturer IDevID CA", "Example Manufacturer"), mf_key, None,
                                  ca=True, days=7300), mf_key)
    idev_key = ec.generate_private_key(ec.SECP256R1())
    idevid = Pair(make_cert(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-000001"),
                                       x509.NameAttribute(NameOID.COMMON_NAME, "sensor-000001")]),
                            idev_key, manufacturer, days=7300), idev_key)
    return DevPKI(root, issuing, ra, tls, client, manufacturer, idevid)


def with_ndes_ra(pki: DevPKI) -> DevPKI:
    """The same PKI with the Microsoft NDES RA layout (RFC 8894 §2.1.2 allows separate RA keys):
    a signing RA with digitalSignature only and an encryption RA with keyEncipherment only, as
    clients such as PyScep select them."""
    sign_key = rsa.generate_private_key(65537, 2048)
    sign = Pair(make_cert(_name("Enroll Dev SCEP RA"), sign_key, pki.issuing, days=1825), sign_key)
    enc_key = rsa.generate_private_key(65537, 2048)
    enc = Pair(make_cert(_name("Enroll Dev SCEP RA Encryption"), enc_key, pki.issuing, days=1825,
                         key_encipherment=True, digital_signature=False), enc_key)
    return replace(pki, ra=sign, ra_enc=enc)


def pem(*certs: x509.Certificate) -> bytes:
    """Certificates as concatenated PEM."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_dev_pki(pki: DevPKI, certs_dir: Path) -> None:
    """Write the PKI under ``certs_dir`` (certificates 0644, keys 0600)."""
    certs_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[Pair, tuple[x509.Certificate, ...]]] = {
        "root-ca": (pki.root, ()),
        "issuing-ca": (pki.issuing, ()),
        "scep-ra": (pki.ra, ()),
        "tls-server": (pki.tls, (pki.issuing.cert,)),
        "example-client": (pki.client, (pki.issuing.cert,)),
        "manufacturer-ca": (pki.manufacturer, ()),
        "example-idevid": (pki.idevid, ()),
    }
    if pki.ra_enc is not None:
        files["scep-ra-enc"] = (pki.ra_enc, ())
    for stem, (pair, extra) in files.items():
        (certs_dir / f"{stem}.pem").write_bytes(pem(pair.cert, *extra))
        write_private_key(certs_dir / f"{stem}.key", pair.key)
    (certs_dir / "ca-chain.pem").write_bytes(pem(pki.issuing.cert, pki.root.cert))
