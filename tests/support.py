"""The shared test helpers (one place for every package under tests/): peer gates, keys and CSRs,
issue requests, ledger counts, and the extra EST/SCEP profiles some tests append to the embedded
default. Fixtures live in tests/conftest.py, the server harness in tests/harness.py."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca.api import AuthMethod, Channel, IssueRequest, Requester
from ca.issuer import Issuer
from enroll.bench.server import free_port
from enroll.config import Config, load_config
from enroll.setup import InitResult, record_example_client

__all__ = [
    "EST_POP_PROFILE", "EST_PROFILES", "KEK", "KEK_ID", "OPERATOR", "ROOT", "TestPki", "SCEP_PROFILES", "add_est_test_profiles",
    "add_scep_test_profiles", "build_pki", "cached_rsa_key", "assert_ledger_lints_clean", "free_port", "issued", "issued_count", "ledger_file",
    "ledger_rows", "make_cert", "make_csr", "missing_peer", "name", "request", "require_tool", "resign_csr", "rsa_key",
]

ROOT = Path(__file__).resolve().parent.parent


# --- peers --------------------------------------------------------------------------------------

def missing_peer(what: str) -> NoReturn:
    """Skip a test whose peer (a Debian tool, PostgreSQL, root) is missing; fail it under CI
    (ENROLL_REQUIRE_INTEROP=1), where every peer must be there (`./dev test` installs them)."""
    if os.environ.get("ENROLL_REQUIRE_INTEROP") == "1":
        pytest.fail(f"{what} is required (ENROLL_REQUIRE_INTEROP=1) but missing")
    pytest.skip(f"{what} missing")


def require_tool(name: str) -> str:
    """The path of a Debian tool an interop test drives; skip (or fail under CI) if missing."""
    path = shutil.which(name) or (name if os.access(name, os.X_OK) else None)
    if path is None:
        missing_peer(name)
    return path


# --- keys, CSRs, requests -----------------------------------------------------------------------

def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA key."""
    return rsa.generate_private_key(65537, bits)


def make_csr(
    cn: str = "device-1",
    key: Any = None,
    *,
    sans: list[x509.GeneralName] | None = None,
    extra_attrs: list[x509.NameAttribute[Any]] | None = None,
    extensions: list[tuple[x509.ExtensionType, bool]] | None = None,
    challenge: str | None = None,
    digest: hashes.HashAlgorithm | None = None,
) -> tuple[x509.CertificateSigningRequest, Any]:
    """A CSR (RFC 2986) signed by ``key`` (a fresh P-256 key by default)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn), *(extra_attrs or [])]
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), False)
    for ext, crit in extensions or []:
        b = b.add_extension(ext, crit)
    if challenge is not None:
        from cryptography.x509.oid import AttributeOID

        b = b.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return b.sign(key, digest or hashes.SHA256()), key  # type: ignore[arg-type]  # any digest, on purpose


def resign_csr(csr: x509.CertificateSigningRequest, key: rsa.RSAPrivateKey,
               digest: hashes.HashAlgorithm) -> x509.CertificateSigningRequest:
    """The same CSR signed with a legacy digest (SHA-1, MD5) that cryptography's builder refuses."""
    from asn1crypto import csr as acsr
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    parsed = acsr.CertificationRequest.load(csr.public_bytes(serialization.Encoding.DER))
    info = parsed["certification_request_info"]
    alg = {"sha1": "sha1_rsa", "md5": "md5_rsa", "sha256": "sha256_rsa"}[digest.name]
    out = acsr.CertificationRequest({"certification_request_info": info, "signature_algorithm": {"algorithm": alg},
                                     "signature": key.sign(info.dump(), padding.PKCS1v15(), digest)})
    return x509.load_der_x509_csr(out.dump())


_KEYS: list[rsa.RSAPrivateKey] = []


def cached_rsa_key(index: int = 0) -> rsa.RSAPrivateKey:
    """The ``index``-th of a pool of RSA-2048 keys kept for the session (key generation
    dominates test time otherwise); ``rsa_key`` gives a fresh one."""
    while len(_KEYS) <= index:
        _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _KEYS[index]


