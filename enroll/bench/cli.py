"""``enroll bench``: est, scep, compare, seed (click group ``bench``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from enroll.bench import runner
from enroll.bench.est import EstTarget

if TYPE_CHECKING:
    from enroll.bench.server import SpawnedServer


def _emit(report: dict[str, Any], json_out: str | None) -> None:
    if json_out == "-":
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(runner.render(report) if "kind" in report else json.dumps(report, indent=2, default=str))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2, default=str) + "\n")


def _load_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--count", default=1000, show_default=True, type=click.IntRange(1, 10_000_000),
                     help="Enrollments to send (all requests are built before the clock starts)."),
        click.option("--concurrency", "-c", default=64, show_default=True, type=click.IntRange(1, 4096),
                     help="Simulated devices (concurrent connections)."),
        click.option("--server-pid", type=int, default=None,
                     help="PID of the server (its live children are counted too) for CPU and RSS."),
        click.option("--db-pid", type=int, default=None,
                     help="PID of the database server (PostgreSQL postmaster): its CPU is reported apart."),
        click.option("--ledger", "ledger_url", default=None,
                     help="Ledger URL: check every returned serial is recorded; with --spawn, the server's ledger."),
        click.option("--spawn", is_flag=True, help="Start a throwaway `enroll serve` for the run (and stop it)."),
        click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
                     help="With --spawn: `enroll serve --workers N`."),
        click.option("--softhsm", is_flag=True,
                     help="With --spawn: the CA, SCEP RA and OCSP keys in a throwaway SoftHSM2 token (PKCS#11)."),
        click.option("--timeout", default=60.0, show_default=True, help="Per-request timeout, seconds."),
        click.option("--max-seconds", default=900.0, show_default=True, help="Stop sending after this long."),
        click.option("--json", "json_out", default=None, metavar="FILE|-", help="Write the report as JSON."),
    ]):
        f = opt(f)
    return f


@dataclass
class _Spawned:
    """The server a run spawned, if any (stopped when the run ends)."""

    server: SpawnedServer | None = None


@contextlib.contextmanager
def _run_scope() -> Iterator[_Spawned]:
    """Stops the spawned server however the run ends; bad input becomes a click error."""
    spawned = _Spawned()
    try:
        yield spawned
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if spawned.server is not None:
            spawned.server.stop()


def _spawned_report(srv: SpawnedServer, softhsm: bool, **facts: Any) -> dict[str, Any]:
    """The ``spawned`` section of a report: the given facts, the ledger's scheme, the key store."""
    report: dict[str, Any] = {**facts, "ledger": _scheme(srv.ledger_url)}
    if softhsm:
        report["keys"] = "softhsm2"
    return report


@click.group("bench")
def bench() -> None:
    """Load generator and measurements (EST, SCEP, comparison with micromdm, ledger seeding).

    Loopback servers only by intent: every run is bounded by --count and --max-seconds."""


@bench.command("est")
@click.argument("url", required=False)
@_load_options
@click.option("--mode", type=click.Choice(["simpleenroll", "reenroll"]), default="simpleenroll", show_default=True)
@click.option("--auth", type=click.Choice(["mtls", "basic"]), default="mtls", show_default=True,
              help="TLS client certificate or HTTP Basic (reenroll always uses each device's own certificate).")
@click.option("--fresh", is_flag=True, help="A new TLS connection for every enrollment (default: keep-alive).")
@click.option("--label", default=None, help="EST label (default: the server's default; with --spawn: gateway).")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), help="Trust anchor for the server.")
@click.option("--client-cert", type=click.Path(exists=True, dir_okay=False))
@click.option("--client-key", type=click.Path(exists=True, dir_okay=False))
@click.option("--basic", default=None, metavar="USER:PASS")
@click.option("--ca-key", type=click.Choice(["ec-p256", "rsa-2048"]), default="ec-p256", show_default=True,
              help="With --spawn: the issuing CA's key type.")
