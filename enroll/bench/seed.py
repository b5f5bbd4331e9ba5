"""``enroll bench seed``: fill a ledger with synthetic certificate rows, then measure it.

The rows are SYNTHETIC: status ``issued`` with no certificate bytes (``der`` NULL), channel
``seed``, requester ``bench-seed (synthetic)``, random 159-bit serials, subjects
``CN=seed-N,O=Synthetic``. They exist to give the ledger realistic size (index depth, CRL
length) for measurements; never seed a ledger that serves real devices. Bulk loading uses
PostgreSQL COPY (asyncpg) or SQLite ``executemany`` in large transactions.

After seeding it measures what depends on ledger size: CRL generation for the revoked rows
(signed by the CA of a bench config pointing at this ledger), and lookups by serial (with and
without the issuer) and by subject, with the query plans that show whether an index is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from cryptography.hazmat.primitives import serialization

COLUMNS = ("issuer", "serial", "status", "profile", "channel", "requester", "auth_method", "csr_sha256",
           "spki_sha256", "subject", "not_before", "not_after", "created_at", "issued_at", "revoked_at",
           "revocation_reason")
REASONS = ("key_compromise", "superseded", "cessation_of_operation", "affiliation_changed", "unspecified")


def synthetic_rows(count: int, revoked: int, *, issuer: str, profile: str, start: int = 0,
                   rng: random.Random | None = None) -> tuple[list[tuple[Any, ...]], list[int]]:
    """``count`` rows (every ``count // revoked``-th revoked) and a sample of their serials."""
    rng = rng or random.Random(secrets.randbits(64))
    now = time.time()
    every = count // revoked if revoked else 0
    rows = []
    seen: set[int] = set()
    sample = []
    for i in range(count):
        serial = rng.getrandbits(159) | (1 << 64)
        while serial in seen:
            serial = rng.getrandbits(159) | (1 << 64)
        seen.add(serial)
        hexs = format(serial, "x")
        spki = hashlib.sha256(hexs.encode()).hexdigest()
        is_rev = bool(every) and i % every == 0 and (i // every) < revoked
        nb = now - rng.uniform(0, 300 * 86400)
        rows.append((issuer, hexs, "issued", profile, "seed", "bench-seed (synthetic)", "synthetic", spki, spki,
                     f"CN=seed-{start + i},O=Synthetic", nb, nb + 365 * 86400, nb, nb,
                     nb + 86400 if is_rev else None, REASONS[i % len(REASONS)] if is_rev else None))
        if i % max(1, count // 200) == 0:
            sample.append(serial)
    return rows, sample


async def _migrate(url: str) -> None:
    from ca.ledger import Ledger

    ledger = Ledger(url)
    try:
        await ledger.migrate()
    finally:
        await ledger.close()


def _sqlite_path(url: str) -> str:
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else url.split("///", 1)[1]


def _insert_sqlite(url: str, rows: list[tuple[Any, ...]]) -> None:
    db = sqlite3.connect(_sqlite_path(url), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # bulk load only; the server uses FULL
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO certificates ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                       rows)
        db.execute("COMMIT")
    finally:
        db.close()


async def _insert_pg(url: str, rows: list[tuple[Any, ...]]) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.copy_records_to_table("certificates", records=rows, columns=list(COLUMNS))
    finally:
        await conn.close()


async def _analyze(url: str) -> None:
    if url.startswith("sqlite"):
        db = sqlite3.connect(_sqlite_path(url))
        db.execute("ANALYZE")
        db.close()
        return
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ANALYZE certificates")
    finally:
        await conn.close()


async def _existing(url: str) -> tuple[int, int]:
    """(all certificate rows, rows not made by the seeder)."""
    import sqlalchemy as sa

    from ca.ledger import Ledger, certificates

    ledger = Ledger(url)
    try:
        async with ledger.engine.connect() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(certificates))).scalar_one()
            real = (await conn.execute(sa.select(sa.func.count()).select_from(certificates)
                                       .where(certificates.c.channel != "seed"))).scalar_one()
    finally:
        await ledger.close()
    return int(total), int(real)


def seed(url: str, count: int, revoked: int, *, issuer: str = "issuing", profile: str = "gateway",
         batch: int = 100_000, echo: Any = None) -> dict[str, Any]:
    """Insert ``count`` synthetic rows (``revoked`` of them revoked); the timing and a serial sample."""
    asyncio.run(_migrate(url))
    t0 = time.perf_counter()
    sample: list[int] = []
    done = 0
    rng = random.Random(secrets.randbits(64))
    while done < count:
        n = min(batch, count - done)
        r = round(revoked * (done + n) / count) - round(revoked * done / count)
        rows, s = synthetic_rows(n, r, issuer=issuer, profile=profile, start=done, rng=rng)
        sample += s
        if url.startswith("sqlite"):
            _insert_sqlite(url, rows)
        else:
            asyncio.run(_insert_pg(url, rows))
        done += n
        if echo:
            echo(f"  {done}/{count} rows ({time.perf_counter() - t0:.1f} s)")
    asyncio.run(_analyze(url))
    return {"rows": count, "revoked": revoked, "seconds": round(time.perf_counter() - t0, 1), "sample": sample}


async def measure(url: str, config_path: Path | None, sample: list[int], *, issuer: str = "issuing",
                  crl_runs: int = 3) -> dict[str, Any]:
    """CRL generation time and lookup latencies on the seeded ledger, with query plans."""
    import sqlalchemy as sa

    from ca.ledger import CertificateQuery, certificates, serial_hex
    from enroll.app import build_issuer
    from enroll.config import load_config

    tmp = None
    if config_path is None:
        from enroll.bench.server import write_config

        tmp = Path(tempfile.mkdtemp(prefix="enroll-seed-"))
        config_path = write_config(tmp / "cfg", ca_key="rsa-2048", ledger_url=url).config_path
    iss = build_issuer(load_config(config_path))
    out: dict[str, Any] = {}
    try:
        await iss.ledger.migrate()
        crl_times = []
        entries = size = 0
        for _ in range(crl_runs):
            t = time.perf_counter()
            crl = await iss.crl_for_ca(issuer, force=True)
            crl_times.append(time.perf_counter() - t)
            entries = len(crl)
            size = len(crl.public_bytes(serialization.Encoding.DER))
        out["crl"] = {"entries": entries, "der_bytes": size, "seconds": [round(x, 2) for x in crl_times],
                      "median_s": round(statistics.median(crl_times), 2)}

        async def timed(fn: Any, n: int) -> float:
            t = time.perf_counter()
            for i in range(n):
                await fn(i)
            return round((time.perf_counter() - t) / n * 1000, 3)

        picks = sample[:100] or [1]
        out["lookup_ms"] = {
            "by_issuer_and_serial": await timed(lambda i: iss.ledger.find_by_serial(issuer, picks[i % len(picks)]),
                                                len(picks)),
            "by_serial_any_issuer": await timed(lambda i: iss.ledger.find_serial_any_issuer(picks[i % len(picks)]),
                                                min(20, len(picks))),
            "by_subject_substring": await timed(
                lambda i: iss.ledger.query_certificates(CertificateQuery(text=f"seed-{1000 + i * 7919}", limit=10)),
                5),
        }
        async with iss.ledger.engine.connect() as conn:
            def plan(stmt: Any) -> str:
                comp = stmt.compile(conn.sync_connection, compile_kwargs={"literal_binds": True})
                return str(comp)

            s = serial_hex(picks[0])
            queries = {
                "by_issuer_and_serial": sa.select(certificates.c.id).where(certificates.c.issuer == issuer,
                                                                           certificates.c.serial == s),
                "by_serial_any_issuer": sa.select(certificates.c.id).where(certificates.c.serial == s),
                "by_subject_exact": sa.select(certificates.c.id).where(certificates.c.subject == "CN=seed-5,O=Synthetic"),
                "revoked_for_crl": sa.select(certificates.c.serial).where(certificates.c.issuer == issuer,
                                                                          certificates.c.revoked_at.is_not(None)),
            }
            plans = {}
            prefix = "EXPLAIN QUERY PLAN " if iss.ledger.is_sqlite else "EXPLAIN "
            for name, q in queries.items():
                rows = (await conn.execute(sa.text(prefix + plan(q)))).fetchall()
                plans[name] = " | ".join(str(r[-1]) for r in rows)
            out["plans"] = plans
    finally:
        await iss.ledger.close()
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out


@click.command("seed")
@click.option("--ledger", "ledger_url", required=True, help="sqlite:///path or postgresql://... (a throwaway ledger!)")
@click.option("--count", default=1_000_000, show_default=True, type=click.IntRange(1, 100_000_000))
@click.option("--revoked", default=100_000, show_default=True, type=click.IntRange(0, 100_000_000))
@click.option("--issuer", default="issuing", show_default=True, help="CA name the rows belong to.")
@click.option("--profile", default="gateway", show_default=True)
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="Afterwards, time CRL generation and lookups (a bench config's CA signs the CRL).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Config whose CA signs the measured CRL (default: a throwaway bench config).")
@click.option("--force", is_flag=True, help="Seed even though the ledger holds real (non-synthetic) rows.")
@click.option("--json", "json_out", default=None, metavar="FILE|-")
def seed_cmd(ledger_url: str, count: int, revoked: int, issuer: str, profile: str, measure: bool,
             config_path: str | None, force: bool, json_out: str | None) -> None:
    """Bulk-insert SYNTHETIC certificate rows (no DER), then measure CRL generation and lookups."""
    if revoked > count:
        raise click.BadParameter("--revoked cannot exceed --count")
    if urlsplit(ledger_url).scheme not in ("sqlite", "postgresql", "postgres"):
        raise click.BadParameter("--ledger must be sqlite:///... or postgresql://...")
    try:
        asyncio.run(_migrate(ledger_url))
        total, real = asyncio.run(_existing(ledger_url))
    except Exception as exc:  # noqa: BLE001
        raise click.ClickException(f"cannot open the ledger: {exc}") from None
    if real and not force:
        raise click.ClickException(f"the ledger holds {real} real certificate rows; seed a throwaway ledger "
                                   "(or --force)")
    quiet = json_out == "-"
    result = seed(ledger_url, count, revoked, issuer=issuer, profile=profile,
                  echo=None if quiet else click.echo)
    report: dict[str, Any] = {"ledger": urlsplit(ledger_url).scheme, "seeded": {k: v for k, v in result.items()
                                                                            if k != "sample"},
                              "rows_before": total, "synthetic": True}
    if measure:
        report.update(asyncio.run(measure_fn(ledger_url, Path(config_path) if config_path else None,
                                             result["sample"], issuer=issuer)))
    if quiet:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(json.dumps(report, indent=2))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")


measure_fn = measure