def name(cn: str) -> x509.Name:
    """A Name with one CN."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    key: rsa.RSAPrivateKey,
    subject: str,
    issuer_key: rsa.RSAPrivateKey | None = None,
    issuer: x509.Certificate | None = None,
    *,
    ca: bool = False,
    serial: int | None = None,
    days: int = 30,
) -> x509.Certificate:
    """An RSA certificate for ``subject``, self-signed unless ``issuer``/``issuer_key`` are given
    (RFC 5280 §4.1; a CA when ``ca``)."""
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer.subject if issuer else name(subject))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(issuer_key or key, hashes.SHA256())


@dataclass
class TestPki:
    """A throwaway CA, a client key with a self-signed signer (RFC 8894 §2.3), and an unrelated
    key and certificate."""

    __test__ = False
    ca_key: rsa.RSAPrivateKey
    ca: x509.Certificate
    client_key: rsa.RSAPrivateKey
    client_self_signed: x509.Certificate
    other_key: rsa.RSAPrivateKey
    other_cert: x509.Certificate


def build_pki() -> TestPki:
    """The ``TestPki`` over the first three cached keys."""
    ca_key = cached_rsa_key(0)
    ca = make_cert(ca_key, "SCEP Test CA", ca=True, days=365)
    client_key = cached_rsa_key(1)
    other_key = cached_rsa_key(2)
    return TestPki(
        ca_key=ca_key,
        ca=ca,
        client_key=client_key,
        client_self_signed=make_cert(client_key, "client"),
        other_key=other_key,
        other_cert=make_cert(other_key, "Someone else"),
    )


OPERATOR = Requester(AuthMethod.BASIC, "estuser")


def request(csr: x509.CertificateSigningRequest, profile: str = "gateway", **kw: Any) -> IssueRequest:
    """An authenticated issue request for ``csr``."""
    kw.setdefault("requester", OPERATOR)
    kw.setdefault("channel", Channel.EST)
    return IssueRequest(csr=csr, profile=profile, **kw)


# --- the ledger ---------------------------------------------------------------------------------

def ledger_file(config: Config) -> Path:
    """The SQLite file behind ``config``'s ledger."""
    assert config.ledger_url.startswith("sqlite:///"), config.ledger_url
    return Path(config.ledger_url[len("sqlite:///"):])


def ledger_rows(config: Config) -> dict[str, int]:
    """Certificate rows by status (reserved, issued, abandoned...), read from the SQLite file."""
    with sqlite3.connect(ledger_file(config), timeout=30) as db:
        return dict(db.execute("SELECT status, count(*) FROM certificates GROUP BY status").fetchall())


def issued_count(config: Config, channels: Sequence[str] = ()) -> int:
    """Issued certificates in the SQLite ledger (only those that came in on ``channels``, when
    given); a negative test compares it before and after."""
    query = "SELECT count(*) FROM certificates WHERE status = 'issued'"
    if channels:
        query += f" AND channel IN ({','.join('?' * len(channels))})"
    with sqlite3.connect(ledger_file(config), timeout=30) as db:
        return int(db.execute(query, tuple(channels)).fetchone()[0])


async def issued(issuer: Issuer, channels: Sequence[str] = ()) -> int:
    """Issued certificates in ``issuer``'s ledger, on any backend (SQLite or PostgreSQL)."""
    return await issuer.ledger.count_certificates("issued", channels=channels)


def assert_ledger_lints_clean(config: Config) -> None:
    """Every certificate a test issued passes pkilint's RFC 5280 checks (no ERROR/FATAL)."""
    from tests.lint import lint_sqlite_ledger

    if config.ledger_url.startswith("sqlite:///"):
        _, problems = lint_sqlite_ledger(ledger_file(config))
        assert not problems, problems


# --- extra profiles -----------------------------------------------------------------------------

#: An EST label "pop" whose profile requires PoP linking with tls-unique (RFC 7030 §3.5).
EST_POP_PROFILE = """
[profiles.popgw]
ca = "issuing"
validity_days = 30
key_types = ["ec-p256", "rsa-2048"]
key_usage = ["digital_signature"]
extended_key_usage = ["client_auth"]
[profiles.popgw.subject]
allow = ["CN"]
require = ["CN"]
[profiles.popgw.est]
labels = ["pop"]
auth = ["basic"]
pop = "tls-unique"
"""

