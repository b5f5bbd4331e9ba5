"""/metrics exposure: on the HTTPS listener by default, on plain HTTP only when
``[server] metrics_on_http = true``, and behind a bearer token (RFC 6750 §2.1) on every listener
when ``[server] metrics_token_env`` names one."""

from __future__ import annotations

import dataclasses

import pytest

from ca.errors import ConfigError
from enroll.app import validate
from enroll.config import Config, load_config
from enroll.setup import InitResult
from tests.harness import serve_inproc

TOKEN = "metrics-token-for-tests-0123456789"


def with_server_keys(embedded: InitResult, lines: str) -> Config:
    text = embedded.config_path.read_text()
    embedded.config_path.write_text(text.replace("[server]\n", "[server]\n" + lines, 1))
    return load_config(embedded.config_path)


async def test_metrics_are_served_on_https_and_not_on_plain_http_by_default(config: Config) -> None:
    assert config.server.metrics_on_http is False and config.server.metrics_token_env is None
    async with serve_inproc(config) as srv:
        status, _, body = await srv.get("/metrics")
        assert status == 200 and b"enroll_http_requests_total" in body
        status, _, body = await srv.get("/metrics", https=False)
        assert status == 404 and b"enroll_" not in body
        assert (await srv.get("/health", https=False))[0] == 200  # the listener itself still answers


async def test_metrics_on_http_is_an_explicit_choice(embedded: InitResult) -> None:
    config = with_server_keys(embedded, "metrics_on_http = true\n")
    async with serve_inproc(config) as srv:
        status, _, body = await srv.get("/metrics", https=False)
        assert status == 200 and b"enroll_http_requests_total" in body


async def test_metrics_token_is_required_on_every_listener(embedded: InitResult,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENROLL_TEST_METRICS_TOKEN", TOKEN)
    config = with_server_keys(embedded, 'metrics_on_http = true\nmetrics_token_env = "ENROLL_TEST_METRICS_TOKEN"\n')
    async with serve_inproc(config) as srv:
        for https in (True, False):
            status, headers, body = await srv.get("/metrics", https=https)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and b"enroll_" not in body
            for wrong in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer "):
                status, _, body = await srv.get("/metrics", https=https, headers={"Authorization": wrong})
                assert status == 401 and b"enroll_" not in body, wrong
            status, _, body = await srv.get("/metrics", https=https, headers={"Authorization": f"Bearer {TOKEN}"})
            assert status == 200 and b"enroll_http_requests_total" in body


async def test_metrics_token_does_not_open_plain_http(embedded: InitResult, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENROLL_TEST_METRICS_TOKEN", TOKEN)
    config = with_server_keys(embedded, 'metrics_token_env = "ENROLL_TEST_METRICS_TOKEN"\n')
    async with serve_inproc(config) as srv:
        status, _, _ = await srv.get("/metrics", https=False, headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 404


@pytest.mark.parametrize("value, problem", [(None, "is not set"), ("short", "at least 16")])
def test_metrics_token_env_must_hold_a_real_token(config: Config, monkeypatch: pytest.MonkeyPatch,
                                                  value: str | None, problem: str) -> None:
    monkeypatch.delenv("ENROLL_TEST_METRICS_TOKEN", raising=False)
    if value is not None:
        monkeypatch.setenv("ENROLL_TEST_METRICS_TOKEN", value)
    cfg = dataclasses.replace(config, server=dataclasses.replace(config.server,
                                                                 metrics_token_env="ENROLL_TEST_METRICS_TOKEN"))
    with pytest.raises(ConfigError) as exc:
        validate(cfg)
    assert exc.value.key == "server.metrics_token_env" and problem in exc.value.problem


def test_metrics_on_http_must_be_a_boolean(embedded: InitResult) -> None:
    with pytest.raises(ConfigError) as exc:
        with_server_keys(embedded, 'metrics_on_http = "yes"\n')
    assert exc.value.key == "server.metrics_on_http"


async def test_unauthenticated_refusals_are_counted_in_metrics(config: Config) -> None:
    """The audit keeps a sample of refusals that authenticated nobody; /metrics counts them all."""
    from prometheus_client.parser import text_string_to_metric_families

    import base64

    from cryptography.hazmat.primitives import serialization

    from tests.support import make_csr

    csr = base64.b64encode(make_csr("metrics-refusal")[0].public_bytes(serialization.Encoding.DER))
    async with serve_inproc(config) as srv:
        before = await srv.issued()
        for _ in range(3):
            status, _, _ = await srv.get("/.well-known/est/simpleenroll", method="POST", data=csr,
                                         headers={"Content-Type": "application/pkcs10",
                                                  "Authorization": "Basic " + "bm9ib2R5Ondyb25n"})
            assert status == 401
        assert await srv.issued() == before
        status, _, body = await srv.get("/metrics")
    assert status == 200
    counts = {tuple(sorted(s.labels.items())): s.value
              for f in text_string_to_metric_families(body.decode()) for s in f.samples
              if s.name == "enroll_unauthenticated_refusals_total"}
    assert sum(counts.values()) == 3, counts
