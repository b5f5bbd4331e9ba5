"""`enroll serve` refuses to start, with a message naming the key, when the CA key is missing,
unreadable, not a key, encrypted with another passphrase or readable by others; it never falls
back to another key and never opens a listener (README, Security model: failures are safe). The config-level
checks are in tests/enroll/test_config.py; these drive the real process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization

from ca.keys import write_private_key
from enroll.setup import InitResult


def _encrypt_with(passphrase: bytes) -> Callable[[InitResult], dict[str, str]]:
    def go(init: InitResult) -> dict[str, str]:
        path = init.certs_dir / "issuing-ca.key"
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        write_private_key(path, key, passphrase)  # type: ignore[arg-type]
        text = init.config_path.read_text()
        init.config_path.write_text(text.replace('# key_passphrase_env = "ENROLL_CA_PASSPHRASE"',
                                                 'key_passphrase_env = "ENROLL_CA_PASSPHRASE"'))
        return {"ENROLL_CA_PASSPHRASE": "not-the-passphrase"}
    return go


def _missing(init: InitResult) -> dict[str, str]:
    (init.certs_dir / "issuing-ca.key").unlink()
    return {}


def _directory(init: InitResult) -> dict[str, str]:
    path = init.certs_dir / "issuing-ca.key"
    path.unlink()
    path.mkdir(mode=0o700)
    return {}


def _garbage(init: InitResult) -> dict[str, str]:
    path = init.certs_dir / "issuing-ca.key"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    os.chmod(path, 0o600)
    return {}


def _mode(mode: int) -> Callable[[InitResult], dict[str, str]]:
    def go(init: InitResult) -> dict[str, str]:
        os.chmod(init.certs_dir / "issuing-ca.key", mode)
        return {}
    return go


def _unreadable_as_user(init: InitResult) -> dict[str, str]:
    """Mode 000; as root that is still readable, so only meaningful for a non-root run."""
    os.chmod(init.certs_dir / "issuing-ca.key", 0o000)
    return {}


CASES: dict[str, Callable[[InitResult], dict[str, str]]] = {
    "missing": _missing,
    "a-directory": _directory,
    "not-a-key": _garbage,
    "wrong-passphrase": _encrypt_with(b"the-real-one"),
    "group-readable": _mode(0o640),
    "world-readable": _mode(0o604),
}
if os.geteuid() != 0:
    CASES["mode-000"] = _unreadable_as_user


@pytest.mark.parametrize("case", sorted(CASES))
def test_serve_refuses_to_start_with_a_bad_ca_key(embedded: InitResult, case: str) -> None:
    env = dict(os.environ, **CASES[case](embedded))
    proc = subprocess.run([sys.executable, "-m", "enroll", "-c", str(embedded.config_path), "serve"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=embedded.config_path.parent)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "cas.issuing.key" in out, out
    assert "Traceback" not in out, out
    assert "not-the-passphrase" not in out and "the-real-one" not in out
