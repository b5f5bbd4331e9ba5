"""Creating the embedded default's directory: config, development PKI, data folder, secrets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ca.authz import hash_secret, new_challenge
from enroll.default_config import render
from enroll.pki import DevPKI, make_dev_pki, write_dev_pki

CONFIG_NAME = "enroll.toml"


@dataclass(frozen=True)
class InitResult:
    """What ``enroll init`` made."""

    config_path: Path
    certs_dir: Path
    est_user: str
    est_password: str
    scep_challenge: str
    admin_token: str = ""


def init_directory(base: Path, *, https_port: int = 8443, http_port: int = 8080,
                   pki: DevPKI | None = None) -> InitResult:
    """Write ``enroll.toml``, ``certs/`` (PKI, keys 0600, dev-secrets.txt) and ``var/`` under ``base``."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "var").mkdir(exist_ok=True)
    certs_dir = base / "certs"
    write_dev_pki(pki or make_dev_pki(), certs_dir)
    password = new_challenge(16)
    challenge = new_challenge(16)
    admin_token = new_challenge(32)
    cfg = base / CONFIG_NAME
    cfg.write_text(render(https_port=https_port, http_port=http_port, est_password_hash=hash_secret(password),
                          scep_challenge_hash=hash_secret(challenge), admin_token_hash=hash_secret(admin_token)))
    fd = os.open(certs_dir / "dev-secrets.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"EST_USER=estuser\nEST_PASSWORD={password}\nSCEP_CHALLENGE={challenge}\nADMIN_TOKEN={admin_token}\n")
    return InitResult(cfg, certs_dir, "estuser", password, challenge, admin_token)
