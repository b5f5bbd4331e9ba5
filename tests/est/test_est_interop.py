"""Interop: real third-party EST clients against `enroll serve` (a subprocess on loopback).

strongSwan `pki --estca/--est` 5.9.8 (Basic enroll, reenroll over mTLS with the old cert+key,
pending-then-approved through its own polling) and curl + openssl (every endpoint, serverkeygen
split and key load, csrattrs asn1parse, RFC 8951 body variants), plus the negative cases, each
checking that nothing was issued. Skipped when a tool is missing unless ENROLL_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enroll.config import load_config
from enroll.pki import DevPKI
from enroll.setup import InitResult, init_directory
from est import asn1, wire
from tests.harness import RunningServer
from tests.support import require_tool

pytestmark = pytest.mark.interop


def run(args: list[str], *, cwd: Path, input: bytes | None = None, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    res = subprocess.run(args, cwd=cwd, input=input, capture_output=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({res.returncode}):\n{res.stdout.decode(errors='replace')}\n"
                             f"{res.stderr.decode(errors='replace')}")
    return res


# --- strongSwan pki ------------------------------------------------------------------------


def pki_key_and_req(pki: str, work: Path, stem: str, cn: str, *, san: bool = True) -> tuple[Path, Path]:
    key, req = work / f"{stem}.key", work / f"{stem}.der"
    key.write_bytes(run([pki, "--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"], cwd=work).stdout)
    sans = ["--san", f"{cn}.example"] if san else []
    req.write_bytes(run([pki, "--req", "--type", "priv", "--in", str(key), "--dn", f"CN={cn}", *sans,
                         "--outform", "der"], cwd=work).stdout)
    return key, req


def test_strongswan_estca_enroll_and_reenroll(serve: RunningServer) -> None:
    pki = require_tool("pki")
    w = serve.work
    run([pki, "--estca", "--url", serve.base_https, "--cacert", str(serve.ca_bundle), "--caout", str(w / "ca.pem"),
         "--outform", "pem", "--force"], cwd=w)
    assert list(w.glob("ca*.pem")), "pki --estca wrote no CA certificate"
    key, req = pki_key_and_req(pki, w, "gw", "gw-strongswan")
    out = run([pki, "--est", "--url", serve.base_https, "--cacert", str(serve.ca_bundle), "--in", str(req),
               "--userpass", serve.userpass, "--outform", "pem"], cwd=w).stdout
    cert = x509.load_pem_x509_certificate(out)
    assert cert.subject.rfc4514_string() == "CN=gw-strongswan"
    (w / "gw.pem").write_bytes(out)
    # reenroll over mTLS with the old certificate and key, new key, same subject and SAN
    new_key, new_req = pki_key_and_req(pki, w, "gw2", "gw-strongswan")
    out2 = run([pki, "--est", "--url", serve.base_https, "--cacert", str(serve.ca_bundle), "--in", str(new_req),
                "--cert", str(w / "gw.pem"), "--key", str(key), "--outform", "pem"], cwd=w).stdout
    renewed = x509.load_pem_x509_certificate(out2)
    assert renewed.subject == cert.subject and renewed.serial_number != cert.serial_number
    assert serve.issued() == 2


def test_strongswan_pending_then_approved_by_polling(serve_manual: RunningServer) -> None:
    pki = require_tool("pki")
    w = serve_manual.work
    _, req = pki_key_and_req(pki, w, "m", "manual-strongswan", san=False)
    proc = subprocess.Popen([pki, "--est", "--url", serve_manual.base_https, "--cacert", str(serve_manual.ca_bundle),
                             "--in", str(req), "--userpass", serve_manual.userpass, "--interval", "1",
                             "--maxpolltime", "60", "--outform", "pem"],
                            cwd=w, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        request_id = None
        for _ in range(30):
            if proc.poll() is not None:
                break
            out = serve_manual.enroll("pending", "list").stdout
            m = re.search(r"^\s*(\d+)\b", out, re.MULTILINE)
            if m:
                request_id = m.group(1)
                break
            time.sleep(0.2)
        assert request_id is not None, (
            f"no pending request appeared: {proc.stderr.read().decode(errors='replace') if proc.poll() is not None else ''}")
        assert serve_manual.issued() == 0
        serve_manual.enroll("pending", "approve", request_id)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, stderr.decode(errors="replace")
    cert = x509.load_pem_x509_certificate(stdout)
    assert cert.subject.rfc4514_string() == "CN=manual-strongswan"
    assert serve_manual.issued() == 1


# --- curl + openssl ------------------------------------------------------------------------


def curl(serve: RunningServer, path: str, *args: str, data: Path | None = None) -> tuple[int, str, bytes]:
    exe = require_tool("curl")
    hdr = serve.work / "h.txt"
    body = serve.work / "b.bin"
    cmd = [exe, "-sS", "--noproxy", "*", "--max-time", "30", "--cacert", str(serve.ca_bundle), "-D", str(hdr),
           "-o", str(body), *args]
    if data is not None:
        cmd += ["-H", "Content-Type: application/pkcs10", "--data-binary", f"@{data}"]
    run([*cmd, serve.est + path], cwd=serve.work)
    headers = hdr.read_text()
    status = int(headers.split()[1])
    return status, headers, body.read_bytes()


def openssl_csr(serve: RunningServer, stem: str, cn: str, *, pem: bool = False) -> Path:
    exe = require_tool("openssl")
    w = serve.work
    args = [exe, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(w / f"{stem}.key"), "-subj", f"/CN={cn}"]
    if pem:
        out = run([*args, "-out", str(w / f"{stem}.csr")], cwd=w)
        return w / f"{stem}.csr"
    out = run([*args, "-outform", "DER"], cwd=w).stdout
    (w / f"{stem}.der").write_bytes(out)
    return w / f"{stem}.der"


def header(headers: str, name: str) -> str:
    for line in headers.splitlines():
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    raise KeyError(name)


def test_curl_cacerts_and_openssl_pkcs7(serve: RunningServer) -> None:
    status, headers, body = curl(serve, "/cacerts")
    assert status == 200 and header(headers, "Content-Type") == "application/pkcs7-mime"
    assert header(headers, "Content-Transfer-Encoding") == "base64"
    der = base64.b64decode(body)
    out = run([require_tool("openssl"), "pkcs7", "-inform", "DER", "-print_certs", "-noout"],
              cwd=serve.work, input=der).stdout.decode()
    assert "Issuing CA" in out and "Root CA" in out


def test_curl_csrattrs_asn1parse(serve: RunningServer) -> None:
    status, headers, body = curl(serve, "/csrattrs")
    assert status == 200 and header(headers, "Content-Type") == "application/csrattrs"
    out = run([require_tool("openssl"), "asn1parse", "-inform", "DER"], cwd=serve.work,
              input=base64.b64decode(body)).stdout.decode()
    assert "id-ecPublicKey" in out and "prime256v1" in out


@pytest.mark.parametrize("variant", ["openssl-base64-64", "coreutils-base64-76", "one-line", "pem"])
def test_curl_simpleenroll_rfc8951_variants(serve: RunningServer, variant: str) -> None:
    w = serve.work
    if variant == "pem":
        body = openssl_csr(serve, "v", f"curl-{variant}", pem=True)
    else:
        der = openssl_csr(serve, "v", f"curl-{variant}").read_bytes()
        if variant == "openssl-base64-64":
            text = run([require_tool("openssl"), "base64"], cwd=w, input=der).stdout
        elif variant == "coreutils-base64-76":
            text = run(["base64"], cwd=w, input=der).stdout
        else:
            text = base64.b64encode(der)
        body = w / "v.b64"
        body.write_bytes(text)
    status, headers, resp = curl(serve, "/simpleenroll", "-u", serve.userpass, data=body)
    assert status == 200, resp
    assert header(headers, "Content-Type") == "application/pkcs7-mime; smime-type=certs-only"
    out = run([require_tool("openssl"), "pkcs7", "-inform", "DER", "-print_certs"], cwd=w,
              input=base64.b64decode(resp)).stdout.decode()
    assert f"CN = curl-{variant}" in out


def test_curl_reenroll_with_client_cert(serve: RunningServer) -> None:
    w = serve.work
    der = openssl_csr(serve, "old", "curl-re")
    (w / "old.b64").write_bytes(base64.b64encode(der.read_bytes()))
    status, _, resp = curl(serve, "/simpleenroll", "-u", serve.userpass, data=w / "old.b64")
    assert status == 200
    (cert,) = wire.decode_certs_only(base64.b64decode(resp))
    (w / "old.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    new = openssl_csr(serve, "new", "curl-re")
    (w / "new.b64").write_bytes(base64.b64encode(new.read_bytes()))
    status, _, resp = curl(serve, "/simplereenroll", "--cert", str(w / "old.pem"), "--key", str(w / "old.key"),
                           data=w / "new.b64")
    assert status == 200, resp
    (renewed,) = wire.decode_certs_only(base64.b64decode(resp))
    assert renewed.subject == cert.subject


def test_curl_serverkeygen_split_and_openssl_key_load(serve: RunningServer) -> None:
    w = serve.work
    der = openssl_csr(serve, "skg", "curl-skg")
    (w / "skg.b64").write_bytes(base64.b64encode(der.read_bytes()))
    status, headers, body = curl(serve, "/serverkeygen", "-u", serve.userpass, data=w / "skg.b64")
    assert status == 200, body
    ctype = header(headers, "Content-Type")
    boundary = ctype.split("boundary=", 1)[1]
    parts = body.split(b"--" + boundary.encode())
    assert parts[-1].strip() == b"--"
    key_part, cert_part = parts[1], parts[2]
    assert b"Content-Type: application/pkcs8" in key_part
    assert b"Content-Type: application/pkcs7-mime; smime-type=certs-only" in cert_part
    key_der = base64.b64decode(key_part.split(b"\r\n\r\n", 1)[1])
    cert_der = base64.b64decode(cert_part.split(b"\r\n\r\n", 1)[1])
    (w / "k.der").write_bytes(key_der)
    openssl = require_tool("openssl")
    pub_from_key = run([openssl, "pkey", "-inform", "DER", "-in", str(w / "k.der"), "-pubout"], cwd=w).stdout
    certs_pem = run([openssl, "pkcs7", "-inform", "DER", "-print_certs"], cwd=w, input=cert_der).stdout
    (w / "c.pem").write_bytes(certs_pem)
    pub_from_cert = run([openssl, "x509", "-in", str(w / "c.pem"), "-pubkey", "-noout"], cwd=w).stdout
    assert pub_from_key == pub_from_cert


# --- negatives over curl: each asserts nothing was issued -------------------------------------


def test_curl_negatives_issue_nothing(serve: RunningServer) -> None:
    w = serve.work
    der = openssl_csr(serve, "neg", "curl-neg")
    (w / "neg.b64").write_bytes(base64.b64encode(der.read_bytes()))
    # wrong password
    status, headers, _ = curl(serve, "/simpleenroll", "-u", "estuser:wrong", data=w / "neg.b64")
    assert status == 401 and header(headers, "WWW-Authenticate").startswith("Basic")
    # no client certificate where one is needed (bootstrap label)
    status, _, _ = curl(serve, "/bootstrap/simpleenroll", "-u", serve.userpass, data=w / "neg.b64")
    assert status == 403
    # client certificate from an untrusted CA for that label
    status, _, _ = curl(serve, "/bootstrap/simpleenroll", "--cert", str(serve.init.certs_dir / "example-client.pem"),
                        "--key", str(serve.init.certs_dir / "example-client.key"), data=w / "neg.b64")
    assert status == 403
    # broken CSR signature
    broken = bytearray(der.read_bytes())
    broken[-3] ^= 0x55
    (w / "broken.b64").write_bytes(base64.b64encode(bytes(broken)))
    status, headers, _ = curl(serve, "/simpleenroll", "-u", serve.userpass, data=w / "broken.b64")
    assert status == 400 and header(headers, "Content-Type").startswith("text/plain")
    # garbage body
    (w / "garbage").write_bytes(b"this is not base64 at all %%%")
    status, _, _ = curl(serve, "/simpleenroll", "-u", serve.userpass, data=w / "garbage")
    assert status == 400
    # oversized body
    (w / "big").write_bytes(b"A" * 400_000)
    status, _, _ = curl(serve, "/simpleenroll", "-u", serve.userpass, data=w / "big")
    assert status == 413
    # unknown label, wrong method, fullcmc
    assert curl(serve, "/nosuch/cacerts")[0] == 404
    status, headers, _ = curl(serve, "/simpleenroll", "-u", serve.userpass)
    assert status == 405 and header(headers, "Allow") == "POST"
    status, _, body = curl(serve, "/fullcmc", "-u", serve.userpass, data=w / "neg.b64")
    assert status == 415 and body  # a PKCS#10 body is no Full PKI Request (RFC 7030 §4.3.1)
    assert serve.issued() == 0
