"""Faults: kill -9 during a stream of enrollments, a full disk and an unreachable database
mid-request, graceful shutdown with enrollments in flight. The ledger stays consistent: every
certificate a client received is in it, no serial twice, reservations that never became
certificates are marked abandoned, a retried SCEP transaction gets its certificate."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enroll.config import load_config
from enroll.pki import DevPKI
from enroll.setup import InitResult, init_directory
from tests.hardening.helpers import est_post, parse
from tests.harness import RunningServer, wait_listening
from tests.support import assert_ledger_lints_clean, free_port, make_csr

ROUNDS = int(os.environ.get("ENROLL_KILL_ROUNDS", "4"))


@dataclass
class Killable:
    """`enroll serve` that a test may kill -9 and restart on the same directory and ports."""

    init: InitResult
    tmp: Path
    https_port: int
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def server(self) -> RunningServer:
        assert self.proc is not None
        return RunningServer(self.init, load_config(self.init.config_path), self.https_port, self.http_port,
                             self.proc, self.tmp / "serve.log")

    def start(self) -> None:
        self.starts += 1
        env = dict(os.environ, ENROLL_RESERVATION_TIMEOUT="0")
        with open(self.tmp / "serve.log", "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "enroll", "-c", str(self.init.config_path), "serve"],
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp, env=env)
        wait_listening(self.http_port, self.proc, self.tmp / "serve.log")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def db(self) -> sqlite3.Connection:
        url = load_config(self.init.config_path).ledger_url
        return sqlite3.connect(url[len("sqlite:///"):], timeout=30)


@pytest.fixture
def killable(tmp_path: Path, dev_pki: DevPKI) -> Iterator[Killable]:
    https_port, http_port = free_port(), free_port()
    init = init_directory(tmp_path / "srv", https_port=https_port, http_port=http_port, pki=dev_pki)
    k = Killable(init, tmp_path, https_port, http_port)
    try:
        yield k
    finally:
        k.stop()
    assert_ledger_lints_clean(load_config(init.config_path))


@dataclass
class Received:
    """What clients got back: certificates by channel, and SCEP transactions left unanswered."""

    est: list[bytes] = field(default_factory=list)
    scep: dict[str, bytes] = field(default_factory=dict)  # txid -> certificate DER
    unanswered: dict[str, int] = field(default_factory=dict)  # txid -> key index
    lock: threading.Lock = field(default_factory=threading.Lock)


def _est_once(server: RunningServer, cn: str, got: Received) -> None:
    csr, _ = make_csr(cn)
    try:
        res = est_post(server, "/.well-known/est/simpleenroll", base64.b64encode(csr.public_bytes(
            serialization.Encoding.DER)))
    except OSError:
        return
    if res.status == 200:
        from est.wire import decode_base64_body, decode_certs_only

        cert = decode_certs_only(decode_base64_body(res.body))[0]
        with got.lock:
            got.est.append(cert.public_bytes(serialization.Encoding.DER))


def _scep_once(server: RunningServer, txid: str, key_index: int, got: Received) -> None:
    from scep.asn1 import PkiStatus
    from scep.client import ScepClient, simple_csr
    from tests.support import cached_rsa_key

    key = cached_rsa_key(key_index)
    csr = simple_csr(key, f"kill-{txid}", server.init.scep_challenge)
    try:
        res = asyncio.run(ScepClient(f"{server.base_http}/scep/router", timeout=10).enroll(csr, key, transaction_id=txid))
    except Exception:  # noqa: BLE001 - the server died under us: the transaction is unanswered
        with got.lock:
            got.unanswered[txid] = key_index
        return
    with got.lock:
        if res.status is PkiStatus.SUCCESS:
            got.scep[txid] = res.certificates[0].public_bytes(serialization.Encoding.DER)
            got.unanswered.pop(txid, None)
        else:
            got.unanswered[txid] = key_index


def _check_ledger(k: Killable, got: Received) -> None:
    with k.db() as db:
        rows = db.execute("SELECT issuer, serial, status, der, transaction_id FROM certificates").fetchall()
        dup = db.execute("SELECT issuer, serial, count(*) FROM certificates GROUP BY issuer, serial "
                         "HAVING count(*) > 1").fetchall()
        audited = {r[0] for r in db.execute("SELECT serial FROM audit WHERE event IN ('issue', 'renew') AND ok")}
    assert not dup, f"serial used twice: {dup}"
    statuses = {r[2] for r in rows}
    assert statuses <= {"issued", "abandoned"}, f"left after restart: {statuses}"
    issued = {bytes(r[3]): r for r in rows if r[2] == "issued"}
    assert all(r[3] is None for r in rows if r[2] == "abandoned")
    for der in got.est + list(got.scep.values()):
        assert der in issued, "a client holds a certificate the ledger does not know"
        cert = x509.load_der_x509_certificate(der)
        assert format(cert.serial_number, "x") == issued[der][1]
    assert {r[1] for r in issued.values()} <= audited, "an issued certificate without its audit record"


def _stream(k: Killable, got: Received, rng: random.Random, round_no: int, kill: bool) -> None:
    server = k.server
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = []
        for i in range(12):
            if i % 2:
                futures.append(pool.submit(_est_once, server, f"kill-{round_no}-{i}", got))
            else:
                txid = f"KILL-{round_no}-{i}"
                futures.append(pool.submit(_scep_once, server, txid, i % 4 + 40, got))
        if kill:
            time.sleep(rng.uniform(0.05, 1.5))
            k.kill9()
        concurrent.futures.wait(futures, timeout=120)


def _kill_rounds(k: Killable, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    got = Received()
    k.start()
    for n in range(rounds):
        _stream(k, got, rng, n, kill=True)
        k.start()  # startup sweep: stale reservations become abandoned (timeout 0 here)
        _check_ledger(k, got)
        # Retried SCEP transactions get their certificate (the same one if it had been issued).
        for txid, key_index in list(got.unanswered.items()):
            with k.db() as db:
                before = db.execute("SELECT der FROM certificates WHERE transaction_id = ? AND status = 'issued'",
                                    (txid,)).fetchall()
            _scep_once(k.server, txid, key_index, got)
            assert txid in got.scep, f"retried transaction {txid} did not get its certificate"
            if before:
                assert bytes(before[0][0]) == got.scep[txid], "a retry got a second certificate"
        _check_ledger(k, got)
    with k.db() as db:
        abandoned = db.execute("SELECT count(*) FROM certificates WHERE status = 'abandoned'").fetchone()[0]
        events = db.execute("SELECT count(*) FROM audit WHERE event = 'abandon-reservation'").fetchone()[0]
    assert abandoned == events
    print(f"kill rounds: {rounds}, abandoned {abandoned}, est {len(got.est)}, scep {len(got.scep)}")


def test_kill_9_during_enrollments_loses_nothing(killable: Killable) -> None:
    _kill_rounds(killable, ROUNDS, seed=7030)


@pytest.mark.slow
def test_kill_9_many_times(killable: Killable) -> None:
    _kill_rounds(killable, 40, seed=8894)


def test_graceful_shutdown_completes_or_aborts_before_signing(killable: Killable) -> None:
    killable.start()
    got = Received()
    server = killable.server
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(_est_once, server, f"drain-{i}", got) for i in range(10)]
        futures += [pool.submit(_scep_once, server, f"DRAIN-{i}", 40 + i % 4, got) for i in range(6)]
        time.sleep(0.3)
        assert killable.stop() == 0
        concurrent.futures.wait(futures, timeout=60)
    with killable.db() as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM certificates GROUP BY status").fetchall())
    assert statuses.get("reserved", 0) == 0, "a reservation was left behind by a graceful stop"
    _check_ledger(killable, got)
    assert statuses.get("issued", 0) == len(got.est) + len(got.scep), "issued but never delivered"


_ = (dataclasses, parse)
