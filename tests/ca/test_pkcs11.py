"""PKCS#11 keys (ca/pkcs11.py) against a real SoftHSM2 token in a temporary directory.

SoftHSM2 reads ``SOFTHSM2_CONF`` when the module is initialised, once per process: one token
directory serves the whole test session, each test makes its own token (label) in it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca import pkcs11 as p11
from ca.api import CAChain, CertificateTemplate
from ca.errors import ConfigError
from ca.keys import probe
from ca.local import LocalCA
from enroll.pki import DevPKI
from enroll.setup import InitResult
from tests.lint import pkix_errors
from tests.softhsm import softhsm_setup

PIN = "2468"
TOKENS = 32
_labels = itertools.count(1)


@dataclass(frozen=True)
class SoftHSM:
    """A SoftHSM2 token directory and the [pkcs11] settings that reach it."""

    util: str
    conf: Path
    settings: p11.Settings

    def new_token(self) -> str:
        """The label of an unused token (user PIN ``PIN``). They are all made before the module is
        first loaded: SoftHSM2 lists its tokens once, at C_Initialize."""
        n = next(_labels)
        assert n <= TOKENS, "raise TOKENS"
        return f"t{n}"


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    base = tmp_path_factory.mktemp("softhsm")
    util, module, conf = softhsm_setup(base)
    for n in range(1, TOKENS + 1):
        subprocess.run([util, "--init-token", "--free", "--label", f"t{n}", "--pin", PIN, "--so-pin", "13579"],
                       check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(conf)})
    old = os.environ.get("SOFTHSM2_CONF"), os.environ.get("ENROLL_TEST_PIN")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ["ENROLL_TEST_PIN"] = PIN
    yield SoftHSM(util, conf, p11.Settings(module=module, pin_env="ENROLL_TEST_PIN"))
    for name, value in zip(("SOFTHSM2_CONF", "ENROLL_TEST_PIN"), old):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.mark.parametrize("key_type", ["rsa-2048", "rsa-3072", "ec-p256", "ec-p384"])
def test_token_key_signs_and_verifies_with_its_public_key(softhsm: SoftHSM, key_type: str) -> None:
    """RSA PKCS#1 v1.5 (RFC 8017 §8.2) and ECDSA with the raw r||s turned into DER (RFC 3279 §2.2.3)."""
    uri = f"pkcs11:token={softhsm.new_token()};object=ca"
    key = p11.generate_key(uri, softhsm.settings, "cas.hsm.key", key_type)
    pub = key.public_key()
    for algorithm in (hashes.SHA256(), hashes.SHA384()):
        sig = key.sign(b"tbs bytes", algorithm)
        if isinstance(pub, rsa.RSAPublicKey):
            assert pub.key_size == int(key_type[4:])
            pub.verify(sig, b"tbs bytes", padding.PKCS1v15(), algorithm)
        else:
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            assert pub.curve.name == {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}[key_type]
            pub.verify(sig, b"tbs bytes", ec.ECDSA(algorithm))
    reopened = p11.load_key(uri, softhsm.settings, "cas.hsm.key")
    assert reopened.public_key() == pub


def test_generated_key_is_sensitive_and_not_extractable(softhsm: SoftHSM) -> None:
    import pkcs11

    label = softhsm.new_token()
    p11.generate_key(f"pkcs11:token={label};object=ra", softhsm.settings, "scep.ra_key", "rsa-2048")
    token = pkcs11.lib(softhsm.settings.module).get_token(token_label=label)
    with token.open() as s:  # the pool keeps this token logged in
        priv = s.get_key(pkcs11.ObjectClass.PRIVATE_KEY, label="ra")
        assert priv[pkcs11.Attribute.SENSITIVE] and not priv[pkcs11.Attribute.EXTRACTABLE]
        with pytest.raises(pkcs11.PKCS11Error):
            priv[pkcs11.Attribute.PRIVATE_EXPONENT]


def test_ra_key_decrypts_pkcs1v15_and_oaep(softhsm: SoftHSM) -> None:
    """SCEP key transport: rsaEncryption (PKCS#1 v1.5) and RSAES-OAEP (RFC 8017 §7.1, SHA-1 default
    parameters, RFC 3560 §3); the RA probe at start-up does a round trip too."""
    key = p11.generate_key(f"pkcs11:token={softhsm.new_token()};object=ra", softhsm.settings, "scep.ra_key",
                           "rsa-2048")
    pub = key.public_key()
    assert isinstance(pub, rsa.RSAPublicKey)
    cek = os.urandom(32)
    for pad in (padding.PKCS1v15(), padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)):
        assert key.decrypt(pub.encrypt(cek, pad), pad) == cek
    with pytest.raises(ValueError):  # a block for another key: a plain failure, no token detail
        other = rsa.generate_private_key(65537, 2048).public_key()
        key.decrypt(other.encrypt(cek, padding.PKCS1v15()), padding.PKCS1v15())
    probe(key, "scep.ra_key", decrypt=True)


