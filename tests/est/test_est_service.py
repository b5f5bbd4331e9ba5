"""est/service.py in isolation: configuration validation and /cacerts rollover content."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509

from ca.api import AuthMethod, CAChain
from ca.errors import ConfigError
from enroll.pki import DevPKI
from est import wire
from est.service import EstService
from est.settings import PopMode, parse_settings


@dataclass
class P:
    name: str
    est: dict[str, Any]
    approval: str = "auto"
    key_types: tuple[str, ...] = ("ec-p256",)
    subject_require: tuple[str, ...] = ("CN",)
    subject_force: tuple[tuple[str, str], ...] = ()
    san_allow: tuple[str, ...] = ()


def settings(*profiles: P, est: dict[str, Any] | None = None) -> Any:
    return parse_settings(est or {}, {p.name: p for p in profiles}, {p.name: p.est for p in profiles},
                          trust_names=("enroll",))


@pytest.mark.parametrize("table,key", [
    ({"labels": ["a"]}, "profiles.p.est.auth"),
    ({"labels": ["a"], "auth": []}, "profiles.p.est.auth"),
    ({"labels": ["a"], "auth": ["password"]}, "profiles.p.est.auth"),
    ({"labels": ["a"], "auth": ["client-cert"]}, "profiles.p.est.client_trust"),
    ({"labels": ["a"], "auth": ["client-cert"], "client_trust": ["nope"]}, "profiles.p.est.client_trust"),
    ({"labels": ["a/b"], "auth": ["basic"]}, "profiles.p.est.labels"),
    ({"labels": ["cacerts"], "auth": ["basic"]}, "profiles.p.est.labels"),
    ({"labels": ["a"], "auth": ["basic"], "pop": "tls-exporter"}, "profiles.p.est.pop"),
    ({"labels": ["a"], "auth": ["basic"], "typo": 1}, "profiles.p.est.typo"),
])
def test_invalid_profile_tables_fail_closed(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings(P("p", table))
    assert err.value.key == key


@pytest.mark.parametrize("value,mode", [
    ("off", PopMode.OFF), ("tls-unique", PopMode.TLS_UNIQUE), (True, PopMode.TLS_UNIQUE), (False, PopMode.OFF),
    (None, PopMode.OFF),
])
def test_pop_config_values_name_the_pop_linking_modes(value: Any, mode: PopMode) -> None:
    """``pop`` (RFC 7030 §3.5) keeps its config spellings; absent means off."""
    table: dict[str, Any] = {"labels": ["a"], "auth": ["basic"]}
    if value is not None:
        table["pop"] = value
    assert settings(P("p", table)).rules["a"].pop is mode


def test_serverkeygen_with_manual_approval_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        settings(P("m", {"labels": ["m"], "auth": ["basic"], "serverkeygen": True}, approval="manual"))
    s = settings(P("m", {"labels": ["m"], "auth": ["basic"]}, approval="manual"))
    assert s.rules["m"].serverkeygen is False


def test_duplicate_label_and_bad_default() -> None:
    with pytest.raises(ConfigError):
        settings(P("a", {"labels": ["x"], "auth": ["basic"]}), P("b", {"labels": ["x"], "auth": ["basic"]}))
    with pytest.raises(ConfigError):
        settings(P("a", {"labels": ["x"], "auth": ["basic"]}), est={"default_profile": "zzz"})
    s = settings(P("a", {"labels": ["x"], "auth": ["basic+client-cert", "basic"], "client_trust": ["enroll"]}),
                 est={"default_profile": "a"})
    assert s.rules[""] is s.rules["x"]
    assert s.rules["x"].auth == (frozenset({AuthMethod.BASIC, AuthMethod.TLS_CLIENT_CERT}), frozenset({AuthMethod.BASIC}))


class FakeIssuer:
    def __init__(self, chain: CAChain) -> None:
        self.chain = chain

    async def ca_chain(self, profile_name: str) -> CAChain:
        return self.chain


async def test_cacerts_includes_rollover_certificates(dev_pki: DevPKI) -> None:
    """RFC 7030 §4.1.3: during a root rollover /cacerts adds OldWithNew, NewWithOld, ..."""
    chain = CAChain(issuer=dev_pki.issuing.cert, chain=(dev_pki.issuing.cert, dev_pki.root.cert),
                    rollover=(dev_pki.manufacturer.cert, dev_pki.root.cert))
    svc = EstService(settings(P("a", {"labels": ["x"], "auth": ["basic"]})), FakeIssuer(chain))  # type: ignore[arg-type]
    resp = await svc.cacerts("x")
    assert resp.headers["Content-Type"] == "application/pkcs7-mime"
    certs = wire.decode_certs_only(base64.b64decode(resp.body))
    assert set(certs) == {dev_pki.issuing.cert, dev_pki.root.cert, dev_pki.manufacturer.cert}
    assert len(certs) == 3


async def test_csrattrs_none_is_204(dev_pki: DevPKI) -> None:
    svc = EstService(settings(P("a", {"labels": ["x"], "auth": ["basic"], "csrattrs": "none"})),
                     FakeIssuer(CAChain(dev_pki.issuing.cert, (dev_pki.issuing.cert,))))  # type: ignore[arg-type]
    resp = await svc.csrattrs("x")
    assert resp.status == 204 and resp.body == b""


def test_base64_line_length_setting() -> None:
    with pytest.raises(ConfigError):
        settings(P("a", {"labels": ["x"], "auth": ["basic"]}), est={"base64_line_length": 10})
    s = settings(P("a", {"labels": ["x"], "auth": ["basic"]}), est={"base64_line_length": 64})
    assert s.line_length == 64
