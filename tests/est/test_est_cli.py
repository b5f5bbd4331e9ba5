"""`enroll est cacerts|csrattrs|enroll|reenroll|serverkeygen URL ...` against `enroll serve`."""

from __future__ import annotations

import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.harness import RunningServer


def est(serve: RunningServer, *args: str, check: bool = True, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "enroll", "est", *args], capture_output=True, text=True,
                          check=check, timeout=120, env=env)


def test_cli_every_operation(serve: RunningServer) -> None:
    w, ca = serve.work, str(serve.ca_bundle)
    est(serve, "cacerts", serve.base_https, "--ca-file", ca, "-o", str(w / "cacerts.pem"))
    assert len(x509.load_pem_x509_certificates((w / "cacerts.pem").read_bytes())) == 2
    out = est(serve, "csrattrs", serve.base_https, "--ca-file", ca).stdout
    assert "1.2.840.10045.2.1" in out
    est(serve, "enroll", serve.base_https, "--ca-file", ca, "-u", serve.init.est_user, "-p", serve.init.est_password,
        "--key", str(w / "dev.key"), "--subject", "CN=cli-dev", "--san", "dns:cli-dev.example",
        "-o", str(w / "dev.pem"))
    cert = x509.load_pem_x509_certificate((w / "dev.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=cli-dev"
    assert (w / "dev.key").stat().st_mode & 0o077 == 0
    est(serve, "reenroll", serve.base_https, "--ca-file", ca, "--client-cert", str(w / "dev.pem"),
        "--client-key", str(w / "dev.key"), "--rekey", "--key", str(w / "dev2.key"), "-o", str(w / "dev2.pem"))
    renewed = x509.load_pem_x509_certificate((w / "dev2.pem").read_bytes())
    assert renewed.subject == cert.subject and renewed.serial_number != cert.serial_number
    est(serve, "serverkeygen", serve.base_https, "--ca-file", ca, "-u", serve.init.est_user, "-p",
        serve.init.est_password, "--subject", "CN=cli-skg", "--key-out", str(w / "skg.key"),
        "-o", str(w / "skg.pem"))
    key = serialization.load_pem_private_key((w / "skg.key").read_bytes(), None)
    skg = x509.load_pem_x509_certificate((w / "skg.pem").read_bytes())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        skg.public_key().public_bytes(serialization.Encoding.DER, spki)
    assert serve.issued() == 3


def test_cli_wrong_password_fails_cleanly(serve: RunningServer) -> None:
    res = est(serve, "enroll", serve.base_https, "--ca-file", str(serve.ca_bundle), "-u", "estuser", "-p", "wrong",
              "--key", str(serve.work / "x.key"), "--subject", "CN=x", check=False)
    assert res.returncode != 0 and "401" in res.stderr
    assert serve.issued() == 0
