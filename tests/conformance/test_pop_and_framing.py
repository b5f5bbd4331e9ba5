"""The suite's EST PoP-linking check (RFC 7030 §3.5, tls-unique on TLS 1.2) and its client-framing
INTEROP warnings (RFC 8951 §3), judged against our own server and on real encoded bodies."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from conformance import est_common as est_suite
from conformance.model import Interop
from conformance.transport import Exchange
from enroll.pki import DevPKI
from enroll.setup import InitResult
from tests.harness import RunningServer, start_server
from tests.support import EST_POP_PROFILE, suite_result


def _with_pop_label(tls_min: str) -> Any:
    def edit(init: InitResult) -> None:
        text = init.config_path.read_text()
        if tls_min != "1.2":
            assert 'min_version = "1.2"' in text
            text = text.replace('min_version = "1.2"', f'min_version = "{tls_min}"')
        init.config_path.write_text(text + EST_POP_PROFILE)
    return edit


@pytest.fixture
def pop_server(tmp_path: Path, dev_pki: DevPKI) -> Iterator[RunningServer]:
    """`enroll serve` with a PoP-linked label "pop" (TLS 1.2 allowed)."""
    with start_server(tmp_path, dev_pki, _with_pop_label("1.2")) as srv:
        yield srv


@pytest.fixture
def pop_server_tls13(tmp_path: Path, dev_pki: DevPKI) -> Iterator[RunningServer]:
    """The same, but the listener accepts TLS 1.3 only."""
    with start_server(tmp_path, dev_pki, _with_pop_label("1.3")) as srv:
        yield srv


def issued(srv: RunningServer) -> list[str]:
    """The issued certificates' rows, from the ledger (through the admin CLI)."""
    out = srv.enroll("certs", "list").stdout
    return [ln for ln in out.splitlines()[1:] if ln.strip()]


def test_pop_linking_refuses_another_sessions_tls_unique_and_accepts_its_own(pop_server: RunningServer) -> None:
    before = issued(pop_server)
    report, run = pop_server.est_suite("--label", "pop", "--only", r"^est\.pop\.")
    r = suite_result(report, "est.pop.tls-unique")
    assert r["verdict"] == "pass", r
    assert "another session's tls-unique refused (400)" in r["detail"]
    assert suite_result(report, "est.pop.reject-message")["verdict"] == "pass"
    assert run.returncode == 0
    after = issued(pop_server)
    # Exactly one certificate: the CSR bound to this session; the one bound to another was not issued.
    assert len(after) == len(before) + 1
    assert any("pop" in ln for ln in after) and not any("pop-wrong" in ln for ln in after)


def test_pop_linking_is_skipped_when_the_label_does_not_ask_for_it(pop_server: RunningServer) -> None:
    before = issued(pop_server)
    report, _ = pop_server.est_suite("--label", "gateway", "--only", r"^est\.pop\.")
    r = suite_result(report, "est.pop.tls-unique")
    assert r["verdict"] == "skip"
    assert "does not ask for PoP linking" in r["detail"] and "--pop-label" in r["detail"]
    assert issued(pop_server) == before


def test_pop_label_option_checks_a_label_other_than_the_main_one(pop_server: RunningServer) -> None:
    report, _ = pop_server.est_suite("--label", "gateway", "--pop-label", "pop", "--only", r"^est\.pop\.")
    assert suite_result(report, "est.pop.tls-unique")["verdict"] == "pass"
    assert suite_result(report, "est.pop.csrattrs-advertises")["verdict"] == "pass"


def test_pop_label_without_challenge_password_in_csrattrs_fails(pop_server: RunningServer) -> None:
    # "gateway" does not require PoP linking: named as a PoP label, its /csrattrs lacks challengePassword
    # (RFC 7030 §4.5.2) and a CSR bound to another session is accepted, so the linking check is skipped.
    report, _ = pop_server.est_suite("--pop-label", "gateway", "--only", r"^est\.pop\.")
    assert suite_result(report, "est.pop.csrattrs-advertises")["verdict"] == "fail"
    assert "does not require PoP linking" in suite_result(report, "est.pop.tls-unique")["detail"]


