"""Interop: real SCEP clients from Debian against `enroll serve` on 127.0.0.1.

micromdm scepclient (legacy DES/SHA-1: static and one-time challenge, renewal), strongSwan
``pki --scepca/--scep`` (enroll, renewal with the old certificate, manual approval completed by
polling) and certmonger's ``scep-submit`` run directly (GetCACaps, GetCACert, an enrollment).
Every test runs against both RA layouts: the single RA of the embedded default and the Microsoft
NDES pair of ``enroll init --ndes-ra`` (a signing and an encryption RA certificate).
Skipped when a tool is missing unless ENROLL_REQUIRE_INTEROP=1.
"""

from __future__ import annotations


import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enroll.pki import DevPKI, with_ndes_ra
from scep import cms
from scep.message import PkiMessage, new_nonce
from tests.harness import RunningServer, start_server
from tests.support import add_scep_test_profiles, ledger_file, require_tool

pytestmark = pytest.mark.interop

TIMEOUT = 60


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} exited {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


@pytest.fixture(params=["single-ra", "ndes-ra"])
def scep_server(request: pytest.FixtureRequest, tmp_path: Path, dev_pki: DevPKI) -> Iterator[RunningServer]:
    """`enroll serve` with the SCEP test profiles, in each RA layout (overrides tests/scep/conftest.py)."""
    pki = with_ndes_ra(dev_pki) if request.param == "ndes-ra" else dev_pki
    with start_server(tmp_path, pki, lambda init: add_scep_test_profiles(init.config_path)) as srv:
        yield srv


def _db(server: RunningServer) -> sqlite3.Connection:
    return sqlite3.connect(ledger_file(server.config), timeout=10)


def pending_ids(server: RunningServer) -> list[int]:
    con = _db(server)
    try:
        return [int(r[0]) for r in con.execute("SELECT id FROM pending_requests WHERE status = 'pending'")]
    finally:
        con.close()


def load_pem_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- micromdm scepclient ------------------------------------------------------------------------

def scepclient(server: RunningServer, profile: str, d: Path, challenge: str | None, cn: str,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = require_tool("scepclient")
    d.mkdir(exist_ok=True)
    cmd = [exe, "-server-url", f"{server.base_http}/scep/{profile}", "-private-key", str(d / "key.pem"),
           "-certificate", str(d / "cert.pem"), "-cn", cn, "-organization", "interop"]
    if challenge is not None:
        cmd += ["-challenge", challenge]
    return run(cmd, cwd=d, check=check)


def test_scepclient_static_challenge_then_renewal(scep_server: RunningServer, tmp_path: Path) -> None:
    d = tmp_path / "sc"
    scepclient(scep_server, "anytime", d, scep_server.init.scep_challenge, "scepclient-interop")
    first = load_pem_cert(d / "cert.pem")
    assert first.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "scepclient-interop"
    assert "Enroll Dev Issuing CA" in first.issuer.rfc4514_string()
    # cert.pem exists now: scepclient sends RenewalReq (17) signed by it, no challenge
    scepclient(scep_server, "anytime", d, None, "scepclient-interop")
    renewed = load_pem_cert(d / "cert.pem")
    assert renewed.serial_number != first.serial_number
    assert renewed.public_key() == first.public_key()


def test_scepclient_one_time_challenge_and_reuse(scep_server: RunningServer, tmp_path: Path) -> None:
    otc = scep_server.enroll("challenge", "new", "--profile", "router").stdout.strip().split()[-1]
    scepclient(scep_server, "router", tmp_path / "a", otc, "otc-1")
    assert (tmp_path / "a" / "cert.pem").exists()
    before = scep_server.issued()
    bad = scepclient(scep_server, "router", tmp_path / "b", otc, "otc-2", check=False)
    assert bad.returncode != 0
    assert not (tmp_path / "b" / "cert.pem").exists()
    assert scep_server.issued() == before


def test_scepclient_wrong_challenge_issues_nothing(scep_server: RunningServer, tmp_path: Path) -> None:
    before = scep_server.issued()
    bad = scepclient(scep_server, "anytime", tmp_path / "w", "wrong-challenge", "wrong", check=False)
    assert bad.returncode != 0
    assert scep_server.issued() == before


def test_scepclient_refused_by_a_modern_profile(scep_server: RunningServer, tmp_path: Path) -> None:
    """scepclient only speaks DES + SHA-1: a profile without allow_legacy refuses it."""
    before = scep_server.issued()
    bad = scepclient(scep_server, "modern", tmp_path / "m", scep_server.init.scep_challenge, "modern", check=False)
    assert bad.returncode != 0
    assert scep_server.issued() == before


# --- strongSwan pki -------------------------------------------------------------------------------

def _scepca(server: RunningServer, profile: str, d: Path) -> list[str]:
    """`pki --scepca`: writes ca.der (root), ca-1.der (issuing), ca-ra.der (RA); returns --cacert args."""
    exe = require_tool("pki")
    d.mkdir(exist_ok=True)
    out = run([exe, "--scepca", "--url", f"{server.base_http}/scep/{profile}", "--caout", str(d / "ca.der")], cwd=d)
    assert "RA cert" in out.stderr + out.stdout
    for name in ("ca.der", "ca-1.der", "ca-ra.der"):
        assert (d / name).exists(), name
    return ["--cacert-enc", str(d / "ca-ra.der"), "--cacert-sig", str(d / "ca-ra.der"),
            "--cacert", str(d / "ca.der"), "--cacert", str(d / "ca-1.der")]


def _pki_key(d: Path, name: str) -> Path:
    path = d / name
    key = rsa.generate_private_key(65537, 2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _pki_scep(server: RunningServer, profile: str, d: Path, cas: list[str], key: Path, dn: str, out: Path,
              *extra: str) -> list[str]:
    return [require_tool("pki"), "--scep", "--url", f"{server.base_http}/scep/{profile}", "--in", str(key),
            "--dn", dn, *cas, "--interval", "1", "--maxpolltime", "30", "--outform", "pem", *extra]


def test_strongswan_enroll_and_renew(scep_server: RunningServer, tmp_path: Path) -> None:
    d = tmp_path / "ss"
    cas = _scepca(scep_server, "anytime", d)
    key = _pki_key(d, "key.pem")
    first = run(_pki_scep(scep_server, "anytime", d, cas, key, "CN=strongswan-interop", d / "cert.pem",
                          "--password", scep_server.init.scep_challenge), cwd=d)
    (d / "cert.pem").write_text(first.stdout)
    cert = load_pem_cert(d / "cert.pem")
    assert cert.subject.rfc4514_string() == "CN=strongswan-interop"
    # renewal: RenewalReq signed by the old certificate, new key, no challenge
    new_key = _pki_key(d, "new.pem")
    renewed = run(_pki_scep(scep_server, "anytime", d, cas, new_key, "CN=strongswan-interop", d / "new.pem",
                            "--cert", str(d / "cert.pem"), "--key", str(key)), cwd=d)
    new_cert = x509.load_pem_x509_certificate(renewed.stdout.encode())
    assert new_cert.serial_number != cert.serial_number
    assert new_cert.public_key() != cert.public_key()  # pki renewed with the new key
    assert new_cert.subject == cert.subject


def test_strongswan_manual_approval_completed_by_polling(scep_server: RunningServer, tmp_path: Path) -> None:
    d = tmp_path / "ssm"
    cas = _scepca(scep_server, "manual", d)
    key = _pki_key(d, "key.pem")
    cmd = _pki_scep(scep_server, "manual", d, cas, key, "CN=strongswan-manual", d / "cert.pem",
                    "--password", scep_server.init.scep_challenge)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=d)
    try:
        ids: list[int] = []
        for _ in range(100):  # bounded: 20 s
            ids = pending_ids(scep_server)
            if ids or proc.poll() is not None:
                break
            import time

            time.sleep(0.2)
        assert ids, "the request should wait for an operator"
        assert scep_server.issued() == 0
        scep_server.enroll("pending", "approve", str(ids[0]))
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    cert = x509.load_pem_x509_certificate(stdout.encode())
    assert cert.subject.rfc4514_string() == "CN=strongswan-manual"


def test_strongswan_wrong_challenge_issues_nothing(scep_server: RunningServer, tmp_path: Path) -> None:
    d = tmp_path / "ssw"
    cas = _scepca(scep_server, "anytime", d)
    key = _pki_key(d, "key.pem")
    before = scep_server.issued()
    bad = run(_pki_scep(scep_server, "anytime", d, cas, key, "CN=nope", d / "c.pem", "--password", "wrong"),
              cwd=d, check=False)
    assert bad.returncode != 0
    assert scep_server.issued() == before


# --- certmonger scep-submit -------------------------------------------------------------------------

SCEP_SUBMIT = "/usr/lib/certmonger/scep-submit"


def test_certmonger_scep_submit_caps_cacert_and_enroll(scep_server: RunningServer, tmp_path: Path) -> None:
    exe = require_tool(SCEP_SUBMIT)
    url = f"{scep_server.base_http}/scep/anytime"
    caps = run([exe, "-u", url, "-c"]).stdout.split()
    assert {"AES", "POSTPKIOperation", "SHA-256", "SCEPStandard"} <= set(caps)
    pem = run([exe, "-u", url, "-C"]).stdout
    certs = x509.load_pem_x509_certificates(pem.encode())
    ra = certs[0]
    issuing = [c for c in certs[1:] if c.subject != c.issuer
               and c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca][0]
    assert "SCEP RA" in ra.subject.rfc4514_string()
    root = [c for c in certs if c.subject == c.issuer][0]
    (tmp_path / "ra.pem").write_bytes(ra.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    # scep-submit cannot build a request: give it a certmonger-like pkiMessage (AES-256, SHA-256)
    key = rsa.generate_private_key(65537, 2048)
    from scep.client import self_signed_signer, simple_csr

    csr = simple_csr(key, "certmonger-interop", scep_server.init.scep_challenge)
    signer = self_signed_signer(key, csr.subject)
    der = PkiMessage(19, "CERTMONGER-INTEROP", new_nonce()).build(
        csr.public_bytes(serialization.Encoding.DER), signer_cert=signer, sign=cms.rsa_signer(key),
        recipient=ra, cipher="aes256", digest="sha256")
    import base64

    (tmp_path / "msg.pem").write_text("-----BEGIN PKCS7-----\n" + base64.encodebytes(der).decode()
                                      + "-----END PKCS7-----\n")
    out = run([exe, "-u", url, "-r", str(tmp_path / "ra.pem"), "-N", str(tmp_path / "root.pem"),
               "-p", str(tmp_path / "msg.pem")])
    # exit 0 = issued; stdout is the pkcsPKIEnvelope, encrypted to our signer
    body = out.stdout.split("-----BEGIN PKCS7-----")[1].split("-----END PKCS7-----")[0]
    envelope = base64.b64decode("".join(body.split()))
    opened = cms.decrypt_enveloped(envelope, key.decrypt, [signer], {"aes256"})
    issued, _ = cms.parse_certs_only(opened.plaintext)
    assert issued[0].public_key() == key.public_key()
    assert issuing.subject == issued[0].issuer


