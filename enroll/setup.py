"""Creating the embedded default's directory: config, development PKI, data folder, secrets."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ca.authz import hash_secret, new_challenge
from enroll.default_config import render
from enroll.pki import DevPKI, make_dev_pki, with_ndes_ra, write_dev_pki

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
                   pki: DevPKI | None = None, record_client: bool = False, ndes_ra: bool = False) -> InitResult:
    """Write ``enroll.toml``, ``certs/`` (PKI, keys 0600, dev-secrets.txt) and ``var/`` under ``base``.

    ``ndes_ra``: the SCEP RA in the Microsoft NDES layout (a signing and an encryption RA
    certificate, ``[scep] ra_encryption_cert``/``ra_encryption_key``), which PyScep requires.
    """
    base.mkdir(parents=True, exist_ok=True)
    (base / "var").mkdir(exist_ok=True)
    certs_dir = base / "certs"
    pki = pki or make_dev_pki()
    if ndes_ra and pki.ra_enc is None:
        pki = with_ndes_ra(pki)
    write_dev_pki(pki, certs_dir)
    password = new_challenge(16)
    challenge = new_challenge(16)
    admin_token = new_challenge(32)
    cfg = base / CONFIG_NAME
    text = render(https_port=https_port, http_port=http_port, est_password_hash=hash_secret(password),
                  scep_challenge_hash=hash_secret(challenge), admin_token_hash=hash_secret(admin_token))
    if pki.ra_enc is not None:
        text = _with_ndes_ra_keys(text)
    cfg.write_text(text)
    fd = os.open(certs_dir / "dev-secrets.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"EST_USER=estuser\nEST_PASSWORD={password}\nSCEP_CHALLENGE={challenge}\nADMIN_TOKEN={admin_token}\n")
    if record_client:
        record_example_client(cfg)
    return InitResult(cfg, certs_dir, "estuser", password, challenge, admin_token)


NDES_RA_KEYS = ('ra_encryption_cert = "certs/scep-ra-enc.pem"   # NDES layout: decrypts requests addressed to it\n'
                'ra_encryption_key = "certs/scep-ra-enc.key"\n')


def _with_ndes_ra_keys(text: str) -> str:
    """The rendered config with the encryption RA keys right after ``[scep] ra_key``."""
    anchor = 'ra_key = "certs/scep-ra.key"\n'
    if text.count(anchor) != 1:
        raise ValueError("the config template has no single [scep] ra_key line")
    return text.replace(anchor, anchor + NDES_RA_KEYS)


def record_example_client(config_path: Path, profile: str = "gateway") -> None:
    """Record the development PKI's example client certificate in the config's ledger.

    It is signed by our issuing CA, and a certificate of our CA that the ledger does not know
    authenticates nothing (docs/ARCHITECTURE.md, "Authentication"). Idempotent.
    """

    async def go() -> None:
        from enroll.app import build_issuer
        from enroll.config import load_config

        issuer = build_issuer(load_config(config_path))
        try:
            await issuer.ledger.migrate()
            cert = x509.load_pem_x509_certificate((config_path.parent / "certs" / "example-client.pem").read_bytes())
            if await issuer.certificate_status(cert) is None:
                await issuer.adopt(cert, profile, by="enroll init")
        finally:
            await issuer.ledger.close()

    # A thread of its own: init may be called from code that already runs an event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, go()).result()
