"""The OCSP responder's POST body (RFC 6960 Appendix A.1) is read like EST's and SCEP's: capped
(413 on the declared length, before any of it is read) and due within a deadline once the head
is in (408, connection closed; enroll/body.py). A client that sends a head and withholds the
body no longer holds a connection slot of the worker, which EST, SCEP and admin share."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

import enroll.body
import enroll.server as srv
from ca import ocsp
from enroll.app import create_app
from enroll.config import Config
from tests.hardening.test_slow_body import trickle

SLOTS = 3


@pytest.fixture
async def guarded_app(config: Config, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    """The whole application behind enroll.server.GuardedSite with a tiny connection cap and a
    one-second body deadline."""
    monkeypatch.setattr(enroll.body, "BODY_TIMEOUT", 1.0)
    runner = web.AppRunner(create_app(config), access_log=None, keepalive_timeout=1.0)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    await srv.GuardedSite(runner, sock, ssl_context=None, header_timeout=1.0, max_connections=SLOTS).start()
    try:
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()


async def _response(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes the connection (bounded)."""
    data = b""
    for _ in range(50):
        try:
            chunk = await asyncio.wait_for(reader.read(4096), 5)
        except ConnectionError:
            break
        if not chunk:
            break
        data += chunk
    return data


async def test_slow_ocsp_post_body_is_408(aiohttp_server, config: Config,  # type: ignore[no-untyped-def]
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enroll.body, "BODY_TIMEOUT", 1.0)
    server = await aiohttp_server(create_app(config), host="127.0.0.1")
    head = (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
            b"Content-Length: 5000\r\n\r\n")
    out = await trickle(server.port, head, None)
    assert out.startswith(b"HTTP/1.1 408"), out[:200]
    assert b"Connection: close" in out.partition(b"\r\n\r\n")[0]


async def test_withheld_ocsp_bodies_give_their_connection_slots_back(guarded_app: int) -> None:
    head = (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
            b"Content-Length: 200\r\n\r\n")
    holders = [await asyncio.open_connection("127.0.0.1", guarded_app) for _ in range(SLOTS)]
    for _, w in holders:  # complete heads, no body: each waits in the OCSP handler
        w.write(head)
        await w.drain()
    for r, w in holders:
        out = await _response(r)
        assert out.startswith(b"HTTP/1.1 408"), out[:200]
        w.close()
    await asyncio.sleep(0.2)
    r, w = await asyncio.open_connection("127.0.0.1", guarded_app)
    w.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await _response(r)).startswith(b"HTTP/1.1 200")
    w.close()


async def test_oversized_ocsp_post_is_413_before_the_body_is_sent(guarded_app: int) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", guarded_app)
    w.write(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
            b"Content-Length: %d\r\n\r\n" % (ocsp.MAX_REQUEST_BYTES + 1))
    await w.drain()
    out = await _response(r)
    assert out.startswith(b"HTTP/1.1 413"), out[:200]
    w.close()
