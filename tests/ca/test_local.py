"""ca/local.py: the local CA backend signs exactly the template it is given (RFC 5280 §4.1) and
CRLs carrying their number and the CA's key identifier (RFC 5280 §5.2.1, §5.2.3), with the key
it holds; a key that does not match the CA certificate is refused."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.api import CAChain, CertificateTemplate
from ca.errors import ConfigError
from ca.keys import FileKey
from ca.local import LocalCA
from enroll.pki import DevPKI
from tests.support import name

NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def _local(dev_pki: DevPKI) -> LocalCA:
    chain = CAChain(issuer=dev_pki.issuing.cert, chain=(dev_pki.issuing.cert, dev_pki.root.cert))
    return LocalCA("issuing", chain, FileKey(dev_pki.issuing.key))


def _template(serial: int = 0x1234_5678_9ABC_DEF0) -> CertificateTemplate:
    key = ec.generate_private_key(ec.SECP256R1())
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (x509.SubjectAlternativeName([x509.DNSName("gw-1.example")]), False),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
    )
    return CertificateTemplate(subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-1"),
                                                  x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-1")]),
                               public_key=key.public_key(), not_before=NOW, not_after=NOW + dt.timedelta(days=30),
                               serial=serial, extensions=extensions, profile="gateway")


async def test_sign_puts_exactly_the_template_into_the_certificate(dev_pki: DevPKI) -> None:
    template = _template()
    cert = await _local(dev_pki).sign(template)
    assert cert.serial_number == template.serial
    assert cert.subject == template.subject
    assert cert.issuer == dev_pki.issuing.cert.subject
    assert cert.public_key() == template.public_key
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (template.not_before, template.not_after)
    assert [(e.value, e.critical) for e in cert.extensions] == list(template.extensions)
    assert cert.version is x509.Version.v3
    cert.verify_directly_issued_by(dev_pki.issuing.cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


async def test_the_signature_is_the_ca_keys_over_the_tbs_certificate(dev_pki: DevPKI) -> None:
    cert = await _local(dev_pki).sign(_template())
    ca_public, root_public = dev_pki.issuing.cert.public_key(), dev_pki.root.cert.public_key()
    assert isinstance(ca_public, rsa.RSAPublicKey) and isinstance(root_public, rsa.RSAPublicKey)
    ca_public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(InvalidSignature):
        root_public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256())


async def test_the_chain_is_published_issuer_first(dev_pki: DevPKI) -> None:
    chain = await _local(dev_pki).ca_chain()
    assert chain.issuer == dev_pki.issuing.cert and chain.chain == (dev_pki.issuing.cert, dev_pki.root.cert)


async def test_sign_crl_carries_number_aki_and_the_entries(dev_pki: DevPKI) -> None:
    revoked = [x509.RevokedCertificateBuilder().serial_number(s).revocation_date(NOW).build() for s in (5, 7)]
    crl = await _local(dev_pki).sign_crl(revoked, 42, NOW, NOW + dt.timedelta(hours=24))
    assert crl.issuer == dev_pki.issuing.cert.subject
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    ski = dev_pki.issuing.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert (crl.last_update_utc, crl.next_update_utc) == (NOW, NOW + dt.timedelta(hours=24))
    assert sorted(r.serial_number for r in crl) == [5, 7]
    assert crl.is_signature_valid(dev_pki.issuing.cert.public_key())  # type: ignore[arg-type]
    assert not crl.is_signature_valid(dev_pki.root.cert.public_key())  # type: ignore[arg-type]


def _self_signed(key: ed25519.Ed25519PrivateKey, *, ski: bool) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(name("Ed CA")).issuer_name(name("Ed CA"))
         .public_key(key.public_key()).serial_number(1).not_valid_before(NOW - dt.timedelta(days=1))
         .not_valid_after(NOW + dt.timedelta(days=365))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), True))
    if ski:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    return b.sign(key, None)


async def test_an_ed25519_ca_signs_without_a_hash_and_a_crl_without_ski_has_no_aki() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    ca_cert = _self_signed(key, ski=False)
    local = LocalCA("ed", CAChain(issuer=ca_cert, chain=(ca_cert,)), FileKey(key))
    cert = await local.sign(_template(7))
    cert.verify_directly_issued_by(ca_cert)
    assert cert.signature_hash_algorithm is None
    crl = await local.sign_crl([], 1, NOW, NOW + dt.timedelta(hours=1))
    with pytest.raises(x509.ExtensionNotFound):
        crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert crl.is_signature_valid(key.public_key())
    signature, hash_name = local.sign_bytes(b"manifest")
    assert hash_name is None
    key.public_key().verify(signature, b"manifest")


def test_sign_bytes_signs_with_the_ca_key_and_names_the_hash(dev_pki: DevPKI) -> None:
    signature, hash_name = _local(dev_pki).sign_bytes(b"manifest")
    assert hash_name == "sha256"
    public = dev_pki.issuing.cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, b"manifest", padding.PKCS1v15(), hashes.SHA256())


def test_a_key_that_does_not_match_the_ca_certificate_is_refused(dev_pki: DevPKI) -> None:
    chain = CAChain(issuer=dev_pki.issuing.cert, chain=(dev_pki.issuing.cert,))
    with pytest.raises(ConfigError, match="does not match"):
        LocalCA("issuing", chain, FileKey(dev_pki.root.key))
