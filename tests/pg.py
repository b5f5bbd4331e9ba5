"""A private PostgreSQL cluster on loopback for the tests (Debian's postgresql package).

Started once per session in a temp directory on a free port, as the ``postgres`` user when the
tests run as root; each test gets its own database. Skipped when PostgreSQL is not installed,
unless ENROLL_REQUIRE_INTEROP=1 (CI), where a missing server fails.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.harness import stop_process, wait_port
from tests.support import free_port


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Cluster:
    """A running throwaway cluster; ``url(db)`` gives a DSN for a database on it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="enroll-pg-"))
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._n = 0

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    def start(self) -> None:
        data = self.dir / "data"
        if self.user:
            shutil.chown(self.dir, self.user)
        subprocess.run(self._cmd(str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                 "--no-sync"), check=True, capture_output=True, timeout=120)
        self.proc = subprocess.Popen(
            self._cmd(str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.dir),
                      "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=300"),
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "wb"))
        wait_port(self.port, self.proc, self.dir / "log", "postgres", timeout=30)
        time.sleep(0.3)

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        self._n += 1
        name = f"enroll_test_{os.getpid()}_{self._n}"
        cmd = [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
               "-q", "-c", f"CREATE DATABASE {name}"]
        for attempt in range(20):  # a busy machine: the server may still be starting up
            res = subprocess.run(cmd, capture_output=True, timeout=60)
            if res.returncode == 0:
                return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"
            if b"already exists" in res.stderr:
                return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"
            time.sleep(0.25 * (attempt + 1))
        raise RuntimeError(f"CREATE DATABASE {name} failed: {res.stderr.decode(errors='replace')}")

    def stop(self) -> None:
        if self.proc is not None:
            # runuser does not forward SIGTERM to postgres: ask the postmaster itself to stop.
            subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate",
                                     "-w", "-t", "20", "stop"), capture_output=True, timeout=60)
            stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def cluster() -> Iterator[Cluster | None]:
    """Yield a started cluster, or None when PostgreSQL is not installed."""
    bindir = _bindir()
    if bindir is None:
        yield None
        return
    c = Cluster(bindir)
    try:
        c.start()
        yield c
    finally:
        c.stop()