def test_pop_linking_is_skipped_on_a_tls13_only_server(pop_server_tls13: RunningServer) -> None:
    before = issued(pop_server_tls13)
    report, run = pop_server_tls13.est_suite("--label", "pop", "--only", r"^est\.(pop\.|tls\.)")
    r = suite_result(report, "est.pop.tls-unique")
    assert r["verdict"] == "skip"
    assert "TLS 1.2" in r["detail"] and "tls-unique exists only up to TLS 1.2" in r["detail"]
    assert suite_result(report, "est.tls.version")["detail"].startswith("TLSv1.3")
    assert run.returncode == 0
    assert issued(pop_server_tls13) == before


# ---------------------------------------------------------------- client framing (RFC 8951 §3)
def _exchange(body: bytes) -> Exchange:
    ex = Exchange("GET", "https://127.0.0.1/.well-known/est/cacerts", {}, b"")
    ex.status, ex.headers, ex.body = 200, [("Content-Type", "application/pkcs7-mime")], body
    return ex


def _chain_der(dev_pki: DevPKI) -> bytes:
    """A certs-only body's worth of real DER: the dev PKI's certificates, concatenated."""
    ders = b"".join(p.cert.public_bytes(serialization.Encoding.DER) for p in (dev_pki.root, dev_pki.issuing))
    assert len(ders) > 800, "needs a body whose one-line base64 passes 1024 characters"
    return ders


def test_wrapped_base64_is_an_interop_warning_naming_strongswan(dev_pki: DevPKI) -> None:
    body = est_suite.b64_lines(_chain_der(dev_pki), 64, "\r\n")
    with pytest.raises(Interop) as info:
        est_suite.check_framing(body, _exchange(body))
    assert info.value.breaks == ["strongSwan 5.9.8 pki --est (fails on any line break)"]
    assert "libest estclient 3.2.0" in info.value.works[0]


def test_one_long_base64_line_is_an_interop_warning_naming_libest(dev_pki: DevPKI) -> None:
    body = base64.b64encode(_chain_der(dev_pki))
    assert len(body) >= est_suite.BIO_LINE_LIMIT
    with pytest.raises(Interop) as info:
        est_suite.check_framing(body, _exchange(body))
    assert info.value.breaks[0].startswith("libest estclient 3.2.0 (OpenSSL BIO line mode")
    assert info.value.works == ["strongSwan 5.9.8 pki --est"]


def test_one_short_base64_line_suits_both_clients(dev_pki: DevPKI) -> None:
    body = base64.b64encode(_chain_der(dev_pki)[:600]) + b"\n"
    assert "readable by libest estclient 3.2.0 and strongSwan" in est_suite.check_framing(body, _exchange(body))


def test_missing_content_transfer_encoding_is_an_interop_warning_naming_libest() -> None:
    ex = _exchange(b"MIIB")
    with pytest.raises(Interop) as info:
        est_suite.check_cte(ex)
    assert info.value.breaks == ["libest estclient 3.2.0 (requires the header)"]
    ex.headers.append(("Content-Transfer-Encoding", "base64"))
    assert est_suite.check_cte(ex) == "base64"


def test_framing_quirks_are_warnings_in_reports_and_never_fail_the_run(running_server: RunningServer) -> None:
    report, run = running_server.est_suite("--only", r"^est\.(cacerts|simpleenroll)\.")
    framing = suite_result(report, "est.cacerts.framing")
    # Our server sends one unwrapped line; the dev chain is long enough to pass the BIO limit.
    assert framing["verdict"] == "interop", framing
    assert framing["breaks"] and "libest" in framing["breaks"][0] and "strongSwan" in framing["works"][0]
    assert report["summary"]["interop"] >= 1 and report["summary"]["fail"] == 0
    assert run.returncode == 0
    assert "Interop warnings" in run.stderr and "breaks libest estclient 3.2.0" in run.stderr
