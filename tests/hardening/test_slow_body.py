"""Slow POST bodies (slowhttptest -B style): the head arrives, the body trickles. EST answers 408
and SCEP 408 once the body deadline passes (est/http.py, scep/http.py BODY_TIMEOUT), instead of
holding a handler forever; nothing is issued."""

from __future__ import annotations

import asyncio
import ssl
import time

import pytest

import est.http
import scep.http
from tests.harness import EstServer


async def trickle(port: int, head: bytes, ssl_ctx: ssl.SSLContext | None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_ctx,
                                                   server_hostname="localhost" if ssl_ctx else None)
    writer.write(head)
    started = time.monotonic()
    data = b""
    while time.monotonic() - started < 5:
        try:
            writer.write(b"A")
            await writer.drain()
            data += await asyncio.wait_for(reader.read(4096), 0.2)
            if data:
                break
        except asyncio.TimeoutError:
            continue
        except ConnectionError:
            break
    writer.close()
    return data


async def test_slow_est_body_is_408(est_server: EstServer, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(est.http, "BODY_TIMEOUT", 1.0)
    ctx = ssl.create_default_context(cafile=str(est_server.ca_bundle))
    head = (b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/pkcs10\r\n"
            b"Content-Length: 5000\r\n\r\n")
    out = await trickle(est_server.https_port, head, ctx)
    assert out.startswith(b"HTTP/1.1 408"), out[:200]
    assert await est_server.issued() == 0


async def test_slow_scep_body_is_408(aiohttp_server, config, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from enroll.app import create_app

    monkeypatch.setattr(scep.http, "BODY_TIMEOUT", 1.0)
    server = await aiohttp_server(create_app(config), host="127.0.0.1")
    head = b"POST /scep?operation=PKIOperation HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    out = await trickle(server.port, head, None)
    assert out.startswith(b"HTTP/1.1 408"), out[:200]
