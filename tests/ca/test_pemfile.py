"""ca/pemfile.py: certificates, CRLs and private keys as PEM (RFC 7468) that cryptography's own
loaders read back; a private key file is readable by its owner only (0600), also when it
existed before with a wider mode; ``-`` writes to standard output."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.pemfile import key_pem, pem, write
from tests.support import cached_rsa_key, make_cert


def _crl(key: ec.EllipticCurvePrivateKey) -> x509.CertificateRevocationList:
    now = dt.datetime.now(dt.timezone.utc)
    issuer = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "CRL issuer")])
    return (x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(now)
            .next_update(now + dt.timedelta(hours=1)).sign(key, hashes.SHA256()))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_pem_concatenates_certificates_that_load_back_in_order() -> None:
    first, second = make_cert(cached_rsa_key(0), "first"), make_cert(cached_rsa_key(1), "second")
    data = pem([first, second])
    assert data.count(b"-----BEGIN CERTIFICATE-----") == 2
    assert x509.load_pem_x509_certificates(data) == [first, second]
    assert pem([]) == b""


def test_pem_writes_a_crl_block() -> None:
    crl = _crl(ec.generate_private_key(ec.SECP256R1()))
    data = pem([crl])
    assert data.startswith(b"-----BEGIN X509 CRL-----")
    assert x509.load_pem_x509_crl(data) == crl


def test_key_pem_is_pkcs8_and_encrypted_only_with_a_passphrase() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    plain = key_pem(key)
    assert plain.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = serialization.load_pem_private_key(plain, None)
    assert loaded.private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    locked = key_pem(key, b"s3cret")
    assert locked.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(locked, None)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(locked, b"wrong")
    unlocked = serialization.load_pem_private_key(locked, b"s3cret")
    assert unlocked.private_numbers() == key.private_numbers()  # type: ignore[union-attr]


def test_write_creates_a_private_file_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    old = os.umask(0o022)
    try:
        write(path, b"secret\n", private=True)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"secret\n"
    assert _mode(path) == 0o600


def test_write_brings_an_existing_private_file_to_0600_and_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"an older, longer content\n")
    path.chmod(0o644)
    write(path, b"new\n", private=True)
    assert path.read_bytes() == b"new\n"
    assert _mode(path) == 0o600


def test_write_leaves_a_public_file_to_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    old = os.umask(0o022)
    try:
        write(path, b"public\n")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"public\n"
    assert _mode(path) == 0o644


@pytest.mark.parametrize("target", [None, Path("-")], ids=["none", "dash"])
def test_write_dash_goes_to_standard_output(target: Path | None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cert = make_cert(cached_rsa_key(0), "stdout")
    write(target, pem([cert]), private=True)
    out = capsys.readouterr().out
    assert x509.load_pem_x509_certificates(out.encode()) == [cert]
    assert list(tmp_path.iterdir()) == []  # no file called "-"
