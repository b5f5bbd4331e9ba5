"""Config validation: every error names the key and the problem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ca.errors import ConfigError
from enroll.app import validate
from enroll.config import load_config
from enroll.setup import InitResult
from tests.support import rewrite_config


def test_shipped_default_config_is_valid(embedded: InitResult) -> None:
    cfg = load_config(embedded.config_path)
    validate(cfg)
    assert {"gateway", "sensor", "bootstrap", "router", "mdm", "manual"} <= set(cfg.profiles)
    assert cfg.profiles["manual"].manual
    assert cfg.ledger_url.startswith("sqlite:///") and cfg.ledger_url.endswith("var/enroll.db")


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("validity_days = 825", "validity_days = \"long\"", "profiles.gateway.validity_days"),
        ('key_types = ["ec-p256", "ec-p384"]', 'key_types = ["ec-p192"]', "profiles.sensor.key_types"),
        ('key_usage = ["digital_signature"]\nextended_key_usage = ["client_auth"]\n[profiles.sensor.subject]',
         'key_usage = ["key_cert_sign"]\nextended_key_usage = ["client_auth"]\n[profiles.sensor.subject]',
         "profiles.sensor.key_usage"),
        ('ca = "issuing"', 'ca = "nope"', "profiles.gateway.ca"),
        ("max_body_bytes = 262144", "max_body_byte = 262144", "server.max_body_byte"),
        ('url = "sqlite:///var/enroll.db"', 'url = "mysql://x"', "ledger.url"),
        ('client_trust = ["enroll", "manufacturer"]', 'client_trust = ["nobody"]', "tls.client_trust"),
        ('approval = "manual"', 'approval = "sometimes"', "profiles.manual.approval"),
    ],
)
def test_errors_name_the_key(embedded: InitResult, old: str, new: str, key: str) -> None:
    rewrite_config(embedded, old, new)
    with pytest.raises(ConfigError) as err:
        validate(load_config(embedded.config_path))
    assert err.value.key == key, str(err.value)


def test_refuses_a_ca_key_readable_by_others(embedded: InitResult) -> None:
    os.chmod(embedded.certs_dir / "issuing-ca.key", 0o644)
    with pytest.raises(ConfigError) as err:
        validate(load_config(embedded.config_path))
    assert err.value.key == "cas.issuing.key" and "chmod 600" in err.value.problem


def test_passphrase_protected_ca_key(embedded: InitResult, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization

    from ca.keys import write_private_key

    key_path = embedded.certs_dir / "issuing-ca.key"
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    write_private_key(key_path, key, b"s3cret")  # type: ignore[arg-type]
    rewrite_config(embedded, '# key_passphrase_env = "ENROLL_CA_PASSPHRASE"', 'key_passphrase_env = "ENROLL_CA_PASSPHRASE"')
    monkeypatch.delenv("ENROLL_CA_PASSPHRASE", raising=False)
    with pytest.raises(ConfigError) as err:
        validate(load_config(embedded.config_path))
    assert err.value.key == "cas.issuing.key_passphrase_env"
    monkeypatch.setenv("ENROLL_CA_PASSPHRASE", "wrong")
    with pytest.raises(ConfigError):
        validate(load_config(embedded.config_path))
    monkeypatch.setenv("ENROLL_CA_PASSPHRASE", "s3cret")
    validate(load_config(embedded.config_path))


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "enroll.toml")
    assert "enroll init" in str(err.value)
