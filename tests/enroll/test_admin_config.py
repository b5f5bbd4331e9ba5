"""The config keys of the lifecycle issue: [admin], [server] base_url, per-CA OCSP/AIA settings,
profile switches for CDP/AIA; every error names its key."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest

from ca.authz import hash_secret
from ca.errors import ConfigError
from enroll.config import Config, parse_config
from enroll.config_toml import parse_duration
from enroll.default_config import render
from enroll.setup import InitResult


def raw_of(embedded: InitResult) -> dict[str, Any]:
    return tomllib.loads(embedded.config_path.read_text())


def parse(embedded: InitResult, raw: dict[str, Any]) -> Config:
    return parse_config(raw, embedded.config_path)


def test_urls_derive_from_base_url_and_can_be_overridden(embedded: InitResult) -> None:
    raw = raw_of(embedded)
    base = raw["server"]["base_url"]
    ca = parse(embedded, raw).cas["issuing"]
    assert (ca.crl_url, ca.ocsp_url, ca.ca_issuers_url) == (f"{base}/crl/issuing.crl", f"{base}/ocsp",
                                                          f"{base}/ca/issuing.crt")
    raw["cas"]["issuing"].update(ocsp_url="http://ocsp.example.net/", ca_issuers_url="")
    ca = parse(embedded, raw).cas["issuing"]
    assert ca.ocsp_url == "http://ocsp.example.net/" and ca.ca_issuers_url is None
    del raw["server"]["base_url"]
    del raw["cas"]["issuing"]["ocsp_url"]
    ca = parse(embedded, raw).cas["issuing"]
    assert ca.crl_url is None and ca.ocsp_url is None


@pytest.mark.parametrize("change, key", [
    (lambda r: r["server"].update(base_url="ftp://x"), "server.base_url"),
    (lambda r: r["cas"]["issuing"].update(ocsp_url="gopher://x"), "cas.issuing.ocsp_url"),
    (lambda r: r["cas"]["issuing"].update(ocsp_cert="certs/x.pem"), "cas.issuing.ocsp_key"),
    (lambda r: r["cas"]["issuing"].update(ocsp_validity_minutes=0), "cas.issuing.ocsp_validity_minutes"),
    (lambda r: r["profiles"]["gateway"].update(authority_info_access="yes"), "profiles.gateway.authority_info_access"),
    (lambda r: r.update(admin={"tokenz": {}}), "admin.tokenz"),
    (lambda r: r.update(admin={"tokens": {"ops": {"hash": "plain"}}}), "admin.tokens.ops.hash"),
    (lambda r: r.update(admin={"client_trust": ["nope"]}), "admin.client_trust"),
    (lambda r: r.update(admin={"client_trust": ["enroll"]}), "admin.client_trust"),  # authenticates devices
    (lambda r: (r["trust"].update(admin={"certs": ["certs/root-ca.pem"]}), r.update(admin={"client_trust": ["admin"]})),
     "admin.client_trust"),  # not in the TLS handshake's anchors
], ids=["base-url", "ocsp-url", "ocsp-key-missing", "ocsp-validity", "aia-bool", "admin-unknown-key",
        "admin-hash", "admin-trust-unknown", "admin-trust-shared-with-devices", "admin-trust-not-in-tls"])
def test_bad_lifecycle_keys_are_named(embedded: InitResult, change: Any, key: str) -> None:
    raw = copy.deepcopy(raw_of(embedded))
    change(raw)
    with pytest.raises(ConfigError) as exc:
        parse(embedded, raw)
    assert exc.value.key == key, str(exc.value)


def test_admin_is_off_without_a_table_and_on_with_one(embedded: InitResult) -> None:
    raw = raw_of(embedded)
    raw.pop("admin", None)
    assert parse(embedded, raw).admin is None
    raw["admin"] = {"tokens": {"ops": {"hash": hash_secret("t")}}}
    cfg = parse(embedded, raw)
    assert cfg.admin is not None and set(cfg.admin.tokens) == {"ops"} and cfg.admin.client_trust == ()


def test_template_renders_admin_enabled_or_commented() -> None:
    on = tomllib.loads(render(https_port=1, http_port=2, est_password_hash="h", scep_challenge_hash="c",
                              admin_token_hash="scrypt$1$1$1$a$b"))
    assert on["admin"]["tokens"]["admin"]["hash"] == "scrypt$1$1$1$a$b"
    off = tomllib.loads(render(https_port=1, http_port=2, est_password_hash="h", scep_challenge_hash="c"))
    assert "admin" not in off and off["server"]["base_url"] == "http://127.0.0.1:2"


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("90s", 90), ("2w", 14 * 86400),
                                           ("15m", 900), ("7", 7 * 86400)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-3d", "3y", "1.5d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
