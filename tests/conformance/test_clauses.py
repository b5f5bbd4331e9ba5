"""conformance/CLAUSES.md and the suite stay in step: every check id the table names exists, every
check of the suite is named, every requirement without a check says why; `enroll conformance
clauses` prints the table, with verdicts when it runs against a server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conformance import clauses, est_suite, scep_suite
from conformance.cli import conformance
from tests.harness import RunningServer
from tests.support import ROOT

KEYWORDS = {"MUST", "MUST NOT", "REQUIRED", "SHALL", "SHALL NOT", "SHOULD", "SHOULD NOT", "RECOMMENDED",
            "NOT RECOMMENDED", "MAY", "OPTIONAL", "INTEROP", "—"}
SUITE_IDS = {c.id for s in (est_suite.suite, scep_suite.suite) for c in s.checks}


@pytest.fixture(scope="module")
def table() -> list[clauses.Clause]:
    return clauses.load()


def test_every_check_id_named_in_clauses_exists_in_the_suite(table: list[clauses.Clause]) -> None:
    named = {cid for c in table for cid in c.checks}
    assert named - SUITE_IDS == set()
    # Nothing that looks like a check id hides outside the check column.
    text = clauses.CLAUSES_PATH.read_text()
    assert set(re.findall(r"`((?:est|scep)\.[a-z0-9.\-]+)`", text)) <= SUITE_IDS


def test_every_check_of_the_suite_is_named_in_clauses(table: list[clauses.Clause]) -> None:
    named = {cid for c in table for cid in c.checks}
    assert SUITE_IDS - named == set()


def test_every_requirement_has_a_check_or_says_why_not(table: list[clauses.Clause]) -> None:
    for c in table:
        assert c.keyword in KEYWORDS, c
        assert c.rfc in ("RFC 7030", "RFC 8951", "RFC 8894"), c
        assert re.fullmatch(r"\d+(\.\d+)*( \(.+\))?", c.section), c
        assert c.requirement, c
        assert c.checks or c.why_not.strip(), f"{c.rfc} §{c.section}: no check and no reason"


def test_the_three_rfcs_are_listed_keyword_by_keyword(table: list[clauses.Clause]) -> None:
    by_rfc = {rfc: [c for c in table if c.rfc == rfc and c.keyword not in ("INTEROP", "—")]
              for rfc in ("RFC 7030", "RFC 8951", "RFC 8894")}
    # RFC 7030 §3.5: the PoP-linking sentences are there with the check that judges them.
    pop = [c for c in by_rfc["RFC 7030"] if c.section == "3.5" and c.keyword == "MUST"]
    assert any("est.pop.tls-unique" in c.checks for c in pop)
    assert {c.keyword for c in by_rfc["RFC 7030"]} >= {"MUST", "MUST NOT", "SHOULD", "SHOULD NOT", "MAY",
                                                       "RECOMMENDED", "NOT RECOMMENDED", "OPTIONAL"}
    assert any(c.section == "3.1" and c.keyword == "SHOULD" for c in by_rfc["RFC 8951"])
    assert any(c.section == "2.9" and c.keyword == "MUST NOT" for c in by_rfc["RFC 8894"])


def test_a_malformed_row_is_refused() -> None:
    head = "| " + " | ".join(clauses.HEADER) + " |\n|---|---|---|---|---|---|\n"
    assert clauses.parse(head + "| RFC 7030 | 3.5 | MUST | verify | `est.pop.tls-unique` | |\n")[0].checks == (
        "est.pop.tls-unique",)
    with pytest.raises(ValueError):
        clauses.parse(head + "| RFC 7030 | 3.5 | MUST | verify |\n")


def test_clauses_command_prints_every_requirement_without_a_server(table: list[clauses.Clause]) -> None:
    res = CliRunner().invoke(conformance, ["clauses"])
    assert res.exit_code == 0, res.output
    assert res.output.count("RFC 8894 §") == sum(1 for c in table if c.rfc == "RFC 8894")
    assert "RFC 7030 §3.5 MUST: if tls-unique is included, the server verifies it\n    est.pop.tls-unique\n" \
        in res.output
    assert f"{len(table)} requirements" in res.output


def _enroll(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "enroll", "conformance", *args], capture_output=True, text=True,
                          timeout=240, cwd=ROOT, env=env)


def test_clauses_command_shows_verdicts_of_a_run_against_our_server(running_server: RunningServer) -> None:
    init = running_server.init
    est = _enroll("clauses", "--est", running_server.base_https, "--ca-bundle", str(running_server.ca_bundle),
                  "--label", "gateway", "--basic", f"{init.est_user}:{init.est_password}")
    assert est.returncode == 0, est.stdout[-3000:] + est.stderr[-3000:]
    assert "    est.simpleenroll.success: pass\n" in est.stdout
    assert "    est.cacerts.framing: interop\n" in est.stdout  # one long line: libest's warning
    assert "    est.pop.tls-unique: skip\n" in est.stdout  # gateway does not ask for PoP linking
    assert "RFC 8894" not in est.stdout
    assert "0 requirement(s) with a failing check" in est.stdout
    assert "[" in est.stderr and "PASS" in est.stderr  # progress went to stderr

    scep = _enroll("clauses", "--scep", f"{running_server.base_http}/scep", "--challenge", init.scep_challenge)
    assert scep.returncode == 0, scep.stdout[-3000:] + scep.stderr[-3000:]
    assert "    scep.pkcsreq.success: pass\n" in scep.stdout
    assert "RFC 7030" not in scep.stdout

    only = _enroll("est", running_server.base_https, "--ca-bundle", str(running_server.ca_bundle), "--only",
                   r"^est\.cacerts\.", "--clauses")
    assert only.returncode == 0, only.stdout[-3000:] + only.stderr[-3000:]
    assert "    est.cacerts.chain: pass\n" in only.stdout and "    est.simpleenroll.success: not run\n" in only.stdout
