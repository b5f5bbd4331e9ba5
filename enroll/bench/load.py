"""The load loop: simulated devices sending pre-built HTTP/1.1 requests, timed per request.

Each device is one coroutine with (normally) one keep-alive connection; with ``fresh=True`` it
opens a new TCP (+TLS) connection for every request, as a device that enrolls once would. The
request bytes are built before the clock starts; answers are kept raw and judged afterwards.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from enroll.bench import procstat
from scep.client import ScepClientError, read_response

MAX_BODY = 4 << 20


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: host, port, and TLS settings (None for plain HTTP)."""

    host: str
    port: int
    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None


class Connection:
    """A minimal HTTP/1.1 client connection: write prepared bytes, read one response."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        e = self.endpoint
        self.reader, self.writer = await asyncio.open_connection(
            e.host, e.port, ssl=e.ssl, server_hostname=(e.server_hostname or e.host) if e.ssl else None)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
        self.reader = self.writer = None

    async def send(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send one request and read its response; reconnects once if a kept-alive socket died."""
        for attempt in (0, 1):
            if self.writer is None:
                await self.open()
            try:
                return await self._exchange(raw)
            except (ConnectionError, asyncio.IncompleteReadError, ScepClientError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        resp = await read_response(self.reader, MAX_BODY)
        headers = resp.headers
        framed = "content-length" in headers or headers.get("transfer-encoding", "").lower() == "chunked"
        if not framed or headers.get("connection", "").lower() == "close":
            await self.close()
        return resp.status, headers, resp.body


def build_request(method: str, target: str, host: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = (),
                  keep_alive: bool = True) -> bytes:
    """The exact bytes of one HTTP/1.1 request."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "User-Agent: enroll-bench",
             "Connection: keep-alive" if keep_alive else "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Job:
    """One pre-built request; ``tag`` lets the judge find the key and expectations afterwards."""

    raw: bytes
    tag: Any = None
    device: int | None = None  # pinned to one device (e.g. its own client certificate)


@dataclass
class Answer:
    """One response, kept raw for judging after the run."""

    job: Job
    status: int
    body: bytes
    latency: float
    error: str | None = None


@dataclass
class RunStats:
    """Timing and resource figures of one run (the judge adds correctness figures)."""

    answers: list[Answer]
    elapsed: float
    server_cpu: float | None
    server_rss_start: int | None
    server_rss_peak: int | None
    server_rss_end: int | None
    server_pids: list[int] = field(default_factory=list)
    generator_cpu: float = 0.0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    db_cpu: float | None = None
    machine_busy: float | None = None


async def run(jobs: list[Job], *, endpoints: Callable[[int], Endpoint], concurrency: int, fresh: bool = False,
              server_pid: int | None = None, timeout: float = 60.0, deadline: float | None = None,
              db_pid: int | None = None, progress: Callable[[str], None] | None = None,
              progress_every: float = 5.0) -> RunStats:
    """Send every job once with ``concurrency`` devices; device ``i`` connects to ``endpoints(i)``.

    Jobs pinned to a device (``Job.device``) are sent by that device only. Stops early at
    ``deadline`` seconds (remaining jobs are not sent). ``progress`` gets a line every
    ``progress_every`` seconds (answers so far, failures, rate)."""
    queues: list[list[Job]] = [[] for _ in range(concurrency)]
    shared: list[Job] = []
    for j in jobs:
        (queues[j.device % concurrency] if j.device is not None else shared).append(j)
    shared.reverse()
    for q in queues:
        q.reverse()
    answers: list[Answer] = []
    stop_at = time.monotonic() + deadline if deadline else None
    pids: list[int] = procstat.process_tree(server_pid) if server_pid else []
    rss_samples: list[tuple[float, int]] = []
    rss_peak = 0

    async def device(i: int) -> None:
        conn = Connection(endpoints(i))
        try:
            while True:
                if stop_at is not None and time.monotonic() > stop_at:
                    return
                if queues[i]:
                    job = queues[i].pop()
                elif shared:
                    job = shared.pop()
                else:
                    return
                t0 = time.perf_counter()
                try:
                    status, _, body = await asyncio.wait_for(conn.send(job.raw), timeout)
                    answers.append(Answer(job, status, body, time.perf_counter() - t0))
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ScepClientError,
                        ssl.SSLError) as exc:
                    answers.append(Answer(job, 0, b"", time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"[:200]))
                    await conn.close()
                if fresh:
                    await conn.close()
        finally:
            await conn.close()

    async def sampler() -> None:
        nonlocal rss_peak
        t0 = time.monotonic()
        while True:
            rss = procstat.rss_bytes(pids)
            rss_peak = max(rss_peak, rss)
            rss_samples.append((time.monotonic() - t0, rss))
            await asyncio.sleep(0.25)

    async def reporter() -> None:
        assert progress is not None
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(progress_every)
            done = len(answers)
            failed = sum(1 for a in answers if a.error or a.status not in (200, 202))
            rate = done / max(time.monotonic() - t0, 1e-9)
            progress(f"{done}/{len(jobs)} answered, {failed} failed, {rate:.0f}/s")

    rss_start = procstat.rss_bytes(pids) if pids else None
    db_pids = procstat.process_tree(db_pid) if db_pid else []
    db0 = procstat.cpu_seconds(db_pids) if db_pids else None
    cpu0 = procstat.cpu_seconds(pids) if pids else None
    own0 = procstat.own_cpu_seconds()
    busy0 = procstat.machine_busy_seconds()
    t0 = time.perf_counter()
    sample_task = asyncio.create_task(sampler()) if pids else None
    report_task = asyncio.create_task(reporter()) if progress is not None else None
    try:
        await asyncio.gather(*(device(i) for i in range(concurrency)))
    finally:
        if report_task is not None:
            report_task.cancel()
    elapsed = time.perf_counter() - t0
    own = procstat.own_cpu_seconds() - own0
    busy = procstat.machine_busy_seconds() - busy0
    cpu = procstat.cpu_seconds(pids) - cpu0 if cpu0 is not None else None
    # the database's connection processes come and go: count the tree as it is at the end too
    db_cpu = (procstat.cpu_seconds(sorted(set(db_pids) | set(procstat.process_tree(db_pid))))  # type: ignore[arg-type]
              - db0) if db0 is not None else None
    if sample_task is not None:
        sample_task.cancel()
    rss_end = procstat.rss_bytes(pids) if pids else None
    if rss_end:
        rss_peak = max(rss_peak, rss_end)
    return RunStats(answers, elapsed, cpu, rss_start, rss_peak or None, rss_end, pids, own, rss_samples, db_cpu, busy)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 if empty)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def summarize(stats: RunStats, *, ok: list[bool], serials: list[int], errors: dict[str, int],
              kind: str, concurrency: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report: throughput, latency percentiles, errors, server CPU/RSS, generator CPU, serials."""
    n_ok = sum(ok)
    lat = sorted(a.latency for a, good in zip(stats.answers, ok) if good)
    dupes = len(serials) - len(set(serials))
    report: dict[str, Any] = {
        "kind": kind,
        "concurrency": concurrency,
        "requests": len(stats.answers),
        "enrollments": n_ok,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "elapsed_s": round(stats.elapsed, 3),
        "enrollments_per_s": round(n_ok / stats.elapsed, 1) if stats.elapsed else 0.0,
        "latency_ms": {
            "p50": round(percentile(lat, 50) * 1000, 2),
            "p95": round(percentile(lat, 95) * 1000, 2),
            "p99": round(percentile(lat, 99) * 1000, 2),
            "max": round(lat[-1] * 1000, 2) if lat else 0.0,
            "mean": round(statistics.fmean(lat) * 1000, 2) if lat else 0.0,
        },
        "serials": {"returned": len(serials), "unique": len(set(serials)), "duplicates": dupes},
        "generator_cpu_s": round(stats.generator_cpu, 3),
        "generator_cpu_ms_per_request": round(stats.generator_cpu * 1000 / max(1, len(stats.answers)), 3),
        "generator_core_share": round(stats.generator_cpu / stats.elapsed, 3) if stats.elapsed else 0.0,
    }
    if stats.server_cpu is not None:
        report["server"] = {
            "pids": stats.server_pids,
            "cpu_s": round(stats.server_cpu, 3),
            "cpu_ms_per_enrollment": round(stats.server_cpu * 1000 / n_ok, 3) if n_ok else None,
            "core_share": round(stats.server_cpu / stats.elapsed, 3) if stats.elapsed else 0.0,
            "rss_start_mb": round((stats.server_rss_start or 0) / 2**20, 1),
            "rss_peak_mb": round((stats.server_rss_peak or 0) / 2**20, 1),
            "rss_end_mb": round((stats.server_rss_end or 0) / 2**20, 1),
        }
    if stats.db_cpu is not None:
        report["database"] = {"cpu_s": round(stats.db_cpu, 3),
                              "cpu_ms_per_enrollment": round(stats.db_cpu * 1000 / n_ok, 3) if n_ok else None,
                              "core_share": round(stats.db_cpu / stats.elapsed, 3) if stats.elapsed else 0.0}
    if stats.machine_busy is not None and stats.elapsed:
        others = stats.machine_busy - (stats.server_cpu or 0) - (stats.db_cpu or 0) - stats.generator_cpu
        report["machine"] = {"busy_cores": round(stats.machine_busy / stats.elapsed, 3),
                             "other_processes_cores": round(max(0.0, others) / stats.elapsed, 3)}
    report.update(extra or {})
    return report
