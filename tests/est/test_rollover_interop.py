"""Interop: strongSwan `pki --est` and curl + openssl keep enrolling across an issuing-CA rollover
(issue 15; `enroll ca rollover` / `enroll ca activate`, README "CA rollover") on a real
`enroll serve` with the embedded default.

Before activation both clients get certificates from the old issuing CA; after the switch from
the new one (checked with `openssl verify -CAfile root -untrusted NEW`), a certificate of the old
CA still re-enrolls (RFC 7030 §4.2.2) and gets a new-CA certificate, and the old CA's CRL stays
at the URL its certificates name (RFC 5280 §4.2.1.13). Skipped when a tool is missing unless
ENROLL_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enroll.bench.server import free_port
from enroll.config import load_config
from enroll.pki import DevPKI
from enroll.setup import init_directory
from est import wire
from tests.est.test_est_interop import curl, openssl_csr, pki_key_and_req, run
from tests.harness import RunningServer, enroll_serve
from tests.support import require_tool

pytestmark = pytest.mark.interop


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001  (any failure means: not signed by this CA key)
        return False
    return True


def _openssl_verifies(srv: RunningServer, cert: Path, root: Path, untrusted: Path) -> bool:
    res = run([require_tool("openssl"), "verify", "-CAfile", str(root), "-untrusted", str(untrusted), str(cert)],
              cwd=srv.work, check=False)
    return res.returncode == 0 and b": OK" in res.stdout


def _strongswan_enroll(srv: RunningServer, stem: str, cn: str, *, old: tuple[Path, Path] | None = None) -> x509.Certificate:
    """`pki --est` with HTTP Basic, or (``old`` = certificate, key) a reenroll over mTLS."""
    pki = require_tool("pki")
    _, req = pki_key_and_req(pki, srv.work, stem, cn)
    auth = ["--userpass", srv.userpass] if old is None else ["--cert", str(old[0]), "--key", str(old[1])]
    out = run([pki, "--est", "--url", srv.base_https, "--cacert", str(srv.ca_bundle), "--in", str(req), *auth,
               "--outform", "pem"], cwd=srv.work).stdout
    (srv.work / f"{stem}.pem").write_bytes(out)
    return x509.load_pem_x509_certificate(out)


def _curl_enroll(srv: RunningServer, stem: str, cn: str, *, old: tuple[Path, Path] | None = None) -> x509.Certificate:
    """curl + openssl /simpleenroll with HTTP Basic, or (``old``) /simplereenroll with the old
    client certificate and key (RFC 7030 §4.2.1, §4.2.2)."""
    der = openssl_csr(srv, stem, cn)
    body = srv.work / f"{stem}.b64"
    body.write_bytes(base64.b64encode(der.read_bytes()))
    if old is None:
        status, _, resp = curl(srv, "/simpleenroll", "-u", srv.userpass, data=body)
    else:
        status, _, resp = curl(srv, "/simplereenroll", "--cert", str(old[0]), "--key", str(old[1]), data=body)
    assert status == 200, resp
    (cert,) = wire.decode_certs_only(base64.b64decode(resp))
    (srv.work / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def test_strongswan_and_curl_keep_enrolling_across_an_issuing_ca_rollover(tmp_path: Path, dev_pki: DevPKI) -> None:
    for tool in ("pki", "curl", "openssl"):
        require_tool(tool)
    https_port, http_port = free_port(), free_port()
    init = init_directory(tmp_path / "srv", https_port=https_port, http_port=http_port, pki=dev_pki)
    certs, work, log = init.certs_dir, tmp_path / "work", tmp_path / "serve.log_path"
    work.mkdir()
    root, old_pem, new_pem = certs / "root-ca.pem", certs / "issuing-ca.pem", certs / "issuing-2.pem"

    # The rollover edits the config, which `enroll serve` reads at start: roll over, then restart.
    with enroll_serve(init.config_path, http_port, log) as proc:
        srv = RunningServer(init, load_config(init.config_path), https_port, http_port, proc, log)
        srv.enroll("ca", "rollover", "issuing", "--parent-cert", str(root), "--parent-key", str(certs / "root-ca.key"))
    old_ca = x509.load_pem_x509_certificate(old_pem.read_bytes())
    new_ca = x509.load_pem_x509_certificate(new_pem.read_bytes())
    root_ca = x509.load_pem_x509_certificate(root.read_bytes())

    # (1) Before activation: the old issuing CA issues; /cacerts carries it and the root.
    with enroll_serve(init.config_path, http_port, log) as proc:
        srv = RunningServer(init, load_config(init.config_path), https_port, http_port, proc, log)
        status, _, body = curl(srv, "/cacerts")
        assert status == 200
        published = wire.decode_certs_only(base64.b64decode(body))
        assert old_ca in published and root_ca in published
        ss_old = _strongswan_enroll(srv, "ss-old", "gw-ss-roll")
        cu_old = _curl_enroll(srv, "cu-old", "gw-curl-roll")
        for cert, stem in ((ss_old, "ss-old"), (cu_old, "cu-old")):
            assert _issued_by(cert, old_ca) and not _issued_by(cert, new_ca)
            assert _openssl_verifies(srv, work / f"{stem}.pem", root, old_pem)
        assert srv.issued() == 2

        # (2) Activate now. `enroll ca activate` edits the config: it applies at the next start.
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        srv.enroll("ca", "activate", "issuing", "--at", now)

    # (3) After the switch: both clients get certificates from the new CA.
    with enroll_serve(init.config_path, http_port, log) as proc:
        srv = RunningServer(init, load_config(init.config_path), https_port, http_port, proc, log)
        status, _, body = curl(srv, "/cacerts")
        assert status == 200
        published = wire.decode_certs_only(base64.b64decode(body))
        # The old issuing CA too: its certificates are still valid and chain through it (RFC 7030
        # §4.1.3). (The certificates are a DER SET OF, sorted: their order says nothing.)
        assert {new_ca, old_ca, root_ca} <= set(published)
        ss_new = _strongswan_enroll(srv, "ss-new", "gw-ss-after")
        cu_new = _curl_enroll(srv, "cu-new", "gw-curl-after")
        # (4) A certificate of the old CA re-enrolls and gets one from the new CA.
        ss_re = _strongswan_enroll(srv, "ss-re", "gw-ss-roll", old=(work / "ss-old.pem", work / "ss-old.key"))
        cu_re = _curl_enroll(srv, "cu-re", "gw-curl-roll", old=(work / "cu-old.pem", work / "cu-old.key"))
        assert ss_re.subject == ss_old.subject and cu_re.subject == cu_old.subject
        for cert, stem in ((ss_new, "ss-new"), (cu_new, "cu-new"), (ss_re, "ss-re"), (cu_re, "cu-re")):
            assert _issued_by(cert, new_ca) and not _issued_by(cert, old_ca)
            assert _openssl_verifies(srv, work / f"{stem}.pem", root, new_pem)
            assert not _openssl_verifies(srv, work / f"{stem}.pem", root, old_pem)
        assert srv.issued() == 6

        # (5) The old CA's CRL is still served at the URL its certificates carry, signed by its key.
        cdp = ss_old.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        (url,) = [n.full_name[0].value for n in cdp if n.full_name]
        crl_der = run([require_tool("curl"), "-sS", "--noproxy", "*", "--max-time", "30", "-f", url],
                      cwd=work).stdout
        crl = x509.load_der_x509_crl(crl_der)
        assert crl.issuer == old_ca.subject and crl.is_signature_valid(old_ca.public_key())  # type: ignore[arg-type]
        (work / "old.crl").write_bytes(crl_der)
        out = run([require_tool("openssl"), "crl", "-inform", "DER", "-in", str(work / "old.crl"),
                   "-CAfile", str(old_pem), "-noout"], cwd=work)
        assert b"verify OK" in out.stdout + out.stderr
