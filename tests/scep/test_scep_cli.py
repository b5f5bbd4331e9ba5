"""`enroll scep ...` against `enroll serve` (subprocesses, loopback)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509

from tests.conftest import RunningServer


def test_cli_caps_cacert_enroll_renew_getcrl(scep_server: RunningServer, tmp_path: Path) -> None:
    url = f"{scep_server.base_http}/scep/anytime"
    caps = scep_server.enroll("scep", "caps", url).stdout.split()
    assert "SCEPStandard" in caps and "AES" in caps
    assert scep_server.enroll("scep", "cacert", url).stdout.count("BEGIN CERTIFICATE") == 3
    os.environ["SCEP_CHALLENGE"] = scep_server.init.scep_challenge
    try:
        scep_server.enroll("scep", "enroll", "-k", str(tmp_path / "k.pem"), "--cn", "cli-1",
                           "-o", str(tmp_path / "c.pem"), url)
    finally:
        del os.environ["SCEP_CHALLENGE"]
    assert oct((tmp_path / "k.pem").stat().st_mode & 0o777) == "0o600"
    first = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    assert first.subject.rfc4514_string() == "CN=cli-1"
    scep_server.enroll("scep", "renew", "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem"),
                       "--new-key", str(tmp_path / "k2.pem"), "-o", str(tmp_path / "c2.pem"), url)
    second = x509.load_pem_x509_certificate((tmp_path / "c2.pem").read_bytes())
    assert second.serial_number != first.serial_number and second.subject == first.subject
    crl = scep_server.enroll("scep", "getcrl", "--cert", str(tmp_path / "c2.pem"), "--key",
                             str(tmp_path / "k2.pem"), url).stdout
    assert crl.startswith("-----BEGIN X509 CRL-----")


def test_cli_wrong_challenge_fails(scep_server: RunningServer, tmp_path: Path) -> None:
    out = scep_server.enroll("scep", "enroll", "-k", str(tmp_path / "k.pem"), "--cn", "x", "--challenge", "bad",
                             f"{scep_server.base_http}/scep/anytime", check=False)
    assert out.returncode != 0 and "FAILURE" in out.stderr
