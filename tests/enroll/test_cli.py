"""The README's promises about the CLI, against a real `enroll serve` on loopback."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

from cryptography import x509

from tests.harness import RunningServer


def enroll_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "enroll", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_help_lists_every_command(tmp_path: Path) -> None:
    out = enroll_cli("--help", cwd=tmp_path).stdout
    for cmd in ("init", "serve", "certs", "revoke", "crl", "pending", "challenge", "config"):
        assert re.search(rf"^\s+{cmd}\b", out, re.M), cmd


def test_init_writes_pki_config_and_secrets(tmp_path: Path) -> None:
    res = enroll_cli("init", "--dir", str(tmp_path / "d"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    certs = tmp_path / "d" / "certs"
    for stem in ("root-ca", "issuing-ca", "scep-ra", "tls-server", "example-client"):
        assert (certs / f"{stem}.pem").exists()
        assert (certs / f"{stem}.key").stat().st_mode & 0o077 == 0
    tls = x509.load_pem_x509_certificates((certs / "tls-server.pem").read_bytes())[0]
    sans = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    check = enroll_cli("-c", str(tmp_path / "d" / "enroll.toml"), "config", "check", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    again = enroll_cli("init", "--dir", str(tmp_path / "d"), cwd=tmp_path)
    assert again.returncode != 0 and "--force" in again.stderr


def _get(url: str, cafile: Path | None = None) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:  # noqa: S310 - loopback only
        return resp.status, resp.read()


def test_serve_answers_on_both_listeners(running_server: RunningServer) -> None:
    s = running_server
    assert _get(f"{s.base_https}/health", s.ca_bundle) == (200, b"ok\n")
    assert _get(f"https://[::1]:{s.https_port}/health", s.ca_bundle)[0] == 200
    assert _get(f"{s.base_http}/health") == (200, b"ok\n")
    status, body = _get(f"{s.base_https}/metrics", s.ca_bundle)
    assert status == 200 and b"enroll_http_requests_total" in body


def test_revoke_and_crl_verify_with_openssl(running_server: RunningServer, tmp_path: Path) -> None:
    import asyncio

    from enroll.app import build_issuer
    from tests.support import make_csr, request

    s = running_server

    async def issue() -> int:
        issuer = build_issuer(s.config)
        try:
            out = await issuer.issue(request(make_csr("to-revoke")[0]))
            assert hasattr(out, "serial"), out
            return out.serial  # type: ignore[union-attr]
        finally:
            await issuer.ledger.close()

    serial = asyncio.run(issue())
    listing = s.enroll("certs", "list").stdout
    assert format(serial, "x") in listing and "CN=to-revoke" in listing
    assert "valid" in listing
    shown = s.enroll("certs", "show", format(serial, "x")).stdout
    assert "profile: gateway" in shown.replace("  ", " ") or "gateway" in shown
    exported = s.enroll("certs", "export", format(serial, "x")).stdout
    assert x509.load_pem_x509_certificate(exported.encode()).serial_number == serial
    s.enroll("revoke", format(serial, "x"), "--reason", "key_compromise")
    assert "revoked" in s.enroll("certs", "list").stdout
    crl_path = tmp_path / "crl.pem"
    s.enroll("crl", "--out", str(crl_path))
    verify = subprocess.run(["openssl", "crl", "-in", str(crl_path), "-CAfile",
                             str(s.init.certs_dir / "issuing-ca.pem"), "-noout", "-text"],
                            capture_output=True, text=True, timeout=30)
    assert "verify OK" in verify.stdout + verify.stderr, verify.stderr
    assert format(serial, "X").upper() in verify.stdout.replace(":", "").upper()
    assert "Key Compromise" in verify.stdout
    # the same CRL is served at the CDP URL over plain HTTP
    status, der = _get(f"{s.base_http}/crl/issuing.crl")
    assert status == 200 and x509.load_der_x509_crl(der).get_revoked_certificate_by_serial_number(serial)
    bad = s.enroll("revoke", "zz", check=False)
    assert bad.returncode != 0 and "hex serial" in bad.stderr


def test_pending_and_challenges_from_the_cli(running_server: RunningServer) -> None:
    s = running_server
    ch = s.enroll("challenge", "new", "--profile", "mdm", "--ttl", "60").stdout.strip()
    assert re.fullmatch(r"[A-Za-z0-9]{16,}", ch)
    bad = s.enroll("challenge", "new", "--profile", "nope", check=False)
    assert bad.returncode != 0 and "nope" in bad.stderr
    assert "ID" in s.enroll("pending", "list").stdout
    assert s.enroll("pending", "approve", "999", check=False).returncode != 0
    audit = s.enroll("audit").stdout
    assert "challenge-new" in audit and ch not in audit
