"""As a service (issue 17): the systemd unit under packaging/ passes `systemd-analyze verify`
and carries the hardening it promises; stopping the server (what `systemctl restart` does)
drains: a request in flight when SIGTERM arrives still gets its certificate."""

from __future__ import annotations

import asyncio
import base64
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.ledger import Ledger
from enroll.pki import DevPKI
from enroll.setup import record_example_client
from est.client import build_csr
from tests.harness import start_server
from tests.support import ROOT, require_tool

UNIT = ROOT / "packaging" / "enroll.service"


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_is_hardened_as_documented() -> None:
    d = _directives(UNIT.read_text())
    for key, value in (("User", "enroll"), ("Group", "enroll"), ("ProtectSystem", "strict"),
                       ("NoNewPrivileges", "true"), ("PrivateTmp", "true"), ("StateDirectory", "enroll"),
                       ("ConfigurationDirectory", "enroll"), ("Restart", "on-failure"), ("KillSignal", "SIGTERM")):
        assert d.get(key) == [value], (key, d.get(key))
    assert all(cmd.startswith("/opt/enroll/bin/enroll -c /etc/enroll/enroll.toml ")
               for cmd in d["ExecStart"] + d["ExecStartPre"])
    # the server drains for up to 30 s (enroll/server.py shutdown_timeout): systemd must wait longer
    assert int(d["TimeoutStopSec"][0]) > 30


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    enroll = Path(sys.executable).parent / "enroll"
    assert enroll.exists(), "the enroll console script of this venv"
    unit = tmp_path / "enroll.service"  # the same unit, pointing at this checkout's enroll
    unit.write_text(UNIT.read_text().replace("/opt/enroll/bin/enroll", str(enroll)))
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (res.stdout + res.stderr).splitlines() if "enroll.service" in line]
    assert res.returncode == 0 and not complaints, res.stdout + res.stderr
    # and a unit with a mistake in it is refused by the same check
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter"))
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "ProtectSystem" in res.stdout + res.stderr or "protect system" in (res.stdout + res.stderr).lower()


def _read_head(tls: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_sigterm_drains_an_enrollment_in_flight(tmp_path: Path, dev_pki: DevPKI) -> None:
    with start_server(tmp_path, dev_pki) as srv:
        record_example_client(srv.init.config_path)
        certs = srv.init.certs_dir
        key = ec.generate_private_key(ec.SECP256R1())
        body = base64.b64encode(build_csr(key, x509.Name.from_rfc4514_string("CN=drain-1"))
                                .public_bytes(serialization.Encoding.DER))
        ctx = ssl.create_default_context(cafile=str(srv.ca_bundle))
        ctx.load_cert_chain(certs / "example-client.pem", certs / "example-client.key")
        raw = socket.create_connection(("127.0.0.1", srv.https_port), timeout=30)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"POST /.well-known/est/gateway/simpleenroll HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/pkcs10\r\nExpect: 100-continue\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            # 100 Continue: the request is routed and its handler waits for the body
            assert _read_head(tls).startswith(b"HTTP/1.1 100"), "no 100 Continue"
            tls.sendall(body[:40])
            srv.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # wait until the listener is closed
                try:
                    socket.create_connection(("127.0.0.1", srv.https_port), timeout=1).close()
                except OSError:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the listener stayed open after SIGTERM")
            assert srv.process.poll() is None, "exited with a request in flight"
            tls.sendall(body[40:])
            answer = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer[:300]
        assert srv.process.wait(timeout=40) == 0
        from asn1crypto import cms

        signed = cms.ContentInfo.load(base64.b64decode(payload))["content"]
        cert = x509.load_der_x509_certificate(signed["certificates"][0].chosen.dump())
        assert cert.subject == x509.Name.from_rfc4514_string("CN=drain-1")

        async def status() -> str:
            ledger = Ledger(srv.config.ledger_url)
            try:
                rows = await ledger.find_serial_any_issuer(cert.serial_number)
                return ",".join(r.status for r in rows)
            finally:
                await ledger.close()

        assert asyncio.run(status()) == "issued"


# --- monitoring: alert rules and dashboard name only metrics the server exports ---------------

def _exported() -> dict[str, set[str]]:
    """Every sample name enroll/metrics.py exports, with its label names."""
    from prometheus_client.parser import text_string_to_metric_families

    from enroll.metrics import Metrics

    m = Metrics()
    m.requests.labels("est", "POST", "200").inc()
    m.latency.labels("est").observe(0.01)
    m.observe_issuance("gateway", "est", "issued", 0.01)
    m.ocsp.labels("good").inc()
    m.set_fleet({"gateway": {"valid": 1, "revoked": 0, "expiring_0": 0, "expiring_1": 1}}, ["gateway"])
    m.watch_refusals(lambda: {("est-enroll", "401"): 3})
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def _check_expr(expr: str, exported: dict[str, set[str]]) -> list[str]:
    problems = []
    names = re.findall(r"\b(enroll_[a-z0-9_]+)(?:\{([^}]*)\})?", expr)
    if not names and "up{" not in expr:
        problems.append(f"{expr!r} names no enroll metric")
    for name, matchers in names:
        if name not in exported:
            problems.append(f"{name} is not exported (expr {expr!r})")
            continue
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            if label not in exported[name]:
                problems.append(f"{name} has no label {label!r} (expr {expr!r})")
    return problems


def test_prometheus_alert_rules_use_exported_metrics() -> None:
    import yaml

    exported = _exported()
    rules = yaml.safe_load((ROOT / "packaging" / "prometheus-alerts.yml").read_text())
    problems = []
    seen = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            seen.append(rule["alert"])
            assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule
            assert rule["annotations"]["summary"], rule
            problems += _check_expr(rule["expr"], exported)
    assert len(seen) == len(set(seen)) >= 5, seen
    assert not problems, problems
    # and the check itself catches a renamed metric
    assert _check_expr("rate(enroll_issuances_total[5m])", exported)
    assert _check_expr('enroll_issuance_total{result="issued"}', exported)


def test_grafana_dashboard_uses_exported_metrics() -> None:
    import json

    exported = _exported()
    dash = json.loads((ROOT / "packaging" / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= len(dash["panels"])
    problems = [p for e in exprs for p in _check_expr(e, exported)]
    assert not problems, problems
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in exported}
    used = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for e in exprs
            for n in re.findall(r"\b(enroll_[a-z0-9_]+)", e)}
    assert families <= used, f"metrics without a panel: {sorted(families - used)}"

