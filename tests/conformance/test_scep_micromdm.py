"""The SCEP suite against a server we did not write: micromdm's scepserver 2.1.0 (Debian `scep`),
in a network namespace of its own with only `lo` (it cannot bind to loopback alone).

The expected verdicts are that server's real behaviour, so a change in the suite that stops
seeing a known deviation (or starts failing a correct behaviour) shows up here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.support import ROOT, missing_peer, require_tool

pytestmark = pytest.mark.interop

PORT = 8080

# Verdicts for micromdm/scep 2.1.0 with `-challenge secret -allowrenew 0`.
EXPECTED = {
    "scep.getcacaps.answers": "pass",
    "scep.getcacaps.content-type": "pass",
    "scep.getcacaps.format": "pass",
    "scep.getcacaps.scepstandard": "pass",
    "scep.getcacaps.sha2": "pass",
    "scep.getcacert.shape": "pass",              # one DER certificate, x-x509-ca-cert
    "scep.getcacert.ra-usage": "skip",           # the CA is its own RA
    "scep.getnextcacert": "skip",                # not advertised
    "scep.pkcsreq.success": "pass",
    "scep.certrep.content-type": "pass",
    "scep.certrep.signature": "pass",
    "scep.certrep.attribute-types": "pass",
    "scep.certrep.message-type": "pass",
    "scep.certrep.transaction-id": "pass",
    "scep.certrep.recipient-nonce": "pass",
    "scep.certrep.sender-nonce": "fail",         # reuses the client's nonce as its senderNonce
    "scep.certrep.digest-mirrors": "fail",       # always signs with SHA-1
    "scep.certrep.signature-algorithm": "fail",  # sha1WithRSAEncryption in SignerInfo
    "scep.certrep.encrypted-to-signer": "pass",
    "scep.certrep.cipher-mirrors": "fail",       # always answers with DES-CBC
    "scep.certrep.der-envelope": "fail",         # constructed (BER) encryptedContent
    "scep.certrep.certs-only": "pass",
    "scep.certrep.issued-certificate": "pass",
    "scep.certrep.issued-first": "pass",
    "scep.certrep.issued-chains": "pass",
    "scep.pkioperation.post": "pass",
    "scep.pkioperation.get": "pass",
    "scep.cipher.aes-128": "pass",
    "scep.cipher.des3": "pass",
    "scep.digest.sha-1": "pass",
    "scep.digest.sha-256": "pass",
    "scep.digest.sha-384": "skip",               # not advertised
    "scep.digest.sha-512": "skip",               # not advertised
    "scep.renewalreq": "fail",                   # advertises Renewal, but demands a challenge in RenewalReq
    "scep.certpoll": "fail",                     # HTTP 500 "not implemented"
    "scep.getcert": "fail",                      # HTTP 500
    "scep.getcrl": "fail",                       # HTTP 500
    "scep.reject.bad-signature": "fail",         # HTTP 500 instead of CertRep FAILURE
    "scep.reject.bad-message-digest": "fail",    # HTTP 500
    "scep.reject.wrong-recipient": "fail",       # HTTP 500
    "scep.reject.unknown-message-type": "fail",  # issues a certificate for messageType 18
    "scep.reject.unregistered-message-type": "fail",  # HTTP 500
    "scep.reject.wrong-challenge": "pass",       # FAILURE badRequest
    "scep.reject.replay": "fail",                # the same bytes again: a second certificate
    "scep.idempotent.transaction": "fail",       # same transactionID and key: a second certificate
}


def _netns_exec(ns: str, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def micromdm(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(netns name, SCEP URL) of a fresh scepserver with a throwaway depot, on lo inside its netns."""
    server = require_tool("scepserver")
    require_tool("ip")
    if os.geteuid() != 0:
        missing_peer("root (for a network namespace)")
    ns = f"enroll-conf-{uuid.uuid4().hex[:8]}"
    depot = tmp_path / "depot"
    subprocess.run([server, "ca", "-init", "-depot", str(depot), "-keySize", "2048", "-organization", "conformance",
                    "-years", "1"], check=True, capture_output=True, timeout=60)
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    proc: subprocess.Popen[bytes] | None = None
    log = tmp_path / "scepserver.log"
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=30)
        with open(log, "wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, server, "-depot", str(depot), "-port", str(PORT),
                                     "-challenge", "secret", "-allowrenew", "0"], stdout=out, stderr=subprocess.STDOUT)
        probe = "import socket,sys; socket.create_connection(('127.0.0.1', %d), 0.5)" % PORT
        for _ in range(100):
            if proc.poll() is not None:
                raise RuntimeError(f"scepserver exited: {log.read_text()}")
            if _netns_exec(ns, sys.executable, "-c", probe, timeout=10).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"scepserver did not listen: {log.read_text()}")
        yield ns, f"http://127.0.0.1:{PORT}/scep"
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], timeout=30)


def test_scep_suite_reports_micromdm_deviations(micromdm: tuple[str, str], tmp_path: Path) -> None:
    ns, url = micromdm
    junit = tmp_path / "junit.xml"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "conformance", "scep", url,
                          "--challenge", "secret", "--json", "-", "--junit", str(junit)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert run.returncode == 1, run.stderr  # it has failures, and it completed
    report = json.loads(run.stdout)
    verdicts = {r["id"]: r["verdict"] for r in report["results"]}
    assert verdicts == EXPECTED, {k: (verdicts.get(k), v) for k, v in EXPECTED.items() if verdicts.get(k) != v}
    by_id = {r["id"]: r for r in report["results"]}
    # Evidence names the offending bytes, not just a verdict.
    assert "reused" in by_id["scep.certrep.sender-nonce"]["detail"]
    assert any("HTTP 500" in e for e in by_id["scep.certpoll"]["evidence"])
    assert "issued a certificate" in by_id["scep.reject.unknown-message-type"]["detail"]
    assert report["summary"] == {"pass": list(EXPECTED.values()).count("pass"),
                                 "fail": list(EXPECTED.values()).count("fail"),
                                 "skip": list(EXPECTED.values()).count("skip"),
                                 "interop": list(EXPECTED.values()).count("interop")}
    # The terminal report went to stderr with progress lines and the plan.
    assert "Enrollments this run will request" in run.stderr
    assert "FAIL  scep.certrep.sender-nonce" in run.stderr
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == str(report["summary"]["fail"])
    assert len(suite.findall("testcase")) == len(EXPECTED)
