"""Signed export bundles (issue 18): ``enroll export`` on an isolated instance, ``enroll import`` on
another that holds the same CA; the bundle is verified (trusted signer, signature, every hash)
before anything is recorded, re-importing changes nothing, and a tampered bundle is refused with
nothing recorded."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca.errors import CAError
from enroll.app import build_issuer
from enroll.bundle import BundleError, export, record, verify
from enroll.config import load_config
from enroll.pki import DevPKI
from enroll.setup import InitResult, init_directory
from tests.support import free_port, make_csr


def _cli(init: InitResult, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "enroll", "-c", str(init.config_path), *args],
                          capture_output=True, text=True, timeout=120)


def _csr_dir(path: Path, n: int) -> Path:
    path.mkdir()
    for i in range(n):
        csr, _ = make_csr(f"line-{i}", extra_attrs=[x509.NameAttribute(NameOID.SERIAL_NUMBER, f"L-{i:03d}")])
        (path / f"line-{i}.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def second(tmp_path: Path, dev_pki: DevPKI) -> InitResult:
    """Another instance with the same CA (its own ledger)."""
    return init_directory(tmp_path / "central", https_port=free_port(), http_port=free_port(), pki=dev_pki)


async def _issued(init: InitResult) -> list[tuple[int, str, bool]]:
    iss = build_issuer(load_config(init.config_path))
    await iss.ledger.migrate()
    try:
        rows = await iss.ledger.list_certificates(limit=10000)
        return sorted((r.serial, r.channel, r.revoked) for r in rows)
    finally:
        await iss.ledger.close()


async def test_export_imports_into_another_instance_once(embedded: InitResult, second: InitResult,
                                                         tmp_path: Path, dev_pki: DevPKI) -> None:
    done = _cli(embedded, "issue", "--profile", "factory", "--csr", str(_csr_dir(tmp_path / "csrs", 5)))
    assert done.returncode == 0, done.stderr
    serials = [line.split("serial ")[1].split()[0] for line in done.stdout.splitlines() if line.startswith("issued")]
    assert _cli(embedded, "revoke", serials[0], "--reason", "key_compromise").returncode == 0
    bundle = tmp_path / "out.bundle"
    exported = _cli(embedded, "export", "--since", "2000-01-01", "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    trust = tmp_path / "issuing-ca.pem"
    trust.write_bytes(dev_pki.issuing.cert.public_bytes(serialization.Encoding.PEM))

    assert await _issued(second) == []
    imported = _cli(second, "import", str(bundle), "--trust", str(trust))
    assert imported.returncode == 0, imported.stderr
    assert "recorded 5, already known 0, revocations applied 1" in imported.stdout
    rows = await _issued(second)
    assert {format(s, "x") for s, _, _ in rows} == set(serials)
    assert {c for _, c, _ in rows} == {"import"}
    assert [format(s, "x") for s, _, revoked in rows if revoked] == [serials[0]]
    crl = _cli(second, "crl", "--force")
    assert crl.returncode == 0, crl.stderr
    listed = x509.load_pem_x509_crl(crl.stdout.encode())
    assert listed.get_revoked_certificate_by_serial_number(int(serials[0], 16)) is not None

    again = _cli(second, "import", str(bundle), "--trust", str(trust))
    assert again.returncode == 0 and "recorded 0, already known 5, revocations applied 0" in again.stdout
    assert await _issued(second) == rows


def _tamper_file(data: bytes, name: str) -> bytes:
    doc = json.loads(data)
    content = bytearray(base64.b64decode(doc["files"][name]))
    content[len(content) // 2] ^= 0x01
    doc["files"][name] = base64.b64encode(bytes(content)).decode()
    return json.dumps(doc).encode()


def _tamper_manifest(data: bytes) -> bytes:
    doc = json.loads(data)
    manifest = json.loads(base64.b64decode(doc["manifest"]))
    manifest["counts"]["certificates"] += 1
    doc["manifest"] = base64.b64encode(json.dumps(manifest, sort_keys=True).encode()).decode()
    return json.dumps(doc).encode()


def _extra_file(data: bytes) -> bytes:
    doc = json.loads(data)
    doc["files"]["extra.json"] = base64.b64encode(b"[]").decode()
    return json.dumps(doc).encode()


@pytest.mark.parametrize("tamper,message", [
    (lambda d: _tamper_file(d, "certificates.json"), "SHA-256 differs"),
    (lambda d: _tamper_file(d, "audit.json"), "SHA-256 differs"),
    (_tamper_manifest, "signature does not verify"),
    (_extra_file, "differ from its manifest"),
    (lambda d: d[: len(d) // 2], "not an enroll bundle"),
])
async def test_tampered_bundle_is_refused_and_nothing_recorded(embedded: InitResult, second: InitResult,
                                                               tmp_path: Path, dev_pki: DevPKI,
                                                               tamper: object, message: str) -> None:
    assert _cli(embedded, "issue", "--profile", "factory", "--csr", str(_csr_dir(tmp_path / "c", 2))).returncode == 0
    source = build_issuer(load_config(embedded.config_path))
    await source.ledger.migrate()
    try:
        data = await export(source, 0.0)
    finally:
        await source.ledger.close()
    trusted = [dev_pki.issuing.cert]
    assert len(verify(data, trusted).certificates()) == 2  # the untouched bundle verifies
    bad = tamper(data)  # type: ignore[operator]
    with pytest.raises(BundleError, match=message):
        verify(bad, trusted)
    path = tmp_path / "bad.bundle"
    path.write_bytes(bad)
    trust = tmp_path / "ca.pem"
    trust.write_bytes(dev_pki.issuing.cert.public_bytes(serialization.Encoding.PEM))
    refused = _cli(second, "import", str(path), "--trust", str(trust))
    assert refused.returncode != 0 and "nothing recorded" in refused.stderr
    assert await _issued(second) == []


async def test_bundle_from_an_untrusted_ca_is_refused(embedded: InitResult, second: InitResult,
                                                      dev_pki: DevPKI) -> None:
    source = build_issuer(load_config(embedded.config_path))
    await source.ledger.migrate()
    try:
        data = await export(source, 0.0)
    finally:
        await source.ledger.close()
    with pytest.raises(BundleError, match="none of the trusted"):
        verify(data, [dev_pki.manufacturer.cert])
    # verified, but this instance has no such CA: refused before recording anything
    target = build_issuer(load_config(second.config_path))
    await target.ledger.migrate()
    try:
        target.cas = {}
        with pytest.raises(CAError):
            await record(target, verify(data, [dev_pki.issuing.cert]), by="cli:test")
        assert await target.ledger.count_certificates("issued") == 0
    finally:
        await target.ledger.close()
