"""Issuance without a network (issue 18): ``enroll issue`` runs every CSR of a factory batch
through the core (policy, serials, audit; channel "offline", requester the operator); a bad CSR
is refused alone, with its reason, and nothing else of the batch is lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from enroll.app import build_issuer
from ca.api import AuthMethod
from enroll.config import Config
from enroll.offline import csr_files, issue_batch
from enroll.setup import InitResult
from tests.support import make_csr


def _factory_csr(i: int, key: object = None, *, cn: str | None = None, serial: str | None = None,
                 extensions: list[tuple[x509.ExtensionType, bool]] | None = None) -> x509.CertificateSigningRequest:
    extra = [x509.NameAttribute(NameOID.SERIAL_NUMBER, serial if serial is not None else f"SN-{i:05d}")]
    csr, _ = make_csr(cn or f"dev-{i}", key, extra_attrs=extra if serial != "" else [], extensions=extensions)
    return csr


def _der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.DER)


def _bad_csrs() -> dict[str, bytes]:
    """Ten CSR files the factory profile must refuse, each for its own reason."""
    good = _der(_factory_csr(99990))
    tampered = bytearray(good)
    tampered[-5] ^= 0x01  # inside the signature: proof of possession fails
    return {
        "bad-00-garbage.csr": b"this is not a certificate request",
        "bad-01-empty.csr": b"",
        "bad-02-truncated.der": good[: len(good) // 2],
        "bad-03-signature.der": bytes(tampered),
        "bad-04-rsa1024.der": _der(_factory_csr(99991, rsa.generate_private_key(65537, 1024))),
        "bad-05-p521.der": _der(_factory_csr(99992, ec.generate_private_key(ec.SECP521R1()))),
        "bad-06-no-serial.der": _der(_factory_csr(99993, serial="")),
        "bad-07-path-in-cn.der": _der(_factory_csr(99994, cn="dev/../etc")),
        "bad-08-ca-true.der": _der(_factory_csr(99995, extensions=[(x509.BasicConstraints(True, None), True)])),
        "bad-09-cn-pattern.der": _der(_factory_csr(99996, cn="-dash-first")),
    }


async def test_batch_of_1000_with_10_bad_issues_990_and_reports_10(config: Config, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(10)]  # the profile allows key reuse
    for i in range(990):
        csr = _factory_csr(i, keys[i % len(keys)])
        if i % 2:
            (batch / f"dev-{i:04d}.der").write_bytes(_der(csr))
        else:
            (batch / f"dev-{i:04d}.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    bad = _bad_csrs()
    for name, data in bad.items():
        (batch / name).write_bytes(data)
    issuer = build_issuer(config)
    await issuer.ledger.migrate()
    try:
        before = await issuer.ledger.count_certificates("issued")
        out = tmp_path / "out"
        results = await issue_batch(issuer, "factory", csr_files(batch), "cli:test", out, jobs=16)
        assert len(results) == 1000
        refused = {r.name: r.reason for r in results if r.reason is not None}
        assert set(refused) == set(bad), refused
        assert all(refused.values())
        assert "not a PEM or DER" in (refused["bad-00-garbage.csr"] or "")
        assert "signature" in (refused["bad-03-signature.der"] or "").lower()
        assert "serialNumber" in (refused["bad-06-no-serial.der"] or "")
        assert await issuer.ledger.count_certificates("issued") == before + 990
        assert len(list(out.glob("*.crt"))) == 990
        issued = await issuer.ledger.list_certificates(profile="factory", limit=2000)
        assert {r.channel for r in issued} == {"offline"}
        assert {(r.requester.method, r.requester.principal) for r in issued} == {(AuthMethod.OPERATOR, "cli:test")}
        assert len({r.serial for r in issued}) == 990
        refusals = [a for a in await issuer.ledger.audit_records(5000, event="issue") if not a.ok]
        assert len(refusals) == 10 and {a.channel for a in refusals} == {"offline"}
        # The same batch again issues nothing new: each CSR gets the certificate it already got.
        again = await issue_batch(issuer, "factory", csr_files(batch), "cli:test", None, jobs=16)
        assert sum(1 for r in again if r.replayed) == 990
        assert await issuer.ledger.count_certificates("issued") == before + 990
    finally:
        await issuer.ledger.close()


def _enroll_cli(init: InitResult, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "enroll", "-c", str(init.config_path), *args],
                          capture_output=True, text=True, timeout=120)


def test_enroll_issue_cli_one_file_and_refusal(embedded: InitResult, tmp_path: Path) -> None:
    good = tmp_path / "good.csr"
    good.write_bytes(_factory_csr(1).public_bytes(serialization.Encoding.PEM))
    done = _enroll_cli(embedded, "issue", "--profile", "factory", "--csr", str(good), "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert "issued  good.csr: serial" in done.stdout and "1 issued, 0 refused" in done.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "o" / "good.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "SN-00001"
    bad = tmp_path / "bad.csr"
    bad.write_bytes(_der(_factory_csr(2, serial="")))
    refused = _enroll_cli(embedded, "issue", "--profile", "factory", "--csr", str(bad))
    assert refused.returncode == 1 and "refused bad.csr:" in refused.stdout
    listed = _enroll_cli(embedded, "certs", "list", "--profile", "factory")
    assert listed.stdout.count("SN-") <= 1 and len([ln for ln in listed.stdout.splitlines() if "dev-" in ln]) == 1


def test_enroll_credentials_cli(embedded: InitResult, tmp_path: Path) -> None:
    out = tmp_path / "creds.csv"
    made = _enroll_cli(embedded, "credentials", "new", "--profile", "factory", "--device", "SN-0098",
                       "--count", "3", "--ttl", "2d", "--csv", str(out))
    assert made.returncode == 0, made.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    rows = [ln.split(",") for ln in out.read_text().splitlines()]
    assert rows[0] == ["user", "password", "profile", "bind", "device", "uses", "expires_at"]
    assert [r[4] for r in rows[1:]] == ["SN-0098", "SN-0099", "SN-0100"]
    assert all(r[0].isalnum() and r[1].isalnum() and len(r[1]) >= 24 for r in rows[1:])
    listed = _enroll_cli(embedded, "credentials", "list", "--unused")
    assert listed.stdout.count("1/1 left") == 3 and rows[1][1] not in listed.stdout  # never the password
    revoked = _enroll_cli(embedded, "credentials", "revoke", rows[1][0])
    assert revoked.returncode == 0, revoked.stderr
    assert _enroll_cli(embedded, "credentials", "list", "--unused").stdout.count("1/1 left") == 2
    assert _enroll_cli(embedded, "credentials", "revoke", rows[1][0]).returncode != 0
    bad = _enroll_cli(embedded, "credentials", "new", "--profile", "nope", "--device", "x")
    assert bad.returncode != 0


@pytest.mark.parametrize("first,count,expected", [
    ("SN-0098", 3, ["SN-0098", "SN-0099", "SN-0100"]), ("A9", 2, ["A9", "A10"]), ("only", 1, ["only"])])
def test_device_range(first: str, count: int, expected: list[str]) -> None:
    from enroll.credentials import device_range

    assert device_range(first, count) == expected
