"""`enroll bench`: short smoke runs of the load generator against spawned servers (seconds).

The long measurements (README "Performance") are the same commands with larger counts; the
side-by-side comparison with micromdm's scepserver is a slow interop test here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enroll.bench import load, procstat


def bench(*args: str, timeout: float = 120) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-m", "enroll", "bench", *args, "--json", "-"], capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(json.loads(res.stdout))


def assert_report(r: dict[str, Any], n: int) -> None:
    assert r["requests"] == n
    assert r["enrollments"] == n, r["error_kinds"]
    assert r["errors"] == 0
    assert r["enrollments_per_s"] > 0
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    # every serial unique, and every one recorded as issued (with its DER) in the server's ledger
    assert r["serials"] == {"returned": n, "unique": n, "duplicates": 0}
    assert r["ledger"] == {"checked": n, "recorded": n}
    srv = r["server"]
    assert srv["cpu_ms_per_enrollment"] > 0 and srv["rss_peak_mb"] > 10 and srv["pids"]
    assert r["generator_cpu_s"] >= 0 and "generator_core_share" in r


def test_bench_est_simpleenroll_reused_mtls() -> None:
    r = bench("est", "--spawn", "--count", "40", "-c", "4")
    assert r["kind"] == "est-simpleenroll" and r["connections"] == "reused" and r["auth"] == "mtls"
    assert r["spawned"] == {"workers": 1, "ca_key": "ec-p256", "ledger": "sqlite"}
    assert_report(r, 40)


def test_bench_est_reenroll_fresh_connections_two_workers() -> None:
    r = bench("est", "--spawn", "--mode", "reenroll", "--fresh", "--workers", "2", "--count", "12", "-c", "3")
    assert r["kind"] == "est-simplereenroll" and r["connections"] == "fresh"
    assert len(r["server"]["pids"]) == 3  # the parent and two workers are measured
    assert_report(r, 12)


def test_bench_scep_pkcsreq_one_time_challenges() -> None:
    r = bench("scep", "--spawn", "--count", "8", "-c", "4", "--keys", "2", "--cipher", "des", "--digest", "sha1")
    assert r["kind"] == "scep-pkcsreq" and r["challenge"] == "one-time"
    assert (r["cipher"], r["digest"], r["device_keys"]) == ("des", "sha1", 2)
    assert_report(r, 8)


def test_bench_seed_and_measure(tmp_path: Path) -> None:
    r = bench("seed", "--ledger", f"sqlite:///{tmp_path / 'seed.db'}", "--count", "3000", "--revoked", "300")
    assert r["synthetic"] is True and r["seeded"]["rows"] == 3000
    assert r["crl"]["entries"] == 300
    assert set(r["lookup_ms"]) == {"by_issuer_and_serial", "by_serial_any_issuer", "by_subject_substring"}
    assert "INDEX" in r["plans"]["by_issuer_and_serial"]


def test_seed_refuses_a_ledger_with_real_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    bench("seed", "--ledger", url, "--count", "10", "--revoked", "1", "--no-measure")
    import sqlite3

    db = sqlite3.connect(tmp_path / "l.db")
    db.execute("UPDATE certificates SET channel = 'est' WHERE id = 1")
    db.commit()
    db.close()
    res = subprocess.run([sys.executable, "-m", "enroll", "bench", "seed", "--ledger", url, "--count", "10", "--revoked", "1"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "real certificate rows" in res.stderr


def test_percentiles_and_proc_tree() -> None:
    values = sorted(float(i) for i in range(1, 101))
    assert (load.percentile(values, 50), load.percentile(values, 99)) == (50.0, 99.0)
    assert load.percentile([], 99) == 0.0
    me = os.getpid()
    assert me in procstat.process_tree(me)
    assert procstat.cpu_seconds([me]) > 0 and procstat.rss_bytes([me]) > 0


@pytest.mark.slow
@pytest.mark.interop
def test_bench_compare_with_micromdm() -> None:
    from tests.support import missing_peer, require_tool

    require_tool("scepserver")
    if os.geteuid() != 0:
        missing_peer("root (for a network namespace)")
    r = bench("compare", "--count", "60", "--rounds", "1", "-c", "4", "--keys", "4", timeout=600)
    assert r["ours"]["errors_total"] == 0 and r["ours"]["duplicate_serials_total"] == 0
    assert r["micromdm"]["enrollments_per_s_median"] > 0
    assert r["ratio_throughput"] is not None and r["bound"]["enrollments_per_s"] > 0
