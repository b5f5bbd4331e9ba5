"""Backup and restore (issue 17): `enroll backup` while the server runs, `enroll restore` into an
empty directory, and the restored server serves the same CRL, answers OCSP for every issued
certificate and refuses to reuse any serial. Archives are verified before anything is written."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from enroll.pki import DevPKI
from est.client import EstClient, build_csr
from scep.asn1 import PkiStatus
from scep.client import ScepClient, simple_csr
from tests.harness import RunningServer, enroll_serve, start_server


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "enroll", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def _get(url: str, data: bytes | None = None, content_type: str | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type} if content_type else {})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
        return bytes(resp.read())


def _rows(db: Path) -> set[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        return {(i, s, st) for i, s, st in conn.execute("SELECT issuer, serial, status FROM certificates")}


async def _issue(srv: RunningServer) -> list[x509.Certificate]:
    out = []
    async with EstClient(srv.base_https, trust_anchor=srv.ca_bundle, label="gateway", username=srv.init.est_user,
                         password=srv.init.est_password) as est:
        for i in range(3):
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"backup-{i}")])
            out.append((await est.enroll(build_csr(key, name))).certificate)
    key = rsa.generate_private_key(65537, 2048)
    reply = await ScepClient(srv.base_http + "/scep/router").enroll(
        simple_csr(key, "backup-scep", challenge=srv.init.scep_challenge), key)
    assert reply.status is PkiStatus.SUCCESS
    out.append(reply.certificates[0])
    return out


@pytest.fixture
def backed_up(tmp_path: Path, dev_pki: DevPKI) -> tuple[RunningServer, Path, list[x509.Certificate], bytes, Path]:
    """A server that issued four certificates and revoked one, backed up while it runs."""
    with start_server(tmp_path, dev_pki) as srv:
        certs = asyncio.run(_issue(srv))
        srv.enroll("revoke", f"{certs[1].serial_number:x}", "--reason", "key_compromise")
        crl = _get(f"{srv.base_http}/crl/issuing.crl")
        archive = tmp_path / "backup.tar"
        res = srv.enroll("backup", "--out", str(archive))
        assert "ledger" in res.stderr  # progress on stderr
    return srv, archive, certs, crl, Path(srv.config.ledger_url.removeprefix("sqlite:///"))


def test_restored_server_serves_same_crl_answers_ocsp_and_refuses_serial_reuse(
        backed_up: tuple[RunningServer, Path, list[x509.Certificate], bytes, Path], tmp_path: Path) -> None:
    srv, archive, certs, crl, original_db = backed_up
    target = tmp_path / "restored"
    out = _cli("restore", str(archive), "--dir", str(target)).stdout
    config = target / "enroll.toml"
    assert str(config) in out
    restored_db = target / "var" / "enroll.db"
    # the snapshot is one point in time while the server ran: the same issued certificates (its
    # block of reserved serials as well, which the server released only when it stopped)
    issued_rows = {r for r in _rows(original_db) if r[2] == "issued"}
    assert {r for r in _rows(restored_db) if r[2] == "issued"} == issued_rows and len(issued_rows) >= 4
    issuing = x509.load_pem_x509_certificate((target / "certs" / "issuing-ca.pem").read_bytes())
    with enroll_serve(config, srv.http_port, tmp_path / "restored.log"):
        assert _get(f"{srv.base_http}/crl/issuing.crl") == crl
        with sqlite3.connect(restored_db) as conn:
            issued = [x509.load_der_x509_certificate(der) for (der,) in
                      conn.execute("SELECT der FROM certificates WHERE status = 'issued'")]
        assert {c.serial_number for c in certs} <= {c.serial_number for c in issued}
        for cert in issued:
            req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuing, hashes.SHA1()).build()
            answer = ocsp.load_der_ocsp_response(_get(f"{srv.base_http}/ocsp",
                                                      req.public_bytes(serialization.Encoding.DER),
                                                      "application/ocsp-request"))
            assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
            assert answer.serial_number == cert.serial_number
            want = ocsp.OCSPCertStatus.REVOKED if cert.serial_number == certs[1].serial_number \
                else ocsp.OCSPCertStatus.GOOD
            assert answer.certificate_status is want, hex(cert.serial_number)
    # every serial the ledger ever handed out (issued, reserved, abandoned) stays taken
    cols = ("issuer, serial, status, profile, channel, requester, auth_method, csr_sha256, spki_sha256, "
            "created_at")
    with sqlite3.connect(restored_db) as conn:
        rows = conn.execute(f"SELECT {cols} FROM certificates").fetchall()
        assert rows
        for row in rows:
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(f"INSERT INTO certificates ({cols}) VALUES ({', '.join('?' * len(row))})", row)


def test_backup_without_keys_holds_no_private_key(tmp_path: Path, dev_pki: DevPKI) -> None:
    with start_server(tmp_path, dev_pki) as srv:
        archive = tmp_path / "nokeys.tar"
        srv.enroll("backup", "--out", str(archive), "--no-keys", "--quiet")
        assert archive.stat().st_mode & 0o077 == 0
        with tarfile.open(archive) as tar:
            blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        manifest = json.loads(blobs["manifest.json"])
        assert manifest["keys_included"] is False
        assert "config/certs/issuing-ca.key" in manifest["keys_left_out"]
        assert "config/certs/tls-server.key" in manifest["keys_left_out"]
        assert not [n for n, b in blobs.items() if b"PRIVATE KEY" in b]
        assert "config/certs/issuing-ca.pem" in blobs and "ledger/enroll.db" in blobs


def _rewrite(src: Path, dst: Path, edit: dict[str, bytes]) -> None:
    with tarfile.open(src) as tar, tarfile.open(dst, "w") as out:
        for m in tar.getmembers():
            data = tar.extractfile(m).read()  # type: ignore[union-attr]
            data = edit.pop(m.name, data)
            m.size = len(data)
            out.addfile(m, io.BytesIO(data))
        for name, data in edit.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def test_restore_verifies_every_hash_before_writing(tmp_path: Path, dev_pki: DevPKI) -> None:
    with start_server(tmp_path, dev_pki) as srv:
        archive = tmp_path / "b.tar"
        srv.enroll("backup", "--out", str(archive), "--quiet")
    with tarfile.open(archive) as tar:
        pem = tar.extractfile("config/certs/root-ca.pem").read()  # type: ignore[union-attr]
    for name, edit, message in (
            ("altered.tar", {"config/certs/root-ca.pem": pem.replace(b"A", b"B", 1)}, "SHA-256 does not match"),
            ("extra.tar", {"config/../../evil.sh": b"#!/bin/sh\n"}, "unexpected"),
    ):
        bad = tmp_path / name
        _rewrite(archive, bad, dict(edit))
        target = tmp_path / f"target-{name}"
        res = _cli("restore", str(bad), "--dir", str(target), check=False)
        assert res.returncode != 0 and message in res.stderr, res.stderr
        assert not target.exists()
    assert not (tmp_path.parent / "evil.sh").exists()
    # a non-empty directory is never overwritten
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep").write_text("mine")
    res = _cli("restore", str(archive), "--dir", str(occupied), check=False)
    assert res.returncode != 0 and "not empty" in res.stderr
    assert [p.name for p in occupied.iterdir()] == ["keep"]