def token_ca(softhsm: SoftHSM, dev_pki: DevPKI, key_type: str = "rsa-2048") -> tuple[str, x509.Certificate]:
    """A subordinate CA whose key was generated in a fresh token, certified by the dev root."""
    uri = f"pkcs11:token={softhsm.new_token()};object=issuing-ca"
    key = p11.generate_key(uri, softhsm.settings, "cas.issuing.key", key_type)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    root = dev_pki.root
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Enroll Development"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "Enroll HSM Issuing CA")]))
            .issuer_name(root.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), False)
            .sign(root.key, hashes.SHA256()))
    return uri, cert


@pytest.mark.parametrize("key_type", ["rsa-2048", "ec-p384"])
async def test_token_ca_issues_certificates_and_crls_once_signed(softhsm: SoftHSM, dev_pki: DevPKI,
                                                                key_type: str) -> None:
    """RFC 5280 §4.1 / §5.1 through the token: verifies with the token's public key, lints clean."""
    uri, ca_cert = token_ca(softhsm, dev_pki, key_type)
    key = p11.load_key(uri, softhsm.settings, "cas.issuing.key")
    ca = LocalCA("issuing", CAChain(issuer=ca_cert, chain=(ca_cert, dev_pki.root.cert)), key)
    leaf = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    template = CertificateTemplate(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-1")]), public_key=leaf.public_key(),
        serial=x509.random_serial_number(), not_before=now, not_after=now + dt.timedelta(days=30),
        extensions=((x509.BasicConstraints(ca=False, path_length=None), True),
                    (x509.KeyUsage(True, False, False, False, False, False, False, False, False), True),
                    (x509.SubjectAlternativeName([x509.DNSName("device-1.example")]), False),
                    (x509.SubjectKeyIdentifier.from_public_key(leaf.public_key()), False),
                    (x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)))
    cert = await ca.sign(template)
    cert.verify_directly_issued_by(ca_cert)
    assert pkix_errors(cert.public_bytes(Encoding.DER)) == []
    revoked = x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(now).build()
    crl = await ca.sign_crl([revoked], 7, now, now + dt.timedelta(hours=1))
    assert crl.is_signature_valid(key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def test_uri_is_validated_and_errors_name_the_key(softhsm: SoftHSM) -> None:
    for bad, why in [("pkcs11:object=ca", "no token="), ("pkcs11:token=x", "names no key"),
                     ("pkcs11:token=x;object=a;type=cert", "type=cert"), ("pkcs11:token=x;object", "NAME=VALUE"),
                     ("pkcs11:token=x;object=a;color=red", "unknown attribute")]:
        with pytest.raises(ConfigError) as err:
            p11.parse_uri(bad, "cas.issuing.key")
        assert err.value.key == "cas.issuing.key" and why in str(err.value)
    parsed = p11.parse_uri("pkcs11:token=My%20HSM;object=ca;id=%01%02?pin-source=file:/run/pin", "k")
    assert (parsed.token, parsed.object, parsed.id, parsed.pin_source) == ("My HSM", "ca", b"\x01\x02",
                                                                          "file:/run/pin")
    assert p11.parse_uri(str(parsed), "k") == parsed


# --- start-up refusals: `enroll config check` in a fresh process -------------------------------------


def use_token_ca(init: InitResult, softhsm: SoftHSM, uri: str, ca_cert: x509.Certificate,
                 pin_env: str = "ENROLL_TEST_PIN") -> None:
    """Point [cas.issuing] of an `enroll init` directory at the token CA."""
    (init.certs_dir / "hsm-issuing-ca.pem").write_bytes(ca_cert.public_bytes(Encoding.PEM))
    text = init.config_path.read_text()
    old = 'cert = "certs/issuing-ca.pem"\nkey = "certs/issuing-ca.key"'
    assert text.count(old) == 1
    text = text.replace(old, f'cert = "certs/hsm-issuing-ca.pem"\nkey = "{uri}"')
    text += f'\n[pkcs11]\nmodule = "{softhsm.settings.module}"\npin_env = "{pin_env}"\n'
    init.config_path.write_text(text)


def config_check(init: InitResult, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "enroll", "-c", str(init.config_path), "config", "check"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_config_check_proves_the_token_key_signs(softhsm: SoftHSM, dev_pki: DevPKI, embedded: InitResult) -> None:
    uri, ca_cert = token_ca(softhsm, dev_pki)
    use_token_ca(embedded, softhsm, uri, ca_cert)
    done = config_check(embedded)
    assert done.returncode == 0, done.stderr


def test_wrong_pin_refuses_to_start_naming_the_key(softhsm: SoftHSM, dev_pki: DevPKI,
                                                   embedded: InitResult) -> None:
    uri, ca_cert = token_ca(softhsm, dev_pki)
    use_token_ca(embedded, softhsm, uri, ca_cert)
    done = config_check(embedded, ENROLL_TEST_PIN="0000")
    assert done.returncode != 0
    assert "cas.issuing.key" in done.stderr and "wrong PIN" in done.stderr


def test_missing_token_refuses_to_start_naming_the_key(softhsm: SoftHSM, dev_pki: DevPKI,
                                                       embedded: InitResult) -> None:
    uri, ca_cert = token_ca(softhsm, dev_pki)
    use_token_ca(embedded, softhsm, uri.replace("token=", "token=gone-"), ca_cert)
    done = config_check(embedded)
    assert done.returncode != 0
    assert "cas.issuing.key" in done.stderr and "no PKCS#11 token labelled" in done.stderr


def test_removed_key_refuses_to_start_naming_the_key(softhsm: SoftHSM, dev_pki: DevPKI,
                                                     embedded: InitResult) -> None:
    import pkcs11

    uri, ca_cert = token_ca(softhsm, dev_pki)
    label = p11.parse_uri(uri, "k").token
    with pkcs11.lib(softhsm.settings.module).get_token(token_label=label).open(rw=True) as s:
        for obj in s.get_objects({pkcs11.Attribute.LABEL: "issuing-ca"}):
            obj.destroy()
    use_token_ca(embedded, softhsm, uri, ca_cert)
    done = config_check(embedded)
    assert done.returncode != 0
    assert "cas.issuing.key" in done.stderr and "no private key" in done.stderr


# --- the EST serverkeygen signer (RFC 7030 §4.4.2) through the token --------------------------------


@pytest.mark.parametrize("key_type", ["rsa-2048", "ec-p256"])
def test_token_key_signs_the_server_generated_key_package(softhsm: SoftHSM, dev_pki: DevPKI, key_type: str) -> None:
    """The SignedData around a server-generated key is signed through the Signer: its signature
    verifies with the embedded certificate of the token key (RFC 5652 §5.6)."""
    from cryptography.hazmat.primitives import serialization

    from est import serverkeygen_cms

    uri, cert = token_ca(softhsm, dev_pki, key_type)
    signer = p11.load_key(uri, softhsm.settings, "est.serverkeygen_signer_key")
    p8 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    kek = serverkeygen_cms.KekRecipient(b"kek-1", os.urandom(32))
    der = serverkeygen_cms.build_server_generated_key(p8, signer_key=signer, signer_cert=cert, recipient=kek)
    opened = serverkeygen_cms.open_server_generated_key(der, kek=kek)
    assert opened.pkcs8_der == p8 and opened.signer == cert


def _token_serverkeygen_signer(embedded: InitResult, softhsm: SoftHSM, uri: str, cert: x509.Certificate) -> None:
    from tests.support import add_est_test_profiles

    (embedded.certs_dir / "skg-signer.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    text = embedded.config_path.read_text()
    assert text.count("[est]\n") == 1
    text = text.replace("[est]\n", f'[est]\nserverkeygen_signer_cert = "certs/skg-signer.pem"\n'
                                   f'serverkeygen_signer_key = "{uri}"\n')
    text += f'\n[pkcs11]\nmodule = "{softhsm.settings.module}"\npin_env = "ENROLL_TEST_PIN"\n'
    embedded.config_path.write_text(text)
    add_est_test_profiles(embedded)  # the skg profile (serverkeygen with a KEK): the signer is needed and loaded


def test_config_check_loads_a_token_serverkeygen_signer(softhsm: SoftHSM, dev_pki: DevPKI,
                                                        embedded: InitResult) -> None:
    uri, cert = token_ca(softhsm, dev_pki)
    _token_serverkeygen_signer(embedded, softhsm, uri, cert)
    done = config_check(embedded)
    assert done.returncode == 0, done.stderr
    wrong = config_check(embedded, ENROLL_TEST_PIN="0000")
    assert wrong.returncode != 0
    assert "est.serverkeygen_signer_key" in wrong.stderr and "wrong PIN" in wrong.stderr


def test_config_check_refuses_a_serverkeygen_signer_that_does_not_match_its_certificate(
        softhsm: SoftHSM, dev_pki: DevPKI, embedded: InitResult) -> None:
    uri, _ = token_ca(softhsm, dev_pki)
    _token_serverkeygen_signer(embedded, softhsm, uri, dev_pki.tls.cert)
    done = config_check(embedded)
    assert done.returncode != 0
    assert "est.serverkeygen_signer_key" in done.stderr and "does not match" in done.stderr
