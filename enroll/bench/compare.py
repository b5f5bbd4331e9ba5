"""``enroll bench compare``: our server and micromdm's scepserver, identical SCEP load, one run.

Both servers get an RSA-2048 CA on loopback. micromdm's scepserver 2.1.0 listens on every
interface, so it runs in a network namespace of its own with only ``lo`` (PEERS.md), and its
load generator runs inside that namespace too; ours binds 127.0.0.1. The generator is a separate
process (``enroll bench scep``) started afresh for every round, alternating between the servers.

The message shape is the same for both: PKCSReq, RSA-2048 device keys, SHA-256 CSR, SHA-1 CMS
digest, single-DES envelope (micromdm ignores GetCACaps and answers only in DES/SHA-1; our
``benchscep`` profile allows both for the comparison). What differs: micromdm checks a static
challenge by string comparison, we use one-time challenges (SHA-256 lookup + one UPDATE) because
our static challenge is an scrypt hash (~70 ms per check, by design of the config format); use
``--our-challenge static`` to see that cost. micromdm has no RA: it decrypts and signs with
its CA key; we decrypt and sign CertReps with the RA key and sign certificates with the CA key.

The physical bound is ``openssl speed rsa2048``: one SCEP enrollment needs three RSA-2048
private-key operations on the server (decrypt the envelope's CEK, sign the certificate, sign
the CertRep), each costing about one RSA signature.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from enroll.bench import server as bench_server

PRIVATE_OPS_PER_SCEP_ENROLLMENT = 3


def _parse_speed(out: str) -> float:
    for line in out.splitlines():
        m = re.match(r"rsa\s+2048 bits\s+([\d.]+)s\s+([\d.]+)s\s+([\d.]+)\s+([\d.]+)", line.strip())
        if m:
            return float(m.group(3))
    raise RuntimeError(f"cannot parse openssl speed output:\n{out}")


def openssl_speed(cores: int) -> dict[str, float]:
    """RSA-2048 sign/s on one core (``openssl speed -seconds 1 rsa2048``) and on ``cores`` cores
    (that many copies at once, summed: ``-multi`` in OpenSSL 3.0 under-reports with ``-seconds``)."""
    cmd = ["openssl", "speed", "-seconds", "1", "rsa2048"]
    one = _parse_speed(subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(cores)]
    many = sum(_parse_speed(p.communicate(timeout=120)[0]) for p in procs)
    return {"sign_per_s_1core": one, f"sign_per_s_{cores}cores": many, "cores": cores,
            "ms_per_sign": round(1000 / one, 3)}


class Micromdm:
    """micromdm scepserver in its own network namespace (loopback only)."""

    def __init__(self, workdir: Path, challenge: str) -> None:
        self.ns = f"enroll-bench-{os.getpid()}"
        self.depot = workdir / "depot"
        self.challenge = challenge
        self.port = 8080
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "scepserver.log"

    def start(self) -> None:
        exe = shutil.which("scepserver")
        if exe is None:
            raise click.ClickException("scepserver not installed (Debian package `scep`)")
        subprocess.run([exe, "ca", "-init", "-depot", str(self.depot), "-keySize", "2048", "-organization",
                        "enroll-bench", "-years", "5"], check=True, capture_output=True, timeout=120)
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True, timeout=30)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, exe, "-depot", str(self.depot), "-port",
                                          str(self.port), "-challenge", self.challenge, "-allowrenew", "0"],
                                         stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/scep"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)


def _generator(cmd_prefix: list[str], args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [*cmd_prefix, sys.executable, "-m", "enroll", "bench", "scep", *args, "--json", "-"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise click.ClickException(f"generator failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    return dict(json.loads(res.stdout))


def _row(name: str, r: dict[str, Any]) -> str:
    srv = r.get("server", {})
    return (f"{name:<22} {r['enrollments']:>6}/{r['requests']:<6} {r['enrollments_per_s']:>8.1f}/s "
            f"{srv.get('cpu_ms_per_enrollment') or 0:>8.2f} ms  p50 {r['latency_ms']['p50']:>7.1f} "
            f"p99 {r['latency_ms']['p99']:>7.1f}  err {r['errors']:>4}  dup {r['serials']['duplicates']:>4}  "
            f"RSS {srv.get('rss_peak_mb', 0):>6.1f} MB  gen {r['generator_core_share']:.2f} cores")


@click.command("compare")
@click.option("--count", default=1000, show_default=True, type=click.IntRange(10, 1_000_000),
              help="Enrollments per round per server.")
@click.option("--concurrency", "-c", default=16, show_default=True, type=click.IntRange(1, 1024))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Our `enroll serve --workers` (micromdm uses every core: GOMAXPROCS).")
@click.option("--our-challenge", type=click.Choice(["one-time", "static"]), default="one-time", show_default=True)
@click.option("--also-modern", is_flag=True, help="Also run ours with AES-128 + SHA-256 each round.")
@click.option("--ledger", "ledger_url", default=None, help="Our ledger (default: SQLite in the temp directory).")
@click.option("--keys", default=32, show_default=True, help="RSA device keys in each generator's pool.")
@click.option("--json", "json_out", default=None, metavar="FILE|-")
def compare_cmd(count: int, concurrency: int, rounds: int, workers: int, our_challenge: str, also_modern: bool,
                ledger_url: str | None, keys: int, json_out: str | None) -> None:
    """SCEP PKCSReq: our server vs micromdm scepserver, alternating rounds, with the openssl bound."""
    if os.geteuid() != 0:
        raise click.ClickException("compare needs root (a network namespace for micromdm's scepserver)")
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="enroll-compare-"))
    mdm = Micromdm(work, challenge="bench" + os.urandom(6).hex())
    ours = None
    results: dict[str, list[dict[str, Any]]] = {"micromdm": [], "ours": [], "ours-modern": []}
    try:
        click.echo(f"openssl speed rsa2048 ({cores} cores) ...", err=True)
        speed = openssl_speed(cores)
        mdm.start()
        ours = bench_server.spawn(ca_key="rsa-2048", workers=workers, ledger_url=ledger_url, base=work / "ours")
        profile = "benchscep" if our_challenge == "one-time" else "router"
        our_url = f"http://127.0.0.1:{ours.http_port}/scep/{profile}"
        common = ["--count", str(count), "-c", str(concurrency), "--keys", str(keys)]
        our_auth = (["--one-time", "--ledger", ours.ledger_url] if our_challenge == "one-time"
                    else ["--challenge", ours.init.scep_challenge, "--ledger", ours.ledger_url])
        budget = 120 + count * 0.5
        for r in range(rounds):
            click.echo(f"round {r + 1}/{rounds}: micromdm ...", err=True)
            results["micromdm"].append(_generator(
                ["ip", "netns", "exec", mdm.ns],
                [mdm.url, "--server-pid", str(mdm.pid), "--challenge", mdm.challenge, "--cipher", "des",
                 "--digest", "sha1", *common], budget))
            click.echo(f"round {r + 1}/{rounds}: ours ...", err=True)
            results["ours"].append(_generator(
                [], [our_url, "--server-pid", str(ours.pid), "--cipher", "des", "--digest", "sha1", *our_auth,
                     *common], budget))
            if also_modern:
                results["ours-modern"].append(_generator(
                    [], [our_url, "--server-pid", str(ours.pid), "--cipher", "aes128", "--digest", "sha256",
                         *our_auth, *common], budget))
    finally:
        mdm.stop()
        if ours is not None:
            ours.stop()
        shutil.rmtree(work, ignore_errors=True)

    def med(name: str, key: str) -> float:
        vals = [r[key] if key != "cpu" else (r.get("server", {}).get("cpu_ms_per_enrollment") or 0.0)
                for r in results[name]]
        return float(statistics.median(vals)) if vals else 0.0

    summary: dict[str, Any] = {"host": results["ours"][0]["host"] if results["ours"] else {},
                               "count": count, "concurrency": concurrency, "rounds": rounds,
                               "our_workers": workers, "our_challenge": our_challenge, "openssl": speed}
    for name in results:
        if results[name]:
            summary[name] = {"enrollments_per_s_median": med(name, "enrollments_per_s"),
                             "cpu_ms_per_enrollment_median": med(name, "cpu"),
                             "errors_total": sum(r["errors"] for r in results[name]),
                             "duplicate_serials_total": sum(r["serials"]["duplicates"] for r in results[name]),
                             "p99_ms_median": float(statistics.median(r["latency_ms"]["p99"] for r in results[name]))}
    m, o = summary["micromdm"], summary["ours"]
    summary["ratio_throughput"] = round(o["enrollments_per_s_median"] / m["enrollments_per_s_median"], 3) \
        if m["enrollments_per_s_median"] else None
    summary["ratio_cpu_per_enrollment"] = round(o["cpu_ms_per_enrollment_median"] / m["cpu_ms_per_enrollment_median"],
                                                3) if m["cpu_ms_per_enrollment_median"] else None
    bound_rate = speed[f"sign_per_s_{cores}cores"] / PRIVATE_OPS_PER_SCEP_ENROLLMENT
    bound_ms = PRIVATE_OPS_PER_SCEP_ENROLLMENT * speed["ms_per_sign"]
    summary["bound"] = {"enrollments_per_s": round(bound_rate, 1), "cpu_ms_per_enrollment": round(bound_ms, 3),
                        "ours_fraction_of_rate": round(o["enrollments_per_s_median"] / bound_rate, 3),
                        "ours_fraction_of_cpu": round(bound_ms / o["cpu_ms_per_enrollment_median"], 3)
                        if o["cpu_ms_per_enrollment_median"] else None,
                        "micromdm_fraction_of_rate": round(m["enrollments_per_s_median"] / bound_rate, 3)}
    summary["rounds_detail"] = results
    if json_out == "-":
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    click.echo(f"\nSCEP PKCSReq, RSA-2048 CA, {count} enrollments x {rounds} rounds, {concurrency} devices, "
               f"DES + SHA-1 messages; ours: --workers {workers}, {our_challenge} challenges")
    click.echo(f"{'':<22} {'ok/sent':>13} {'rate':>10} {'CPU/enr':>11}")
    for r in range(rounds):
        for name in ("micromdm", "ours", "ours-modern"):
            if len(results[name]) > r:
                click.echo(_row(f"{name} #{r + 1}", results[name][r]))
    click.echo(f"\nmedian: micromdm {m['enrollments_per_s_median']:.1f}/s, {m['cpu_ms_per_enrollment_median']:.2f} ms "
               f"CPU/enrollment; ours {o['enrollments_per_s_median']:.1f}/s, {o['cpu_ms_per_enrollment_median']:.2f} ms")
    click.echo(f"ratio ours/micromdm: throughput {summary['ratio_throughput']}x, CPU per enrollment "
               f"{summary['ratio_cpu_per_enrollment']}x")
    click.echo(f"duplicate serials: micromdm {m['duplicate_serials_total']}, ours {o['duplicate_serials_total']}")
    b = summary["bound"]
    click.echo(f"bound (openssl speed rsa2048: {speed['sign_per_s_1core']:.0f} sign/s on 1 core, "
               f"{speed[f'sign_per_s_{cores}cores']:.0f} on {cores}; {PRIVATE_OPS_PER_SCEP_ENROLLMENT} private ops "
               f"per enrollment): {b['enrollments_per_s']}/s, {b['cpu_ms_per_enrollment']} ms CPU/enrollment")
    click.echo(f"ours: {b['ours_fraction_of_rate']:.1%} of the bound rate, {b['ours_fraction_of_cpu'] or 0:.1%} "
               f"of the bound CPU efficiency; micromdm: {b['micromdm_fraction_of_rate']:.1%} of the bound rate")
    if json_out:
        Path(json_out).write_text(json.dumps(summary, indent=2, default=str) + "\n")