#: EST profiles appended to the embedded default: the PoP label, one wanting Basic and a client
#: certificate, and server-side key generation with a KEK (RFC 7030 §4.4).
EST_PROFILES = EST_POP_PROFILE + """
[profiles.both]
ca = "issuing"
validity_days = 30
key_types = ["ec-p256"]
key_usage = ["digital_signature"]
extended_key_usage = ["client_auth"]
[profiles.both.subject]
allow = ["CN"]
require = ["CN"]
[profiles.both.est]
labels = ["both"]
auth = ["basic+client-cert"]
client_trust = ["enroll"]
client_profiles = ["gateway"]   # the example client is recorded under gateway

[profiles.skg]
ca = "issuing"
validity_days = 30
key_types = ["ec-p256"]
key_usage = ["digital_signature"]
extended_key_usage = ["client_auth"]
[profiles.skg.subject]
allow = ["CN"]
require = ["CN"]
[profiles.skg.san]
allow = ["dns"]
[profiles.skg.est]
labels = ["skg"]
auth = ["basic"]
csr_template = true
serverkeygen_keks = { "6b656b2d31" = "kek-1.hex" }
"""

KEK_ID = bytes.fromhex("6b656b2d31")  # "kek-1"
KEK = bytes(range(32))


def add_est_test_profiles(init: InitResult) -> Config:
    """Append ``EST_PROFILES`` and the KEK file, record the example client certificate (as
    `enroll init` does), then load the config."""
    base = init.config_path.parent
    (base / "kek-1.hex").write_text(KEK.hex() + "\n")
    (base / "kek-1.hex").chmod(0o600)  # a KEK is a secret key: group/world-readable is refused
    with open(init.config_path, "a") as fh:
        fh.write(EST_PROFILES)
    record_example_client(init.config_path)
    return load_config(init.config_path)


#: SCEP profiles appended to the embedded default: renewal at any time (no window), legacy
#: algorithms, a profile with a renewal window, a strict modern profile and one that also allows
#: MD5 (allow_md5). All reuse the router's static challenge hash.
SCEP_PROFILES = """
[profiles.anytime]
ca = "issuing"
validity_days = 30
key_types = ["rsa-2048", "rsa-3072", "rsa-4096"]
key_usage = ["digital_signature", "key_encipherment"]
extended_key_usage = ["client_auth"]
allow_legacy_digests = true
[profiles.anytime.subject]
allow = ["CN", "O", "OU", "C"]
require = ["CN"]
[profiles.anytime.scep]
auth = ["challenge"]
challenge_hash = "{hash}"
allow_legacy = true

[profiles.windowed]
ca = "issuing"
validity_days = 365
renewal_window_days = 60
key_types = ["rsa-2048", "rsa-3072", "rsa-4096"]
key_usage = ["digital_signature", "key_encipherment"]
extended_key_usage = ["client_auth"]
[profiles.windowed.subject]
allow = ["CN"]
[profiles.windowed.scep]
auth = ["challenge"]
challenge_hash = "{hash}"

[profiles.modern]
ca = "issuing"
validity_days = 30
key_types = ["rsa-2048", "rsa-3072", "rsa-4096"]
key_usage = ["digital_signature", "key_encipherment"]
extended_key_usage = ["client_auth"]
[profiles.modern.subject]
allow = ["CN", "O", "OU", "C"]
require = ["CN"]
[profiles.modern.scep]
auth = ["challenge"]
challenge_hash = "{hash}"

[profiles.md5ok]
ca = "issuing"
validity_days = 30
key_types = ["rsa-2048"]
key_usage = ["digital_signature", "key_encipherment"]
extended_key_usage = ["client_auth"]
[profiles.md5ok.subject]
allow = ["CN"]
require = ["CN"]
[profiles.md5ok.scep]
auth = ["challenge"]
challenge_hash = "{hash}"
allow_legacy = true
allow_md5 = true
"""


def add_scep_test_profiles(config_path: Path, extra: str = "") -> None:
    """Append ``SCEP_PROFILES`` (and ``extra`` TOML) to an initialised enroll.toml."""
    text = config_path.read_text()
    m = re.search(r'challenge_hash = "([^"]+)"', text)
    assert m, "the embedded default has a SCEP challenge hash"
    config_path.write_text(text + SCEP_PROFILES.replace("{hash}", m.group(1)) + extra)


def suite_result(report: dict[str, Any], check_id: str) -> dict[str, Any]:
    """One check's result in a conformance JSON report."""
    return next(r for r in report["results"] if r["id"] == check_id)


def rewrite_config(init: InitResult, old: str, new: str) -> Path:
    """Replace the first ``old`` in an initialised directory's config with ``new`` (``old`` must be there)."""
    text = init.config_path.read_text()
    assert old in text
    init.config_path.write_text(text.replace(old, new, 1))
    return init.config_path


def der_len(n: int) -> bytes:
    """A DER definite length (X.690 §8.1.3)."""
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    """One DER TLV with a one-byte tag (X.690 §8.1)."""
    return bytes([tag]) + der_len(len(content)) + content