def est_cmd(url: str | None, count: int, concurrency: int, server_pid: int | None, db_pid: int | None,
            ledger_url: str | None,
            spawn: bool, workers: int, softhsm: bool, timeout: float, max_seconds: float, json_out: str | None,
            mode: str,
            auth: str, fresh: bool, label: str | None, ca_bundle: str | None, client_cert: str | None,
            client_key: str | None, basic: str | None, ca_key: str) -> None:
    """EST simpleenroll / simplereenroll load against URL (https://host:port) or a spawned server."""
    from enroll.bench import server as bench_server

    srv = None
    with _run_scope() as spawned:
        if spawn:
            srv = spawned.server = bench_server.spawn(ca_key=ca_key, workers=workers, ledger_url=ledger_url,
                                                      softhsm=softhsm)
            certs = srv.certs
            target = EstTarget(f"https://127.0.0.1:{srv.https_port}", certs / "root-ca.pem", label or "gateway",
                               certs / "example-client.pem", certs / "example-client.key",
                               (srv.init.est_user, srv.init.est_password))
            server_pid, ledger_url = srv.pid, srv.ledger_url
        else:
            if not url or not ca_bundle:
                raise click.UsageError("give URL and --ca-bundle, or --spawn")
            user, _, pw = (basic or "").partition(":")
            target = EstTarget(url, Path(ca_bundle), label, Path(client_cert) if client_cert else None,
                               Path(client_key) if client_key else None, (user, pw) if basic else None)
        opts = runner.EstOptions(target, mode, auth, fresh, count=count, concurrency=concurrency,
                                 server_pid=server_pid, ledger_url=ledger_url, timeout=timeout,
                                 max_seconds=max_seconds, db_pid=db_pid)
        report = asyncio.run(runner.run_est(opts))
        if srv is not None:
            report["spawned"] = _spawned_report(srv, softhsm, workers=workers, ca_key=ca_key)
    _emit(report, json_out)


def _scheme(url: str) -> str:
    return url.split(":", 1)[0]


@bench.command("scep")
@click.argument("url", required=False)
@_load_options
@click.option("--challenge", default=None, help="Static challengePassword (the server's shared secret).")
@click.option("--one-time", "one_time", is_flag=True,
              help="Put --count one-time challenges into the ledger (--ledger or --spawn) and use one each.")
@click.option("--one-time-file", type=click.Path(exists=True, dir_okay=False),
              help="One-time challenges, one a line (made beforehand, e.g. with `enroll challenge new`).")
@click.option("--profile", default=None, help="With --spawn: benchscep (one-time) or router (static challenge).")
@click.option("--cipher", type=click.Choice(["aes128", "aes256", "3des", "des"]), default="aes128", show_default=True)
@click.option("--digest", type=click.Choice(["sha256", "sha1", "sha512"]), default="sha256", show_default=True)
@click.option("--keys", default=32, show_default=True, type=click.IntRange(1, 100_000),
              help="RSA-2048 device keys in the pool (each request has its own CSR and transaction).")
def scep_cmd(url: str | None, count: int, concurrency: int, server_pid: int | None, db_pid: int | None,
             ledger_url: str | None,
             spawn: bool, workers: int, softhsm: bool, timeout: float, max_seconds: float, json_out: str | None,
             challenge: str | None, one_time: bool, one_time_file: str | None, profile: str | None, cipher: str,
             digest: str, keys: int) -> None:
    """SCEP PKCSReq load against URL (http://host:port/path) or a spawned server (RSA-2048 CA)."""
    from enroll.bench import server as bench_server

    srv = None
    with _run_scope() as spawned:
        if spawn:
            srv = spawned.server = bench_server.spawn(ca_key="rsa-2048", workers=workers, ledger_url=ledger_url,
                                                      softhsm=softhsm)
            if challenge is None and not one_time:
                one_time = True
            profile = profile or ("benchscep" if one_time else "router")
            if challenge is not None:
                challenge = srv.init.scep_challenge if challenge in ("", "auto") else challenge
            url = f"http://127.0.0.1:{srv.http_port}/scep/{profile}"
            server_pid, ledger_url = srv.pid, srv.ledger_url
        if not url:
            raise click.UsageError("give URL or --spawn")
        otc: list[str] | None = None
        if one_time_file:
            otc = [ln.strip() for ln in Path(one_time_file).read_text().splitlines() if ln.strip()]
        elif one_time:
            if not ledger_url:
                raise click.UsageError("--one-time needs --ledger (or --spawn)")
            otc = asyncio.run(runner.add_one_time_challenges(ledger_url, profile or "benchscep", count))
        opts = runner.ScepOptions(url, challenge, otc, cipher, digest, keys, count=count, concurrency=concurrency,
                                  server_pid=server_pid, ledger_url=ledger_url, timeout=timeout,
                                  max_seconds=max_seconds, db_pid=db_pid)
        report = asyncio.run(runner.run_scep(opts))
        if srv is not None:
            report["spawned"] = _spawned_report(srv, softhsm, workers=workers, ca_key="rsa-2048", profile=profile)
    _emit(report, json_out)


def _register_more() -> None:
    import importlib

    for mod, attr in (("enroll.bench.compare", "compare_cmd"), ("enroll.bench.seed", "seed_cmd")):
        try:
            bench.add_command(getattr(importlib.import_module(mod), attr))
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


_register_more()

if __name__ == "__main__":  # pragma: no cover
    bench(sys.argv[1:])
