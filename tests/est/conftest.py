"""EST test harness: the real application (create_app over the embedded default plus a few extra
EST profiles) served over TLS on 127.0.0.1, and the project's own async EST client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from ca.issuer import Issuer
from enroll.app import ISSUER, create_app
from enroll.config import Config, load_config
from enroll.pki import DevPKI
from enroll.setup import InitResult, record_example_client
from enroll.tls import server_context
from est.client import EstClient
from tests.conftest import free_port, start_server

#: Extra profiles appended to the embedded default's config for EST tests.
EXTRA_PROFILES = """
[profiles.popgw]
ca = "issuing"
validity_days = 30
key_types = ["ec-p256", "rsa-2048"]
key_usage = ["digital_signature"]
extended_key_usage = ["client_auth"]
[profiles.popgw.subject]
allow = ["CN"]
require = ["CN"]
[profiles.popgw.est]
labels = ["pop"]
auth = ["basic"]
pop = "tls-unique"

[profiles.both]
ca = "issuing"
validity_days = 30
key_types = ["ec-p256"]
key_usage = ["digital_signature"]
extended_key_usage = ["client_auth"]
[profiles.both.subject]
allow = ["CN"]
require = ["CN"]
[profiles.both.est]
labels = ["both"]
auth = ["basic+client-cert"]
client_trust = ["enroll"]
client_profiles = ["gateway"]   # the example client is recorded under gateway

[profiles.skg]
ca = "issuing"
validity_days = 30
key_types = ["ec-p256"]
key_usage = ["digital_signature"]
extended_key_usage = ["client_auth"]
[profiles.skg.subject]
allow = ["CN"]
require = ["CN"]
[profiles.skg.san]
allow = ["dns"]
[profiles.skg.est]
labels = ["skg"]
auth = ["basic"]
csr_template = true
serverkeygen_keks = {{ "6b656b2d31" = "kek-1.hex" }}
"""

KEK_ID = bytes.fromhex("6b656b2d31")  # "kek-1"
KEK = bytes(range(32))


@dataclass
class EstServer:
    init: InitResult
    config: Config
    issuer: Issuer
    port: int

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.init.certs_dir / "root-ca.pem"

    @property
    def certs(self) -> Path:
        return self.init.certs_dir

    def client(self, label: str | None = None, **kw: object) -> EstClient:
        kw.setdefault("max_polls", 0)
        return EstClient(self.url, trust_anchor=self.ca_file, label=label, **kw)  # type: ignore[arg-type]

    def basic(self, label: str | None = None, **kw: object) -> EstClient:
        return self.client(label, username=self.init.est_user, password=self.init.est_password, **kw)

    async def issued(self) -> int:
        """Certificates issued over a protocol (the recorded example client does not count)."""
        return await self.issuer.ledger.count_certificates("issued", channels=("est", "scep"))


def prepare(embedded: InitResult) -> Config:
    """Append the EST test profiles and the KEK file, record the example client certificate
    (as `enroll init` does), then load the config."""
    base = embedded.config_path.parent
    (base / "kek-1.hex").write_text(KEK.hex() + "\n")
    (base / "kek-1.hex").chmod(0o600)  # a KEK is a secret key: group/world-readable is refused
    with open(embedded.config_path, "a") as fh:
        fh.write(EXTRA_PROFILES.format())
    record_example_client(embedded.config_path)
    return load_config(embedded.config_path)


@pytest.fixture
async def est_server(embedded: InitResult, dev_pki: DevPKI) -> AsyncIterator[EstServer]:
    """The whole application over TLS on a free loopback port, in this event loop."""
    config = prepare(embedded)
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    ctx = server_context(config)
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx)
    await site.start()
    try:
        yield EstServer(embedded, config, app[ISSUER], port)
    finally:
        await runner.cleanup()


def interop_required() -> bool:
    return os.environ.get("ENROLL_REQUIRE_INTEROP") == "1"


@dataclass
class Serve:
    init: InitResult
    port: int
    http_port: int
    proc: subprocess.Popen[bytes]
    log: Path
    work: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def est(self) -> str:
        return self.url + "/.well-known/est"

    @property
    def ca(self) -> Path:
        return self.init.certs_dir / "root-ca.pem"

    @property
    def userpass(self) -> str:
        return f"{self.init.est_user}:{self.init.est_password}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "enroll", "-c", str(self.init.config_path), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0 and args[-1] == "list" and "locked" in res.stderr:
            # Seen once: a read-only CLI listing racing the server's write (SQLite busy); retry once.
            time.sleep(0.5)
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"enroll {' '.join(args)} failed: {res.stdout}\n{res.stderr}")
        return res

    def issued(self) -> int:
        out = self.cli("certs", "list").stdout
        return len([line for line in out.splitlines()[1:] if line.strip()])


def _serve(tmp_path: Path, dev_pki: DevPKI, default_profile: str) -> Iterator[Serve]:
    def edit(init: InitResult) -> None:
        text = init.config_path.read_text()
        text = text.replace('default_profile = "gateway"      # /.well-known/est/<op> without a label',
                            f'default_profile = "{default_profile}"')
        init.config_path.write_text(text)

    for srv in start_server(tmp_path, dev_pki, edit):
        work = tmp_path / "work"
        work.mkdir()
        yield Serve(srv.init, srv.https_port, srv.http_port, srv.process, srv.log_path, work)


@pytest.fixture
def serve(tmp_path: Path, dev_pki: DevPKI) -> Iterator[Serve]:
    yield from _serve(tmp_path, dev_pki, "gateway")


@pytest.fixture
def serve_manual(tmp_path: Path, dev_pki: DevPKI) -> Iterator[Serve]:
    yield from _serve(tmp_path, dev_pki, "manual")


