"""`enroll serve --workers N`: N processes on the same sockets, stopped together."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from enroll.pki import DevPKI
from enroll.setup import init_directory
from tests.harness import start_server
from tests.support import free_port


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_workers_share_the_listeners_and_stop_together(tmp_path: Path, dev_pki: DevPKI) -> None:
    with start_server(tmp_path, dev_pki, None, "--workers", "2") as srv:
        proc, log, http_port = srv.process, srv.log_path, srv.http_port
        workers = children_of(proc.pid)
        assert len(workers) == 2
        for _ in range(20):
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=5) as resp:  # noqa: S310
                assert resp.status == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and log.read_text().count('"listening"') < 2:
            time.sleep(0.1)
        assert log.read_text().count('"listening"') == 2
    assert proc.returncode != -signal.SIGKILL  # stopped by SIGTERM, not killed by the harness
    assert not any(alive(w) for w in workers)


def test_each_worker_listens_on_its_own_reuse_port_socket(tmp_path: Path, dev_pki: DevPKI) -> None:
    """The kernel spreads connections over SO_REUSEPORT listeners (enroll/server.py): one
    listening socket per worker on each address, none in the parent (it only reserves)."""
    import re

    with start_server(tmp_path, dev_pki, None, "--workers", "2") as srv:
        proc, log, http_port, https_port = srv.process, srv.log_path, srv.http_port, srv.https_port
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and log.read_text().count('"listening"') < 2:
            time.sleep(0.1)
        workers = set(children_of(proc.pid))
        for port in (http_port, https_port):
            ss = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True,
                                check=True).stdout
            by_address: dict[str, list[int]] = {}
            for line in ss.splitlines():
                address = line.split()[3]
                by_address.setdefault(address, []).extend(int(p) for p in re.findall(r"pid=(\d+)", line))
            assert by_address and len(workers) == 2, ss
            for owners in by_address.values():
                assert sorted(owners) == sorted(workers), ss
    assert proc.returncode != -signal.SIGKILL  # stopped by SIGTERM, not killed by the harness
    assert not any(alive(w) for w in workers)


def test_workers_refuse_a_port_already_in_use(tmp_path: Path, dev_pki: DevPKI) -> None:
    """The parent's reservation fails on a busy port before any worker is forked."""
    import socket

    busy = socket.create_server(("127.0.0.1", 0))
    try:
        port = busy.getsockname()[1]
        init = init_directory(tmp_path / "w", https_port=free_port(), http_port=port, pki=dev_pki)
        res = subprocess.run([sys.executable, "-m", "enroll", "-c", str(init.config_path), "serve",
                              "--workers", "2"], capture_output=True, text=True, timeout=60)
        assert res.returncode != 0
        assert "Address already in use" in res.stdout + res.stderr
    finally:
        busy.close()
