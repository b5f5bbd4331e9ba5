"""The real application (create_app) served in the test's event loop on two loopback listeners,
one HTTPS (the server's own TLS context, client certificates optional) and one plain HTTP, like
`enroll serve` but without a subprocess; and a small aiohttp client for it."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from enroll.app import ISSUER, create_app
from enroll.config import Config
from enroll.pki import Pair
from enroll.tls import server_context
from tests.conftest import free_port


@dataclass
class InProc:
    """A running application: its ports and its issuer."""

    app: web.Application
    config: Config
    https_port: int
    http_port: int

    @property
    def issuer(self):  # type: ignore[no-untyped-def]
        return self.app[ISSUER]

    def client_ssl(self, client: Pair | None = None, tmp: Path | None = None) -> ssl.SSLContext:
        """Trusts the dev root; presents ``client`` (written under ``tmp``) when given."""
        ctx = ssl.create_default_context(cafile=str(self.config.base_dir / "certs" / "root-ca.pem"))
        if client is not None:
            assert tmp is not None
            cert, key = tmp / f"client-{client.cert.serial_number:x}.pem", tmp / f"client-{client.cert.serial_number:x}.key"
            cert.write_bytes(client.cert.public_bytes(serialization.Encoding.PEM))
            key.write_bytes(client.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    async def get(self, path: str, *, https: bool = True, headers: dict[str, str] | None = None,
                  ssl_ctx: ssl.SSLContext | None = None, method: str = "GET", data: bytes | None = None
                  ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, headers, body)."""
        url = (f"https://127.0.0.1:{self.https_port}" if https else f"http://127.0.0.1:{self.http_port}") + path
        async with aiohttp.ClientSession() as session:
            async with session.request(method, url, headers=headers, data=data,
                                       ssl=(ssl_ctx or self.client_ssl()) if https else False) as resp:
                return resp.status, dict(resp.headers), await resp.read()


@asynccontextmanager
async def serve_inproc(config: Config) -> AsyncIterator[InProc]:
    """Serve ``config`` on free loopback ports until the block ends."""
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
