"""The suite against our own server (embedded default, EST and SCEP): every applicable check
passes. A failure here is a server bug (or a suite bug): the report's evidence says which."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.harness import RunningServer

from tests.support import ROOT


def _run(*args: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "conformance", *args, "--json", "-"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=env)
    assert run.stdout, run.stderr
    return json.loads(run.stdout), run


def _fails(report: dict[str, Any]) -> list[str]:
    return [f"{r['id']}: {r['detail']}\n  " + "\n  ".join(r["evidence"][:10])
            for r in report["results"] if r["verdict"] == "fail"]


def test_scep_suite_passes_against_our_server(running_server: RunningServer) -> None:
    url = f"{running_server.base_http}/scep"
    report, run = _run("scep", url, "--challenge", running_server.init.scep_challenge)
    assert not _fails(report), "\n".join(_fails(report))
    assert run.returncode == 0
    verdicts = {r["id"]: r["verdict"] for r in report["results"]}
    # The things our server offers are judged, not skipped.
    for cid in ("scep.pkcsreq.success", "scep.certpoll", "scep.getcert", "scep.getcrl", "scep.certrep.sender-nonce",
                "scep.reject.unknown-message-type", "scep.reject.replay", "scep.digest.sha-384", "scep.cipher.des3"):
        assert verdicts[cid] == "pass", cid
    # Only what we do not offer is skipped (GetNextCACert, RFC 8894 §4.7.1: we advertise no next CA).
    assert {k for k, v in verdicts.items() if v == "skip"} == {"scep.getnextcacert"}, verdicts


def test_est_suite_passes_against_our_server(running_server: RunningServer) -> None:
    base = running_server.base_https
    init = running_server.init
    report, run = _run("est", base, "--ca-bundle", str(running_server.ca_bundle), "--label", "gateway",
                       "--basic", f"{init.est_user}:{init.est_password}", "--pending-label", "manual")
    assert not _fails(report), "\n".join(_fails(report))
    assert run.returncode == 0
    verdicts = {r["id"]: r["verdict"] for r in report["results"]}
    for cid in ("est.simpleenroll.success", "est.simplereenroll.success", "est.serverkeygen", "est.pending",
                "est.auth.challenge", "est.input.crlf-wrapped"):
        assert verdicts[cid] == "pass", cid
    assert verdicts["est.fullcmc"] == "pass"  # a malformed Full PKI Request is refused
    assert verdicts["est.fullcmc.enroll"] == "pass"
