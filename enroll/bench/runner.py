"""One benchmark run end to end: prepare (untimed), load (timed), judge and report (untimed)."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enroll.bench import est as est_load
from enroll.bench import load
from enroll.bench import scep as scep_load


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_at_start": Path("/proc/loadavg").read_text().split()[0]}


async def recorded_in_ledger(ledger_url: str, serials: list[int]) -> dict[str, int]:
    """How many of ``serials`` the ledger holds as issued certificates with their DER stored."""
    import sqlalchemy as sa

    from ca.ledger import Ledger, certificates, serial_hex

    ledger = Ledger(ledger_url)
    found = 0
    try:
        async with ledger.engine.connect() as conn:
            hexes = [serial_hex(s) for s in serials]
            for i in range(0, len(hexes), 500):
                chunk = hexes[i:i + 500]
                rows = (await conn.execute(
                    sa.select(sa.func.count()).select_from(certificates)
                    .where(certificates.c.serial.in_(chunk), certificates.c.status == "issued",
                           certificates.c.der.is_not(None)))).scalar_one()
                found += int(rows)
    finally:
        await ledger.close()
    return {"checked": len(serials), "recorded": found}


async def add_one_time_challenges(ledger_url: str, profile: str, n: int, ttl: float = 7200) -> list[str]:
    """``n`` fresh one-time challenges for ``profile``, stored (as digests) in one transaction."""
    from ca.authz import challenge_digest, new_challenge
    from ca.ledger import Ledger, challenges

    values = [new_challenge() for _ in range(n)]
    ledger = Ledger(ledger_url)
    now = time.time()
    try:
        async with ledger.engine.begin() as conn:
            await conn.execute(challenges.insert(), [
                {"profile": profile, "digest": challenge_digest(c), "created_at": now, "expires_at": now + ttl}
                for c in values])
    finally:
        await ledger.close()
    return values


@dataclass(kw_only=True)
class LoadOptions:
    """How much load, how long, and which processes to measure (every ``enroll bench`` run)."""

    count: int = 1000
    concurrency: int = 64
    server_pid: int | None = None
    ledger_url: str | None = None
    timeout: float = 60.0
    max_seconds: float | None = None
    db_pid: int | None = None


@dataclass
class EstOptions(LoadOptions):
    """What ``enroll bench est`` runs."""

    target: est_load.EstTarget
    mode: str = "simpleenroll"  # or "reenroll"
    auth: str = "mtls"  # or "basic"
    fresh: bool = False


async def run_est(o: EstOptions) -> dict[str, Any]:
    """Prepare keys/CSRs, run the EST load, judge the answers; the report as a dict."""
    t = o.target
    if o.auth == "basic" and t.basic is None:
        raise ValueError("--auth basic needs --basic USER:PASS")
    if o.auth == "mtls" and t.client_cert is None:
        raise ValueError("--auth mtls needs --client-cert/--client-key")
    cred_target = est_load.EstTarget(t.url, t.ca_bundle, t.label,
                                     t.client_cert if o.auth == "mtls" else None,
                                     t.client_key if o.auth == "mtls" else None,
                                     t.basic if o.auth == "basic" else None)
    base_ctx = est_load.ssl_context(t.ca_bundle, cred_target.client_cert, cred_target.client_key)
    prep0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if o.mode == "reenroll":
        # Untimed: every device gets its first certificate, then re-enrolls with it.
        first = est_load.enroll_jobs(cred_target, o.concurrency, prefix="bench-dev")
        stats0 = await load.run(first, endpoints=est_load.endpoints_for(t, [base_ctx]), concurrency=o.concurrency,
                                timeout=o.timeout)
        ok0, _, err0, certs0 = est_load.judge(stats0.answers)
        if not all(ok0):
            raise RuntimeError(f"preparing devices for reenroll failed: {err0}")
        devices = [c for c in certs0 if c is not None]
        keys = [a.job.tag[0] for a in stats0.answers]
        contexts = est_load.device_contexts(t, devices, keys)
        plain = est_load.EstTarget(t.url, t.ca_bundle, t.label)
        jobs = est_load.enroll_jobs(plain, o.count, op="simplereenroll",
                                    subjects=lambda i: devices[i % len(devices)].subject, devices=len(devices),
                                    keep_alive=not o.fresh)
        endpoints = est_load.endpoints_for(t, contexts)
        kind = "est-simplereenroll"
    else:
        jobs = est_load.enroll_jobs(cred_target, o.count, keep_alive=not o.fresh)
        endpoints = est_load.endpoints_for(t, [base_ctx])
        kind = "est-simpleenroll"
    extra["prepare_s"] = round(time.perf_counter() - prep0, 2)
    stats = await load.run(jobs, endpoints=endpoints, concurrency=o.concurrency, fresh=o.fresh,
                           server_pid=o.server_pid, timeout=o.timeout, deadline=o.max_seconds, db_pid=o.db_pid,
                           progress=progress_line("est"))
    ok, serials, errors, _ = est_load.judge(stats.answers)
    extra.update({"connections": "fresh" if o.fresh else "reused", "auth": o.auth, "url": t.url,
                  "label": t.label, "host": machine()})
    if o.ledger_url:
        extra["ledger"] = await recorded_in_ledger(o.ledger_url, serials)
    report = load.summarize(stats, ok=ok, serials=serials, errors=errors, kind=kind, concurrency=o.concurrency,
                            extra=extra)
    report["rss_samples_mb"] = _thin(stats.rss_samples)
    return report


def progress_line(what: str) -> Callable[[str], None]:
    """Progress of a timed run on stderr (stdout keeps the report)."""

    def say(line: str) -> None:
        print(f"bench {what}: {line}", file=sys.stderr, flush=True)

    return say


def _thin(samples: list[tuple[float, int]], n: int = 20) -> list[tuple[float, float]]:
    if not samples:
        return []
    step = max(1, len(samples) // n)
    picked = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    return [(round(t, 1), round(r / 2**20, 1)) for t, r in picked]


@dataclass
class ScepOptions(LoadOptions):
    """What ``enroll bench scep`` runs."""

    url: str
    challenge: str | None = None
    one_time: list[str] | None = None
    cipher: str = "aes128"
    digest: str = "sha256"
    keys: int = 32
    count: int = field(default=500, kw_only=True)
    concurrency: int = field(default=16, kw_only=True)


async def run_scep(o: ScepOptions) -> dict[str, Any]:
    """Prepare keys and pkiMessages, run the SCEP load, judge the CertReps; the report."""
    from scep.client import ScepClient

    target = scep_load.ScepTarget(o.url)
    client = ScepClient(o.url, allow_legacy=True)
    for attempt in range(100):  # the server may still be starting (bounded: 10 s)
        try:
            caps = await client.get_ca_caps()
            break
        except Exception:  # noqa: BLE001
            if attempt == 99:
                raise
            await asyncio.sleep(0.1)
    recipient = await client.recipient()
    prep0 = time.perf_counter()
    keys = scep_load.make_keys(min(o.keys, o.count))
    challenges = o.one_time if o.one_time is not None else ([o.challenge] if o.challenge else [])
    if o.one_time is not None and len(o.one_time) < o.count:
        raise ValueError(f"{o.count} enrollments need {o.count} one-time challenges, got {len(o.one_time)}")
    jobs = scep_load.pkcsreq_jobs(target, recipient, o.count, challenges=challenges, keys=keys, cipher=o.cipher,
                                  digest=o.digest)
    prepare = time.perf_counter() - prep0
    ep = load.Endpoint(target.host, target.port, None)
    stats = await load.run(jobs, endpoints=lambda i: ep, concurrency=o.concurrency, server_pid=o.server_pid,
                           timeout=o.timeout, deadline=o.max_seconds, db_pid=o.db_pid, progress=progress_line("scep"))
    ok, serials, errors = scep_load.judge(stats.answers)
    extra: dict[str, Any] = {"url": o.url, "cipher": o.cipher, "digest": o.digest, "prepare_s": round(prepare, 2),
                             "challenge": "one-time" if o.one_time is not None else ("static" if o.challenge else "none"),
                             "server_caps": sorted(caps), "recipient": recipient.subject.rfc4514_string(),
                             **scep_load.pool_info(keys), "connections": "reused", "host": machine()}
    if o.ledger_url:
        extra["ledger"] = await recorded_in_ledger(o.ledger_url, serials)
    report = load.summarize(stats, ok=ok, serials=serials, errors=errors, kind="scep-pkcsreq",
                            concurrency=o.concurrency, extra=extra)
    report["rss_samples_mb"] = _thin(stats.rss_samples)
    return report


def render(report: dict[str, Any]) -> str:
    """A short human-readable summary of one report."""
    lat = report["latency_ms"]
    lines = [
        f"{report['kind']}  {report.get('connections', '')} connections, {report['concurrency']} devices",
        f"  enrollments {report['enrollments']}/{report['requests']} in {report['elapsed_s']} s = "
        f"{report['enrollments_per_s']}/s; errors {report['errors']} {report['error_kinds'] or ''}",
        f"  latency ms p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}",
        f"  serials returned {report['serials']['returned']}, unique {report['serials']['unique']}, "
        f"duplicates {report['serials']['duplicates']}",
    ]
    if "ledger" in report:
        lines.append(f"  recorded in the ledger: {report['ledger']['recorded']}/{report['ledger']['checked']}")
    srv = report.get("server")
    if srv:
        lines.append(f"  server CPU {srv['cpu_ms_per_enrollment']} ms/enrollment ({srv['core_share']} cores busy), "
                     f"RSS start {srv['rss_start_mb']} MB, peak {srv['rss_peak_mb']} MB, end {srv['rss_end_mb']} MB "
                     f"({len(srv['pids'])} processes)")
    db = report.get("database")
    if db:
        lines.append(f"  database CPU {db['cpu_ms_per_enrollment']} ms/enrollment ({db['core_share']} cores busy)")
    m = report.get("machine")
    if m:
        lines.append(f"  machine: {m['busy_cores']} cores busy in all, {m['other_processes_cores']} by other processes")
    lines.append(f"  generator CPU {report['generator_cpu_s']} s = {report['generator_cpu_ms_per_request']} ms/request "
                 f"({report['generator_core_share']} cores busy)")
    return "\n".join(lines)
