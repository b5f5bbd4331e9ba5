"""Revocation as relying parties see it: the URLs in issued certificates, `openssl ocsp` against
the responder (POST), OCSP GET, `openssl crl` / `openssl verify -crl_check` on the published CRL,
a delegated OCSP signer, and the fleet CLI (expiring, devices, unhold, audit)."""

from __future__ import annotations

import base64
import secrets
import sqlite3
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509 import ocsp as xocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from enroll.pki import DevPKI, make_cert
from enroll.setup import InitResult
from tests.enroll.admin_helpers import AdminServer, admin_server
from tests.support import make_csr, require_tool

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPKI) -> Iterator[AdminServer]:
    with admin_server(tmp_path_factory.mktemp("revocation"), dev_pki) as s:
        yield s


def enroll(srv: AdminServer, cn: str | None = None, sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    csr, _ = make_csr(cn or f"rp-{secrets.token_hex(4)}", sans=sans)
    status, body = srv.est_enroll("gateway", csr)
    assert status == 200, body
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))[0]


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def openssl_ocsp(srv: AdminServer, cert: x509.Certificate, tmp: Path, *extra: str,
                 issuer: Path | None = None) -> subprocess.CompletedProcess[str]:
    openssl = require_tool("openssl")
    certs = srv.init.certs_dir
    leaf = write_pem(tmp / f"{cert.serial_number:x}.pem", cert)
    try:  # the URL the certificate itself names (AIA, RFC 5280 §4.2.2.1)
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        ocsp_url = next(d.access_location.value for d in aia
                        if d.access_method == x509.AuthorityInformationAccessOID.OCSP)
    except x509.ExtensionNotFound:
        ocsp_url = f"{srv.base_http}/ocsp"
    return subprocess.run([openssl, "ocsp", "-issuer", str(issuer or certs / "issuing-ca.pem"), "-cert", str(leaf),
                           "-url", ocsp_url, "-CAfile", str(certs / "root-ca.pem"), "-timeout", "10", *extra],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.interop
def test_openssl_ocsp_good_revoked_with_reason_and_nonce(srv: AdminServer, tmp_path: Path) -> None:
    good, bad = enroll(srv), enroll(srv)
    srv.enroll("revoke", format(bad.serial_number, "x"), "--reason", "key_compromise")
    out = openssl_ocsp(srv, good, tmp_path, "-resp_text")
    assert out.returncode == 0, out.stderr
    assert "Response verify OK" in out.stderr
    assert f"{good.serial_number:x}.pem: good" in out.stdout
    assert "OCSP Nonce" in out.stdout  # openssl sends a nonce by default and checks the echo
    out = openssl_ocsp(srv, bad, tmp_path)
    assert out.returncode == 0 and "Response verify OK" in out.stderr
    assert ": revoked" in out.stdout and "Reason: keyCompromise" in out.stdout
    assert "Revocation Time" in out.stdout
    out = openssl_ocsp(srv, good, tmp_path, "-no_nonce")
    assert out.returncode == 0 and ": good" in out.stdout


@pytest.mark.interop
def test_openssl_ocsp_unknown_and_unauthorized(srv: AdminServer, tmp_path: Path, dev_pki: DevPKI) -> None:
    real = enroll(srv)
    key = ec.generate_private_key(ec.SECP256R1())
    # our CA's name and key hash, a serial we never issued: signed by the dev issuing CA key
    ghost = make_cert(real.subject, key, dev_pki.issuing, days=30)
    out = openssl_ocsp(srv, ghost, tmp_path)
    assert out.returncode == 0 and ": unknown" in out.stdout, out.stdout + out.stderr
    foreign = write_pem(tmp_path / "manufacturer.pem", dev_pki.manufacturer.cert)
    leaf = write_pem(tmp_path / "idevid.pem", dev_pki.idevid.cert)
    openssl = require_tool("openssl")
    out = subprocess.run([openssl, "ocsp", "-issuer", str(foreign), "-cert", str(leaf), "-url",
                          f"{srv.base_http}/ocsp", "-noverify"], capture_output=True, text=True, timeout=30)
    assert "unauthorized" in (out.stdout + out.stderr).lower()


def test_ocsp_get_with_base64_path_and_http_caching(srv: AdminServer, dev_pki: DevPKI) -> None:
    cert = enroll(srv)
    for _ in range(20):  # find a request whose base64 has '+' or '/' (percent-encoded in the path)
        req = (xocsp.OCSPRequestBuilder().add_certificate(cert, dev_pki.issuing.cert, hashes.SHA1())
               .add_extension(x509.OCSPNonce(secrets.token_bytes(16)), False).build())
        b64 = base64.b64encode(req.public_bytes(serialization.Encoding.DER)).decode()
        if "+" in b64 or "/" in b64:
            break
    url = f"{srv.base_http}/ocsp/{urllib.parse.quote(b64, safe='')}"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310
        assert resp.headers["Content-Type"] == "application/ocsp-response"
        body = resp.read()
    answer = xocsp.load_der_ocsp_response(body)
    assert answer.certificate_status is xocsp.OCSPCertStatus.GOOD
    assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == \
        req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    # unescaped and URL-safe spellings too
    for spelling in (b64, b64.replace("+", "-").replace("/", "_").rstrip("=")):
        with urllib.request.urlopen(f"{srv.base_http}/ocsp/{spelling}", timeout=10) as resp:  # noqa: S310
            assert xocsp.load_der_ocsp_response(resp.read()).certificate_status is xocsp.OCSPCertStatus.GOOD
    with urllib.request.urlopen(f"{srv.base_http}/ocsp/!!notbase64!!", timeout=10) as resp:  # noqa: S310
        bad = xocsp.load_der_ocsp_response(resp.read())
    assert bad.response_status is xocsp.OCSPResponseStatus.MALFORMED_REQUEST


@pytest.mark.interop
def test_urls_in_the_certificate_serve_the_crl_and_the_ca(srv: AdminServer, tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    cert = enroll(srv)
    revoked = enroll(srv)
    srv.enroll("revoke", format(revoked.serial_number, "x"), "--reason", "superseded")
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value  # type: ignore[index]
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    ca_url = next(d.access_location.value for d in aia if d.access_method == x509.AuthorityInformationAccessOID.CA_ISSUERS)
    with urllib.request.urlopen(ca_url, timeout=10) as resp:  # noqa: S310
        assert resp.headers["Content-Type"] == "application/pkix-cert"
        ca = x509.load_der_x509_certificate(resp.read())
    cert.verify_directly_issued_by(ca)
    with urllib.request.urlopen(cdp, timeout=10) as resp:  # noqa: S310
        assert resp.headers["Content-Type"] == "application/pkix-crl"
        assert "max-age=" in resp.headers["Cache-Control"] and resp.headers["Expires"]
        (tmp_path / "crl.der").write_bytes(resp.read())
    chain = write_pem(tmp_path / "chain.pem", ca, x509.load_pem_x509_certificate(
        (srv.init.certs_dir / "root-ca.pem").read_bytes()))
    out = subprocess.run([openssl, "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-CAfile", str(chain),
                          "-noout", "-text"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "verify OK" in out.stderr, out.stderr
    assert format(revoked.serial_number, "X").rjust(2, "0") in out.stdout.replace(":", "").upper()
    assert "Superseded" in out.stdout
    subprocess.run([openssl, "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-out",
                    str(tmp_path / "crl.pem")], check=True, timeout=30)
    for leaf, expect_ok in ((cert, True), (revoked, False)):
        path = write_pem(tmp_path / "leaf.pem", leaf)
        v = subprocess.run([openssl, "verify", "-crl_check", "-CRLfile", str(tmp_path / "crl.pem"), "-CAfile",
                            str(chain), str(path)], capture_output=True, text=True, timeout=30)
        assert (v.returncode == 0) is expect_ok, v.stdout + v.stderr
        if not expect_ok:
            assert "certificate revoked" in v.stdout + v.stderr


class Out:
    """What a CLI run printed."""

    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code, self.output, self.stdout = exit_code, output, output


def cli(srv: AdminServer, *args: str, code: int | None = 0) -> Out:
    """The `enroll` CLI in-process (the subprocess start-up costs a second per call)."""
    from click.testing import CliRunner

    from enroll.cli import main

    res = CliRunner().invoke(main, ["-c", str(srv.init.config_path), *args], catch_exceptions=False)
    if code is not None:
        assert res.exit_code == code, res.output
    return Out(res.exit_code, res.output)


def test_fleet_cli(srv: AdminServer) -> None:
    name = f"cli-{secrets.token_hex(4)}"
    a = enroll(srv, name, [x509.DNSName(f"{name}.example.net")])
    enroll(srv, name, [x509.DNSName(f"{name}.example.net")])
    db = srv.config.ledger_url[len("sqlite:///"):]
    with sqlite3.connect(db, timeout=30) as conn:  # as if issued long ago: expires in 10 days
        conn.execute("UPDATE certificates SET not_after = ? WHERE serial = ?",
                     (time.time() + 10 * 86400, format(a.serial_number, "x")))
    out = cli(srv, "certs", "expiring", "--within", "30d").stdout
    assert format(a.serial_number, "x") in out and out.count(name) == 1
    assert name not in cli(srv, "certs", "expiring", "--within", "7d").stdout
    assert cli(srv, "certs", "expiring", "--within", "soon", code=None).exit_code == 2
    listing = cli(srv, "devices", "list", "--search", name).stdout.splitlines()
    assert len(listing) == 2 and "    2     2 active" in listing[1]
    device = listing[1].split()[0]
    show = cli(srv, "devices", "show", device).stdout
    assert show.count(" issue ") == 2 and f"dns:{name}.example.net" in show
    serial = format(a.serial_number, "x")
    assert "held" in cli(srv, "revoke", serial, "--reason", "certificate_hold").stdout
    assert "on_hold" in cli(srv, "certs", "show", serial).stdout
    assert "released" in cli(srv, "unhold", serial).stdout
    again = cli(srv, "unhold", serial, code=None)
    assert again.exit_code == 1 and "not on hold" in again.output
    assert "revoked 2 certificate(s)" in cli(srv, "devices", "retire", device).stdout
    log = cli(srv, "audit", "--device", device).stdout
    assert [line.split()[3] for line in log.splitlines()] == \
        ["issue", "issue", "hold", "unhold", "retire-device", "revoke", "revoke"]
    assert "operator:cli:" in log
    assert cli(srv, "audit", "--serial", serial, "--event", "unhold").stdout.count("unhold") == 1
    assert cli(srv, "audit", "--serial", serial, "--since", "2000-01-01", "--until", "2000-01-02").stdout == ""
    status, text = srv.est_enroll("gateway", make_csr(name, sans=[x509.DNSName(f"{name}.example.net")])[0])
    assert status == 403 and b"retired" in text


def _with_delegated_responder(dev_pki: DevPKI) -> "callable":  # type: ignore[valid-type]
    def edit(init: InitResult, text: str) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Enroll OCSP responder")]), key,
                         dev_pki.issuing, days=30, eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
        (init.certs_dir / "ocsp.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        from ca.keys import write_private_key

        write_private_key(init.certs_dir / "ocsp.key", key)
        return text.replace('ocsp_validity_minutes = 60', 'ocsp_validity_minutes = 5\n'
                            'ocsp_cert = "certs/ocsp.pem"\nocsp_key = "certs/ocsp.key"')
    return edit


@pytest.mark.interop
def test_openssl_accepts_a_delegated_ocsp_signer(tmp_path: Path, dev_pki: DevPKI) -> None:
    with admin_server(tmp_path, dev_pki, edit=_with_delegated_responder(dev_pki)) as s:
        cert = enroll(s)
        out = openssl_ocsp(s, cert, tmp_path, "-resp_text")
        assert out.returncode == 0 and "Response verify OK" in out.stderr, out.stderr
        assert "Enroll OCSP responder" in out.stdout and ": good" in out.stdout
        answer = out.stdout
        assert "Responder Id:" in answer
