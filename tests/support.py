"""The shared test helpers (one place for every package under tests/): peer gates, keys and CSRs,
issue requests, ledger counts, and the extra EST/SCEP profiles some tests append to the embedded
default. Fixtures live in tests/conftest.py, the server harness in tests/harness.py."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from collections.abc import Sequence
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
    "EST_POP_PROFILE", "EST_PROFILES", "KEK", "KEK_ID", "OPERATOR", "ROOT", "SCEP_PROFILES", "add_est_test_profiles",
    "add_scep_test_profiles", "assert_ledger_lints_clean", "free_port", "issued", "issued_count", "ledger_file",
    "ledger_rows", "make_csr", "missing_peer", "request", "require_tool", "resign_csr", "rsa_key", "s_client_renegotiation",
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


def s_client_renegotiation(port: int, ca_bundle: Path) -> bytes:
    """What `openssl s_client` prints when, on a TLS 1.2 session with 127.0.0.1:``port``, it asks
    for a renegotiation (its interactive "R") and then sends a GET /health (RFC 5746 §4.3:
    a server may refuse renegotiation with a no_renegotiation alert)."""
    import subprocess
    import time

    proc = subprocess.Popen([require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
                             "-CAfile", str(ca_bundle), "-tls1_2", "-cipher", "ECDHE+AESGCM"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdin is not None
    try:
        time.sleep(1.0)
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        time.sleep(1.0)
        try:
            proc.stdin.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            proc.stdin.flush()
            time.sleep(1.0)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # s_client already exited on the alert
        out = proc.stdout.read() if proc.stdout else b""
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    return out


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
