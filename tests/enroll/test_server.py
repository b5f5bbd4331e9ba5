"""`enroll serve --workers N`: N processes on the same sockets, stopped together."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from enroll.pki import DevPKI
from enroll.setup import init_directory
from tests.conftest import _wait_listening, free_port


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_workers_share_the_listeners_and_stop_together(tmp_path: Path, dev_pki: DevPKI) -> None:
    http_port = free_port()
    init = init_directory(tmp_path / "w", https_port=free_port(), http_port=http_port, pki=dev_pki)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "enroll", "-c", str(init.config_path), "serve",
                                 "--workers", "2"], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(http_port, proc, log)
        workers = children_of(proc.pid)
        assert len(workers) == 2
        for _ in range(20):
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=5) as resp:  # noqa: S310
                assert resp.status == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and log.read_text().count('"listening"') < 2:
            time.sleep(0.1)
        assert log.read_text().count('"listening"') == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not any(alive(w) for w in workers)
