"""The one server harness of the tests.

Two ways to run the real application on 127.0.0.1, both with the server's own TLS context:

* ``start_server`` / ``enroll_serve``: `enroll serve` in a subprocess (what an operator runs),
  waited for on /health and stopped cleanly (SIGTERM, then SIGKILL) with its log tail printed
  and every certificate it issued linted; gives a ``RunningServer``.
* ``serve_inproc``: ``create_app`` served in the test's own event loop on an HTTPS and a plain
  HTTP listener; gives an ``InProc`` whose issuer the test can read directly.

``ServiceHarness`` drives the application's EST and SCEP services synchronously, without HTTP
(the fuzz campaigns of tests/hardening call it from Hypothesis).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from ca.issuer import Issuer
from enroll.app import ISSUER, create_app
from enroll.config import Config, load_config
from enroll.pki import DevPKI, Pair
from enroll.server import GuardedSite
from enroll.setup import InitResult, init_directory, record_example_client
from enroll.tls import server_context
from est.client import EstClient
from est.http import EST_SERVICE
from est.service import Credentials, EstService, TlsInfo
from scep.http import SERVICE as SCEP_SERVICE
from scep.service import ScepService
from tests.support import ROOT, assert_ledger_lints_clean, free_port, issued, issued_count, ledger_rows, require_tool

T = TypeVar("T")


# --- processes ----------------------------------------------------------------------------------

def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the plain-HTTP listener answers /health (the app is up, the ledger migrated)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"enroll serve exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"enroll serve did not answer on {port}: {log.read_text()}")


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 20) -> None:
    """Until something accepts TCP connections on 127.0.0.1:``port`` (``proc`` must stay up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}: {log.read_text()}")


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Send ``sig`` and wait for the process to exit; kill it after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def enroll_serve(config_path: Path, http_port: int, log: Path, *args: str,
                 command: Sequence[str] | None = None, env: dict[str, str] | None = None,
                 lint: bool = True) -> Iterator[subprocess.Popen[bytes]]:
    """`enroll -c CONFIG serve ARGS` in a subprocess: started, waited for (/health), stopped.

    ``command`` replaces ``python -m enroll`` (an installed entry point). On exit the log tail is
    printed (pytest shows it for failed tests) and, unless ``lint`` is false, every certificate
    the server issued is linted with pkilint.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen([*(command or (sys.executable, "-m", "enroll")), "-c", str(config_path), "serve",
                                 *args], stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, env=env)
    try:
        wait_listening(http_port, proc, log)
        yield proc
    finally:
        stop_process(proc)
        print("--- enroll serve log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-40:]))
    if lint:
        assert_ledger_lints_clean(load_config(config_path))


# --- `enroll serve` in a subprocess --------------------------------------------------------------

class Loopback:
    """Something listening on 127.0.0.1 over HTTPS and plain HTTP."""

    https_port: int
    http_port: int

    @property
    def base_https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def base_http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@dataclass
class RunningServer(Loopback):
    """`enroll serve` in a subprocess on free loopback ports."""

    init: InitResult
    config: Config
    https_port: int
    http_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def est(self) -> str:
        """The EST base URL (RFC 7030 §3.2.2)."""
        return self.base_https + "/.well-known/est"

    @property
    def ca_bundle(self) -> Path:
        """The trust anchor for the server's TLS certificate."""
        return self.init.certs_dir / "root-ca.pem"

    @property
    def userpass(self) -> str:
        """The EST user's ``user:password``."""
        return f"{self.init.est_user}:{self.init.est_password}"

    @property
    def work(self) -> Path:
        """A scratch directory next to the server's own (for a peer tool's files)."""
        path = self.log_path.parent / "work"
        path.mkdir(exist_ok=True)
        return path

    def enroll(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the `enroll` CLI against this server's config; ``check`` raises with its output."""
        cmd = [sys.executable, "-m", "enroll", "-c", str(self.init.config_path), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0 and args[-1] == "list" and "locked" in res.stderr:
            # Seen once: a read-only CLI listing racing the server's write (SQLite busy); retry once.
            time.sleep(0.5)
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"enroll {' '.join(args)} failed: {res.stdout}\n{res.stderr}")
        return res

    def s_client(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        """`openssl s_client ARGS` against the HTTPS listener, trusting the dev root."""
        return subprocess.run([require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{self.https_port}",
                               "-CAfile", str(self.ca_bundle), *args], input=stdin, capture_output=True, timeout=30)

    def s_client_renegotiation(self) -> bytes:
        """What `openssl s_client` prints when, on a TLS 1.2 session, it asks for a renegotiation
        (its interactive "R") and then sends a GET /health (RFC 5746 §4.3: a server may refuse
        renegotiation with a no_renegotiation alert)."""
        proc = subprocess.Popen([require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{self.https_port}",
                                 "-CAfile", str(self.ca_bundle), "-tls1_2", "-cipher", "ECDHE+AESGCM"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdin is not None
        try:
            time.sleep(1.0)
            proc.stdin.write(b"R\n")
            proc.stdin.flush()
            time.sleep(1.0)
            try:
                proc.stdin.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                proc.stdin.flush()
                time.sleep(1.0)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # s_client already exited on the alert
            out = proc.stdout.read() if proc.stdout else b""
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        return out

    def est_suite(self, *args: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
        """`python -m conformance est` against this server with the EST user's password: the JSON
        report and the finished process."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        run = subprocess.run([sys.executable, "-m", "conformance", "est", self.base_https, "--ca-bundle",
                              str(self.ca_bundle), "--basic", self.userpass, *args, "--json", "-"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
        assert run.stdout, run.stderr
        return json.loads(run.stdout), run

    def issued(self, channels: Sequence[str] = ()) -> int:
        """Issued certificates in the server's ledger."""
        return issued_count(self.config, channels)

    def rows(self) -> dict[str, int]:
        """Certificate rows by status."""
        return ledger_rows(self.config)


@contextmanager
def start_server(tmp_path: Path, dev_pki: DevPKI, edit: Callable[[InitResult], None] | None = None,
                 *args: str) -> Iterator[RunningServer]:
    """`enroll init` in ``tmp_path/srv`` (``edit`` may change its config), then `enroll serve ARGS`."""
    https_port, http_port = free_port(), free_port()
    init = init_directory(tmp_path / "srv", https_port=https_port, http_port=http_port, pki=dev_pki)
    if edit is not None:
        edit(init)
    log = tmp_path / "serve.log"
    with enroll_serve(init.config_path, http_port, log, *args) as proc:
        yield RunningServer(init, load_config(init.config_path), https_port, http_port, proc, log)


@dataclass
class Node(Loopback):
    """One `enroll serve` process of a cluster whose nodes share one ledger."""

    name: str
    config_path: Path
    https_port: int
    http_port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def certs(self) -> Path:
        return self.config_path.parent / "certs"

    def scep_url(self, profile: str) -> str:
        return f"{self.base_http}/scep/{profile}"

    def cli(self, *args: str) -> str:
        """Run the `enroll` CLI with this node's config (same database as every node)."""
        res = subprocess.run([sys.executable, "-m", "enroll", "-c", str(self.config_path), *args],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        return res.stdout


def node_config(src: Path, dst: Path, https_port: int, http_port: int) -> Path:
    """A copy of node 0's directory (same CA keys, users, secrets) listening on its own ports.

    ``[server] base_url`` stays node 0's: in a deployment it is the load balancer's address, the
    one URL every node puts into the certificates it issues."""
    shutil.copytree(src, dst)
    cfg = dst / "enroll.toml"
    lines = []
    for line in cfg.read_text().splitlines():
        if line.startswith("https = "):
            line = f'https = ["127.0.0.1:{https_port}", "[::1]:{https_port}"]'
        elif line.startswith("http = "):
            line = f'http = ["127.0.0.1:{http_port}", "[::1]:{http_port}"]'
        lines.append(line)
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


@contextmanager
def start_nodes(base: Path, dev_pki: DevPKI, ledger_url: str, count: int = 3,
                edit: Callable[[InitResult], None] | None = None) -> Iterator[tuple[InitResult, list[Node]]]:
    """``count`` `enroll serve` nodes over one ledger, started at once (they race to migrate):
    node 0 is `enroll init` in ``base/node0`` (``edit`` may change its config), the others copies
    of it on their own ports. The example client is recorded once all answer; all are stopped."""
    ports = [(free_port(), free_port()) for _ in range(count)]
    init = init_directory(base / "node0", https_port=ports[0][0], http_port=ports[0][1], pki=dev_pki)
    text, n = re.subn(r'(?m)^url = "sqlite:///var/enroll.db"$', f'url = "{ledger_url}"', init.config_path.read_text())
    assert n == 1
    init.config_path.write_text(text)
    if edit is not None:
        edit(init)
    configs = [init.config_path] + [node_config(base / "node0", base / f"node{i}", *ports[i])
                                    for i in range(1, count)]
    nodes: list[Node] = []
    try:
        for i, cfg in enumerate(configs):
            log = base / f"node{i}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "enroll", "-c", str(cfg), "serve"], stdout=out,
                                        stderr=subprocess.STDOUT, cwd=cfg.parent)
            nodes.append(Node(f"node{i}", cfg, ports[i][0], ports[i][1], proc, log))
        for node in nodes:
            wait_listening(node.http_port, node.process, node.log)
        record_example_client(init.config_path)  # the fresh database does not know it yet
        yield init, nodes
    finally:
        for node in nodes:
            node.process.terminate()
        for node in nodes:
            stop_process(node.process)


# --- create_app in the test's event loop ---------------------------------------------------------

def client_ssl(ca_bundle: Path, client: Pair | None = None, tmp: Path | None = None) -> ssl.SSLContext:
    """Trusts ``ca_bundle``; presents ``client`` (its files written under ``tmp``) when given."""
    ctx = ssl.create_default_context(cafile=str(ca_bundle))
    if client is not None:
        assert tmp is not None
        cert, key = tmp / f"client-{client.cert.serial_number:x}.pem", tmp / f"client-{client.cert.serial_number:x}.key"
        cert.write_bytes(client.cert.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(client.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


@dataclass
class InProc(Loopback):
    """A running application in this event loop: its ports and its issuer."""

    app: web.Application
    config: Config
    https_port: int
    http_port: int

    @property
    def issuer(self) -> Issuer:
        return self.app[ISSUER]

    @property
    def ca_bundle(self) -> Path:
        """The trust anchor for the server's TLS certificate."""
        return self.config.base_dir / "certs" / "root-ca.pem"

    async def issued(self) -> int:
        """Certificates issued over a protocol (a recorded example client does not count)."""
        return await issued(self.issuer, channels=("est", "scep"))

    def client_ssl(self, client: Pair | None = None, tmp: Path | None = None) -> ssl.SSLContext:
        """Trusts the dev root; presents ``client`` (written under ``tmp``) when given."""
        return client_ssl(self.ca_bundle, client, tmp)

    async def get(self, path: str, *, https: bool = True, headers: dict[str, str] | None = None,
                  ssl_ctx: ssl.SSLContext | None = None, method: str = "GET", data: bytes | None = None
                  ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, headers, body)."""
        url = (self.base_https if https else self.base_http) + path
        async with aiohttp.ClientSession() as session:
            async with session.request(method, url, headers=headers, data=data,
                                       ssl=(ssl_ctx or self.client_ssl()) if https else False) as resp:
                return resp.status, dict(resp.headers), await resp.read()


@dataclass
class EstServer(InProc):
    """An in-process application whose directory carries the EST test profiles
    (``tests.support.add_est_test_profiles``), with the project's own EST client for it."""

    init: InitResult

    def client(self, label: str | None = None, **kw: Any) -> EstClient:
        """An EST client (RFC 7030) trusting the server's root; no polling unless asked."""
        kw.setdefault("max_polls", 0)
        return EstClient(self.base_https, trust_anchor=self.ca_bundle, label=label, **kw)

    def basic(self, label: str | None = None, **kw: Any) -> EstClient:
        """An EST client with the EST user's password (RFC 7030 §3.2.3)."""
        return self.client(label, username=self.init.est_user, password=self.init.est_password, **kw)


@asynccontextmanager
async def serve_inproc(config: Config) -> AsyncIterator[InProc]:
    """Serve ``config`` on free loopback ports (HTTPS and plain HTTP) until the block ends."""
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    https_port, http_port = free_port(), free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", https_port, ssl_context=server_context(config)).start()
        await web.TCPSite(runner, "127.0.0.1", http_port).start()
        yield InProc(app, config, https_port, http_port)
    finally:
        await runner.cleanup()


@asynccontextmanager
async def guarded_site(*, max_connections: int, ssl_context: Any = None) -> AsyncIterator[int]:
    """A one-route app ("/" answers "ok") behind ``enroll.server.GuardedSite`` with tiny limits (a
    1 s head deadline and keep-alive, ``max_connections``), optionally over ``ssl_context``, on a
    free loopback port; yields the port."""
    app = web.Application()

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", ok)
    runner = web.AppRunner(app, keepalive_timeout=1.0)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    site = GuardedSite(runner, sock, ssl_context=ssl_context, header_timeout=1.0, max_connections=max_connections)
    await site.start()
    try:
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()


# --- the services without HTTP -------------------------------------------------------------------

class ServiceHarness:
    """One application (create_app) with its own event loop; EST and SCEP services called directly."""

    def __init__(self, config: Config, init: InitResult, *, migrate: bool = True) -> None:
        self.config = config
        self.init = init
        self.loop = asyncio.new_event_loop()
        self.app = create_app(config)
        self.issuer: Issuer = self.app[ISSUER]
        self.est: EstService = self.app[EST_SERVICE]
        self.scep: ScepService = self.app[SCEP_SERVICE]
        if migrate:
            self.run(self.issuer.ledger.migrate())
        self.tls = TlsInfo(version="TLSv1.3", remote="127.0.0.1")
        self.creds = Credentials(init.est_user, init.est_password)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def rows(self) -> dict[str, int]:
        """Certificate rows by status (reserved, issued, abandoned...). Serials this process has
        reserved ahead in its pool (ca/serials.py) and not handed out are not counted as
        ``reserved``: they belong to no request."""
        out = ledger_rows(self.config)
        pooled = sum(self.issuer.serials.held(ca) for ca in self.issuer.cas)
        if pooled:
            out["reserved"] -= pooled
            if not out["reserved"]:
                del out["reserved"]
        return out

    def audit_count(self) -> int:
        return len(self.run(self.issuer.ledger.audit_records(1_000_000)))

    def close(self) -> None:
        self.run(self.issuer.ledger.close())
        self.loop.close()
