"""Reports: a summary table for the terminal, JSON and JUnit XML for CI."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any
from xml.etree import ElementTree as ET

from conformance.model import Result, Verdict


def counts(results: list[Result]) -> dict[str, int]:
    c = Counter(r.verdict.value for r in results)
    return {v.value: c.get(v.value, 0) for v in Verdict}


def progress_line(i: int, n: int, r: Result) -> str:
    """One line per judged check, printed as the run goes."""
    mark = {Verdict.PASS: "PASS", Verdict.FAIL: "FAIL", Verdict.SKIP: "skip", Verdict.INTEROP: "WARN"}[r.verdict]
    return f"[{i:>2}/{n}] {mark}  {r.id:<40} {r.requirement.cite():<26} {r.detail[:90]}"


def text_report(target: str, protocol: str, results: list[Result], *, verbose: bool = False) -> str:
    """The summary table, then failures with their evidence, then interop warnings naming the
    clients on each side."""
    c = counts(results)
    lines = [f"{protocol.upper()} conformance of {target}",
             f"{c['pass']} pass, {c['fail']} fail, {c['skip']} skip, {c['interop']} interop warning(s)", ""]
    w = max((len(r.id) for r in results), default=10)
    lines.append(f"{'verdict':<7} {'check':<{w}} {'requirement':<26} detail")
    for r in results:
        lines.append(f"{r.verdict.value:<7} {r.id:<{w}} {r.requirement.cite():<26} {r.detail}")
    lines += _details(results, Verdict.FAIL, "Failures:", 12, verbose)
    lines += _details(results, Verdict.INTEROP,
                      "Interop warnings (allowed by the RFCs; no single choice suits every client):", 6, verbose)
    return "\n".join(lines)


def _details(results: list[Result], verdict: Verdict, heading: str, evidence: int, verbose: bool) -> list[str]:
    """The section of the text report for one verdict: each check with its detail and evidence
    (the first ``evidence`` lines unless ``verbose``); a failure also quotes its requirement."""
    picked = [r for r in results if r.verdict is verdict]
    if not picked:
        return []
    out = ["", heading]
    for r in picked:
        why = f"{r.requirement.cite()}: {r.requirement.text}" if verdict is Verdict.FAIL else r.requirement.cite()
        out.append(f"- {r.id}: {r.title} ({why})")
        out.append(f"    {r.detail}")
        out += [f"    | {e}" for e in (r.evidence if verbose else r.evidence[:evidence])]
    return out


def json_report(target: str, protocol: str, results: list[Result], plan: list[str]) -> dict[str, Any]:
    return {
        "target": target, "protocol": protocol,
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "summary": counts(results), "plan": plan,
        "results": [r.as_dict() for r in results],
    }


def dumps_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)


def junit_report(target: str, protocol: str, results: list[Result]) -> str:
    """JUnit XML: one testcase per check; failures carry the evidence, skips the reason."""
    c = counts(results)
    suite = ET.Element("testsuite", name=f"conformance.{protocol}", tests=str(len(results)),
                       failures=str(c["fail"]), skipped=str(c["skip"]), errors="0",
                       time=f"{sum(r.duration_ms for r in results) / 1000:.3f}")
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="target", value=target)
    for r in results:
        tc = ET.SubElement(suite, "testcase", classname=f"conformance.{protocol}", name=r.id,
                           time=f"{r.duration_ms / 1000:.3f}")
        if r.verdict is Verdict.FAIL:
            f = ET.SubElement(tc, "failure", message=f"{r.requirement.cite()}: {r.detail}")
            f.text = "\n".join([r.requirement.text, *r.evidence])
        elif r.verdict is Verdict.SKIP:
            ET.SubElement(tc, "skipped", message=r.detail)
        elif r.verdict is Verdict.INTEROP:
            # A warning, not a failure: JUnit has no such state, so it rides in system-out.
            ET.SubElement(tc, "system-out").text = f"INTEROP WARNING: {r.detail}"
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)
