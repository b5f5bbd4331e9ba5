"""``enroll conformance est|scep URL`` (also ``python -m conformance``): run the suite against
any EST or SCEP server and report which RFC requirements it meets."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from conformance import report as rp
from conformance.model import Result, Suite, Verdict


def _emit(target: str, protocol: str, results: list[Result], plan: list[str], json_path: str | None,
          junit_path: str | None, verbose: bool) -> None:
    out_is_json = json_path == "-"
    text = rp.text_report(target, protocol, results, verbose=verbose)
    click.echo(text, err=out_is_json)
    if json_path:
        data = rp.dumps_json(rp.json_report(target, protocol, results, plan))
        if out_is_json:
            click.echo(data)
        else:
            Path(json_path).write_text(data + "\n")
    if junit_path:
        Path(junit_path).write_text(rp.junit_report(target, protocol, results) + "\n")


def _only(pattern: str | None) -> Callable[[str], bool] | None:
    if not pattern:
        return None
    rx = re.compile(pattern)
    return lambda cid: bool(rx.search(cid))


def _progress(err: bool) -> Callable[[int, int, Result], None]:
    def cb(i: int, n: int, r: Result) -> None:
        click.echo(rp.progress_line(i, n, r), err=err)
    return cb


def _finish(results: list[Result]) -> None:
    sys.exit(1 if any(r.verdict is Verdict.FAIL for r in results) else 0)


_common = [
    click.option("--json", "json_path", metavar="FILE", help="Write a JSON report ('-' for stdout)."),
    click.option("--junit", "junit_path", metavar="FILE", help="Write a JUnit XML report."),
    click.option("--only", metavar="REGEX", help="Run only checks whose id matches."),
    click.option("--timeout", default=30.0, show_default=True, help="Per-request timeout in seconds."),
    click.option("-v", "--verbose", is_flag=True, help="Show all evidence lines."),
]


def common(fn: Any) -> Any:
    for opt in reversed(_common):
        fn = opt(fn)
    return fn


@click.group("conformance", context_settings={"help_option_names": ["-h", "--help"]})
def conformance() -> None:
    """Check an EST (RFC 7030/8951) or SCEP (RFC 8894) server against the RFCs.

    Each check names its requirement and reports pass, fail (with evidence), skip (with why) or an
    interop warning (allowed by the RFCs, but a named client breaks on it). The suite never sends
    load; it says which enrollments it will make before it starts. Exit status 1 if any check fails;
    interop warnings do not fail a run."""


_scep_opts = [
    click.option("--challenge", help="Challenge password for PKCSReq (without it no enrollment is attempted)."),
]
_est_opts = [
    click.option("--label", help="Also check /.well-known/est/LABEL/..."),
    click.option("--basic", metavar="USER:PASS", help="HTTP Basic credentials for enrollment."),
    click.option("--client-cert", type=click.Path(exists=True, dir_okay=False), help="TLS client certificate (PEM)."),
    click.option("--client-key", type=click.Path(exists=True, dir_okay=False), help="Its private key (PEM)."),
    click.option("--pending-label", metavar="LABEL", help="A label whose profile answers 202 (manual approval)."),
    click.option("--pop-label", metavar="LABEL",
                 help="A label that requires PoP linking (RFC 7030 §3.5 tls-unique); by default the checked label "
                      "is used when its /csrattrs asks for challengePassword."),
]
_ca_bundle = click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False),
                          help="Trust anchors for the server's TLS certificate (explicit TA database).")


def _with(opts: list[Any]) -> Callable[[Any], Any]:
    def deco(fn: Any) -> Any:
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return deco


def _print_clauses(results: list[Result] | None, protocol: str | None, err: bool = False) -> None:
    from conformance import clauses

    click.echo(clauses.render(clauses.load(), results, protocol), err=err)


def run_scep(url: str, challenge: str | None, ca_bundle: str | None, timeout: float, only: str | None,
             err: bool) -> tuple[list[Result], list[str]]:
    """Announce the plan, run the SCEP suite against ``url``, return (results, plan)."""
    from conformance import scep_common, scep_suite
    from conformance.transport import Http

    click.echo(f"SCEP conformance run against {url}. Enrollments this run will request:", err=err)
    plan = scep_common.plan(challenge)
    for p in plan:
        click.echo(f"  - {p}", err=err)

    async def go() -> list[Result]:
        ssl_ctx = _ssl_context(ca_bundle, None, None) if url.startswith("https:") else None
        async with Http(ssl_context=ssl_ctx, timeout=timeout) as http:
            ctx = scep_common.ScepContext(url, http, challenge)
            return await _run(scep_suite.suite, ctx, err, only)

    return asyncio.run(go()), plan


def run_est(url: str, label: str | None, ca_bundle: str | None, basic: str | None, client_cert: str | None,
            client_key: str | None, pending_label: str | None, pop_label: str | None, timeout: float,
            only: str | None, err: bool) -> tuple[list[Result], list[str]]:
    """Announce the plan, run the EST suite against ``url``, return (results, plan)."""
    from conformance import est_common, est_suite

    if basic is not None and ":" not in basic:
        raise click.BadParameter("expected USER:PASS", param_hint="--basic")
    opts = est_common.EstOptions(url=url.rstrip("/"), label=label, ca_bundle=ca_bundle, basic=basic,
                                 client_cert=client_cert, client_key=client_key, pending_label=pending_label,
                                 pop_label=pop_label, timeout=timeout)
    plan = est_common.plan(opts)
    click.echo(f"EST conformance run against {url}. Enrollments this run will request:", err=err)
    for p in plan:
        click.echo(f"  - {p}", err=err)

    async def go() -> list[Result]:
        ctx = est_common.EstContext(opts)
        try:
            return await _run(est_suite.suite, ctx, err, only)
        finally:
            await ctx.close()

    return asyncio.run(go()), plan


_clauses_flag = click.option("--clauses", "show_clauses", is_flag=True,
                             help="Also print CLAUSES.md: every RFC requirement with the verdicts of its checks.")


@conformance.command("scep")
@click.argument("url")
@_with(_scep_opts)
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), help="Trust anchors for an https URL.")
@_clauses_flag
@common
def scep_cmd(url: str, challenge: str | None, ca_bundle: str | None, show_clauses: bool, json_path: str | None,
             junit_path: str | None, only: str | None, timeout: float, verbose: bool) -> None:
    """Check the SCEP server at URL (e.g. http://host:8080/scep)."""
    err = json_path == "-"
    results, plan = run_scep(url, challenge, ca_bundle, timeout, only, err)
    _emit(url, "scep", results, plan, json_path, junit_path, verbose)
    if show_clauses:
        _print_clauses(results, "scep", err)
    _finish(results)


@conformance.command("est")
@click.argument("url")
@_with(_est_opts[:1])
@_ca_bundle
@_with(_est_opts[1:])
@_clauses_flag
@common
def est_cmd(url: str, label: str | None, ca_bundle: str | None, basic: str | None, client_cert: str | None,
            client_key: str | None, pending_label: str | None, pop_label: str | None, show_clauses: bool,
            json_path: str | None, junit_path: str | None, only: str | None, timeout: float,
            verbose: bool) -> None:
    """Check the EST server at URL (https://host:port)."""
    err = json_path == "-"
    results, plan = run_est(url, label, ca_bundle, basic, client_cert, client_key, pending_label, pop_label,
                            timeout, only, err)
    _emit(url, "est", results, plan, json_path, junit_path, verbose)
    if show_clauses:
        _print_clauses(results, "est", err)
    _finish(results)


@conformance.command("clauses")
@click.option("--est", "est_url", metavar="URL", help="Run the EST suite against URL and show each check's verdict.")
@click.option("--scep", "scep_url", metavar="URL", help="Run the SCEP suite against URL and show each check's verdict.")
@_ca_bundle
@_with(_est_opts)
@_with(_scep_opts)
@click.option("--timeout", default=30.0, show_default=True, help="Per-request timeout in seconds.")
def clauses_cmd(est_url: str | None, scep_url: str | None, ca_bundle: str | None, label: str | None,
                basic: str | None, client_cert: str | None, client_key: str | None, pending_label: str | None,
                pop_label: str | None, challenge: str | None, timeout: float) -> None:
    """Print every MUST/SHOULD/MAY of RFC 7030, RFC 8951 and RFC 8894 with the check that covers it
    (or why none can). With --est or --scep the suite runs first (progress on stderr) and each check
    shows its verdict; exit status 1 if any check fails."""
    if est_url and scep_url:
        raise click.UsageError("give --est or --scep, not both")
    if est_url:
        results, _ = run_est(est_url, label, ca_bundle, basic, client_cert, client_key, pending_label, pop_label,
                             timeout, None, True)
        _print_clauses(results, "est")
        _finish(results)
    elif scep_url:
        results, _ = run_scep(scep_url, challenge, ca_bundle, timeout, None, True)
        _print_clauses(results, "scep")
        _finish(results)
    else:
        _print_clauses(None, None)


async def _run(suite: Suite, ctx: Any, err: bool, only: str | None) -> list[Result]:
    from conformance.runner import run_suite

    return await run_suite(suite, ctx, _progress(err), _only(only))


def _ssl_context(ca_bundle: str | None, cert: str | None, key: str | None) -> Any:
    import ssl

    ctx = ssl.create_default_context(cafile=ca_bundle)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx
