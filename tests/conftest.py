"""Shared fixtures: a development PKI, an initialised embedded-default directory, an issuer, a
running server on free loopback ports, and CSR helpers. Everything is real: keys, SQLite files,
TLS on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
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
from enroll.app import build_issuer
from enroll.bench.server import free_port  # noqa: F401 - re-exported for the test packages
from enroll.config import Config, load_config
from enroll.pki import DevPKI, make_dev_pki
from enroll.setup import InitResult, init_directory

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run campaigns marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow campaign: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def dev_pki() -> DevPKI:
    """One development PKI for the whole session (key generation is the slow part)."""
    return make_dev_pki()


@pytest.fixture
def embedded(tmp_path: Path, dev_pki: DevPKI) -> InitResult:
    """A directory initialised like `enroll init` (session PKI, fresh secrets and SQLite file)."""
    return init_directory(tmp_path / "enroll", https_port=free_port(), http_port=free_port(), pki=dev_pki)


@pytest.fixture
def config(embedded: InitResult) -> Config:
    """The embedded default's validated config."""
    return load_config(embedded.config_path)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A private PostgreSQL cluster on 127.0.0.1 for the whole session (None if not installed)."""
    from tests.pg import cluster

    yield from cluster()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, embedded: InitResult) -> str:
    """Each ledger test runs on SQLite (a fresh file) and on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return load_config(embedded.config_path).ledger_url
    pg = request.getfixturevalue("pg_cluster")
    if pg is None:
        missing_peer("PostgreSQL (Debian postgresql)")
    return str(pg.new_database())


@pytest.fixture
async def issuer(config: Config, ledger_url: str) -> AsyncIterator[Issuer]:
    """A migrated issuer over the embedded default's config, on SQLite and on PostgreSQL."""
    import dataclasses

    config = dataclasses.replace(config, ledger_url=ledger_url)
    iss = build_issuer(config)
    await iss.ledger.migrate()
    yield iss
    from tests.lint import pkix_errors

    issued = await iss.ledger.list_certificates(limit=1_000_000)
    await iss.ledger.close()
    problems = [f"{r.serial:x}: {e}" for r in issued if r.der for e in pkix_errors(r.der)]
    assert not problems, problems


def assert_ledger_lints_clean(config: Config) -> None:
    """Every certificate a test issued passes pkilint's RFC 5280 checks (no ERROR/FATAL)."""
    from tests.lint import lint_sqlite_ledger

    if config.ledger_url.startswith("sqlite:///"):
        _, problems = lint_sqlite_ledger(Path(config.ledger_url[len("sqlite:///"):]))
        assert not problems, problems


def make_csr(
    cn: str = "device-1",
    key: Any = None,
    *,
    sans: list[x509.GeneralName] | None = None,
    extra_attrs: list[x509.NameAttribute] | None = None,
    extensions: list[tuple[x509.ExtensionType, bool]] | None = None,
    challenge: str | None = None,
    digest: hashes.HashAlgorithm | None = None,
) -> tuple[x509.CertificateSigningRequest, Any]:
    """A CSR signed by ``key`` (a fresh P-256 key by default)."""
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
    return b.sign(key, digest or hashes.SHA256()), key


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


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA key."""
    return rsa.generate_private_key(65537, bits)


OPERATOR = Requester(AuthMethod.BASIC, "estuser")


def request(csr: x509.CertificateSigningRequest, profile: str = "gateway", **kw: Any) -> IssueRequest:
    """An authenticated issue request for ``csr``."""
    kw.setdefault("requester", OPERATOR)
    kw.setdefault("channel", Channel.EST)
    return IssueRequest(csr=csr, profile=profile, **kw)


@dataclass
class RunningServer:
    """`enroll serve` in a subprocess on free loopback ports."""

    init: InitResult
    config: Config
    https_port: int
    http_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def base_http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ca_bundle(self) -> Path:
        """The trust anchor for the server's TLS certificate."""
        return self.init.certs_dir / "root-ca.pem"

    def enroll(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the `enroll` CLI against this server's config."""
        return subprocess.run([sys.executable, "-m", "enroll", "-c", str(self.init.config_path), *args],
                              capture_output=True, text=True, check=check, timeout=120)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the plain-HTTP listener answers /health (the app is up, the ledger migrated)."""
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"enroll serve exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"enroll serve did not answer on {port}: {log.read_text()}")


@contextmanager
def enroll_serve(config_path: Path, http_port: int, log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`enroll -c CONFIG serve ARGS` in a subprocess: started, waited for (/health), stopped.

    On exit the log tail is printed (pytest shows it for failed tests) and every certificate the
    server issued is linted with pkilint.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "enroll", "-c", str(config_path), "serve", *args],
                                stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    try:
        _wait_listening(http_port, proc, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        print("--- enroll serve log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-40:]))
    assert_ledger_lints_clean(load_config(config_path))


def start_server(tmp_path: Path, dev_pki: DevPKI,
                 edit: Callable[[InitResult], None] | None = None) -> Iterator[RunningServer]:
    """`enroll init` in ``tmp_path/srv`` (``edit`` may change its config), then `enroll serve`."""
    https_port, http_port = free_port(), free_port()
    init = init_directory(tmp_path / "srv", https_port=https_port, http_port=http_port, pki=dev_pki)
    if edit is not None:
        edit(init)
    log = tmp_path / "serve.log"
    with enroll_serve(init.config_path, http_port, log) as proc:
        yield RunningServer(init, load_config(init.config_path), https_port, http_port, proc, log)


@pytest.fixture
def running_server(tmp_path: Path, dev_pki: DevPKI) -> Iterator[RunningServer]:
    """`enroll init` + `enroll serve` in a temp dir on free ports; stopped after the test."""
    yield from start_server(tmp_path, dev_pki)
