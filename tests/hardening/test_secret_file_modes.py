"""The serverkeygen signer key and the KEK files (RFC 7030 §4.4) are secret keys like the CA key:
a file that group or others can read (or write) is a ConfigError naming the key at start
(ca.keys.check_key_file_mode, the same rule as [cas.*] key), and `enroll serve` does not start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from ca.errors import ConfigError
from enroll.app import validate
from enroll.config import Config, load_config
from enroll.setup import InitResult
from tests.support import add_est_test_profiles

KEK_KEY = "profiles.skg.est.serverkeygen_keks.6b656b2d31"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_kek_file_readable_by_others_is_refused(embedded: InitResult, mode: int) -> None:
    config = add_est_test_profiles(embedded)
    validate(config)  # 0600: accepted
    os.chmod(embedded.config_path.parent / "kek-1.hex", mode)
    with pytest.raises(ConfigError) as exc:
        validate(config)
    assert exc.value.key == KEK_KEY and "chmod 600" in exc.value.problem


def _explicit_signer(embedded: InitResult) -> Config:
    certs = embedded.certs_dir
    shutil.copy(certs / "tls-server.pem", certs / "skg-signer.pem")
    shutil.copy(certs / "tls-server.key", certs / "skg-signer.key")
    text = embedded.config_path.read_text()
    embedded.config_path.write_text(text.replace("[est]\n", '[est]\nserverkeygen_signer_cert = "certs/skg-signer.pem"\n'
                                                 'serverkeygen_signer_key = "certs/skg-signer.key"\n', 1))
    return add_est_test_profiles(embedded)


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_serverkeygen_signer_key_readable_by_others_is_refused(embedded: InitResult, mode: int) -> None:
    config = _explicit_signer(embedded)
    os.chmod(embedded.certs_dir / "skg-signer.key", 0o600)
    validate(config)
    os.chmod(embedded.certs_dir / "skg-signer.key", mode)
    with pytest.raises(ConfigError) as exc:
        validate(config)
    assert exc.value.key == "est.serverkeygen_signer_key" and "chmod 600" in exc.value.problem


def test_tls_key_signing_serverkeygen_is_checked_too(embedded: InitResult) -> None:
    config = add_est_test_profiles(embedded)  # no explicit signer: the TLS server key signs the key part
    os.chmod(embedded.certs_dir / "tls-server.key", 0o644)
    with pytest.raises(ConfigError) as exc:
        validate(config)
    assert exc.value.key == "tls.key"


def test_serve_refuses_to_start_with_a_group_readable_kek(embedded: InitResult) -> None:
    add_est_test_profiles(embedded)
    os.chmod(embedded.config_path.parent / "kek-1.hex", 0o640)
    assert load_config(embedded.config_path).profile_est["skg"]  # the profile is there
    proc = subprocess.run([sys.executable, "-m", "enroll", "-c", str(embedded.config_path), "serve"],
                          capture_output=True, text=True, timeout=60, cwd=embedded.config_path.parent)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert KEK_KEY in out and "chmod 600" in out, out
    assert "Traceback" not in out and "listening" not in out, out
    assert bytes(range(32)).hex() not in out  # the KEK itself is never printed
