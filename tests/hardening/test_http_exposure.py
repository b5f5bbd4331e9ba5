"""HTTP and TLS exposure of the real server (`enroll serve`) on loopback: version disclosure,
compressed bodies, body caps before parsing, header limits, the request-head deadline and the
connection cap (enroll/server.py), slowloris, TLS versions/suites/renegotiation, path confusion."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.hardening.helpers import basic as _basic_h, est_enroll, http_raw, https_raw, scep_enroll
from tests.harness import RunningServer, guarded_site
from tests.support import free_port, make_csr, require_tool


def test_no_version_disclosure_even_on_parser_errors(running_server: RunningServer) -> None:
    for raw in (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"GARBAGE \x00\r\n\r\n",
                b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"):
        head = http_raw(running_server.http_port, raw).split(b"\r\n\r\n")[0].lower()
        assert b"aiohttp" not in head and b"python" not in head, head
    head = https_raw(running_server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").lower()
    assert b"server: enroll" in head and b"aiohttp" not in head


def test_compressed_bodies_are_refused_before_inflating(running_server: RunningServer) -> None:
    csr, _ = make_csr("zip")
    body = gzip.compress(csr.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                                     fromlist=["Encoding"]).Encoding.DER) * 10)
    for path, port in (("/.well-known/est/simpleenroll", None), ("/scep?operation=PKIOperation", "http")):
        req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Type: application/pkcs10\r\n"
               f"Authorization: Basic {_basic(running_server)}\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        out = http_raw(running_server.http_port, req) if port else https_raw(running_server, req)
        assert out.startswith(b"HTTP/1.1 415"), out[:200]
    assert running_server.issued() == 0


def test_huge_declared_body_is_413_without_waiting_for_it(running_server: RunningServer) -> None:
    for path in ("/.well-known/est/simpleenroll", "/scep?operation=PKIOperation"):
        _huge_body(running_server, path)


def _huge_body(running_server: RunningServer, path: str) -> None:
    req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/pkcs10\r\n"
           f"Authorization: Basic {_basic(running_server)}\r\n"
           "Content-Length: 1000000000\r\n\r\n").encode()
    started = time.monotonic()
    out = https_raw(running_server, req, timeout=10)
    assert out.startswith(b"HTTP/1.1 413"), out[:200]
    assert time.monotonic() - started < 5
    assert running_server.issued() == 0


def test_header_limits(running_server: RunningServer) -> None:
    for extra in ("".join(f"X-H{i}: v\r\n" for i in range(200)),  # header count
                  "X-Big: " + "a" * 40_000 + "\r\n"):              # one huge field
        _header_limit(running_server, extra)


def _header_limit(running_server: RunningServer, extra: str) -> None:
    out = http_raw(running_server.http_port, f"GET /health HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    assert out.split(b" ")[1] in (b"400", b"431"), out[:200]
    assert http_raw(running_server.http_port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")


@pytest.fixture
async def guarded() -> "AsyncIteratorSite":  # type: ignore[name-defined]
    """An in-process server through enroll.server.GuardedSite with tiny limits (fast tests)."""
    async with guarded_site(max_connections=5) as port:
        yield port


async def test_slow_request_head_is_cut_at_the_deadline(guarded: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed = False
    for _ in range(40):  # drip a header every 0.1 s: never completes the head
        try:
            writer.write(b"X-Drip: 1\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(100), 0.1)
            if data == b"":
                closed = True
                break
        except asyncio.TimeoutError:
            continue
        except ConnectionError:
            closed = True
            break
    assert closed and time.monotonic() - started < 2.5
    writer.close()


async def test_keep_alive_drip_of_the_next_head_is_cut_too(guarded: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    writer.write(b"GET / HTTP/1.1\r\n")
    closed = False
    for _ in range(40):
        try:
            writer.write(b"X-Drip: 1\r\n")
            await writer.drain()
            if await asyncio.wait_for(reader.read(100), 0.1) == b"":
                closed = True
                break
        except asyncio.TimeoutError:
            continue
        except ConnectionError:
            closed = True
            break
    assert closed and time.monotonic() - started < 3.5
    writer.close()


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, close: bool = False) -> bytes:
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n")
    try:
        return await asyncio.wait_for(reader.read(200), 2)
    except ConnectionError:
        return b""


async def test_connection_cap_refuses_when_every_slot_is_a_real_client(guarded: int) -> None:
    conns = [await asyncio.open_connection("127.0.0.1", guarded) for _ in range(5)]
    for r, w in conns:  # each completed a request and stays open (keep-alive)
        assert (await _get(r, w)).startswith(b"HTTP/1.1 200")
    assert await _get(*await asyncio.open_connection("127.0.0.1", guarded)) == b""  # dropped at accept
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.2)
    assert (await _get(*await asyncio.open_connection("127.0.0.1", guarded), close=True)).startswith(b"HTTP/1.1 200")


async def test_connection_cap_evicts_the_oldest_silent_connection(guarded: int) -> None:
    silent = [await asyncio.open_connection("127.0.0.1", guarded) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert (await _get(*await asyncio.open_connection("127.0.0.1", guarded), close=True)).startswith(b"HTTP/1.1 200")
    assert await asyncio.wait_for(silent[0][0].read(10), 2) == b""  # the oldest silent one was cut
    for _, w in silent:
        w.close()


@pytest.mark.interop
def test_slowloris_does_not_stop_enrollments(running_server: RunningServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """slowhttptest (Debian) holds 600 slow-header connections on each listener for 14 s while
    EST and SCEP enrollments go on; the head deadline keeps recycling the attackers."""
    tool = require_tool("slowhttptest")
    procs = [subprocess.Popen([tool, "-H", "-c", "600", "-r", "200", "-i", "5", "-l", "14", "-x", "24",
                               "-p", "3", "-u", url, "-o", str(tmp_path / f"slow{i}")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
             for i, url in enumerate([f"http://127.0.0.1:{running_server.http_port}/health",
                                      f"https://127.0.0.1:{running_server.https_port}/health"])]
    try:
        time.sleep(4)  # let the attack ramp up
        ok = 0
        for i in range(3):
            assert est_enroll(running_server, f"during-slowloris-{i}").status == 200
            assert scep_enroll(running_server, f"scep-during-slowloris-{i}")
            ok += 1
            time.sleep(2)
        assert ok == 3
    finally:
        for p in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
    assert http_raw(running_server.http_port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_tls12_refuses_non_aead_or_non_ecdhe_suites(running_server: RunningServer) -> None:
    for cipher in ("AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA256",
                   "ECDHE-ECDSA-AES256-SHA384", "DHE-RSA-AES128-GCM-SHA256"):
        res = running_server.s_client("-tls1_2", "-cipher", cipher)
        assert b"Cipher is (NONE)" in res.stdout or res.returncode != 0, (cipher, res.stdout[-400:])


def test_tls12_with_ecdhe_aead_works_and_tls13_too(running_server: RunningServer) -> None:
    for args in (["-tls1_2", "-cipher", "ECDHE+AESGCM"], ["-tls1_3"]):
        res = running_server.s_client(*args)
        assert res.returncode == 0 and b"Cipher is (NONE)" not in res.stdout, res.stdout[-400:]


def test_tls12_renegotiation_is_refused(running_server: RunningServer) -> None:
    """s_client's interactive "R" asks for a renegotiation once the session is up; the server
    (ssl.OP_NO_RENEGOTIATION) answers with a no_renegotiation alert."""
    out = running_server.s_client_renegotiation()
    assert b"RENEGOTIATING" in out, out[-600:]
    assert b"no renegotiation" in out.lower() and b"200 OK" not in out, out[-600:]


EST_CONFUSED = ["/.well-known/est/..%2Fsensor/simpleenroll", "/.well-known/est/gateway%2F..%2Fsensor/simpleenroll",
                "/.well-known/est//simpleenroll/", "/.well-known/est/%2e%2e/simpleenroll",
                "/.well-known/est/sensor%00/simpleenroll", "/.well-known/est/SENSOR/simpleenroll",
                "/.well-known/est/gateway/../sensor%2Fsimpleenroll"]
SCEP_CONFUSED = ["/scep/router%2F..%2Fmdm", "/scep//mdm/x", "/scep/mdm%00", "/scep/%2e%2e%2Fmdm"]


def test_path_confusion_never_reaches_another_profile(running_server: RunningServer) -> None:
    for path in EST_CONFUSED:
        res = est_enroll(running_server, "confused", path=path)
        assert res.status in (400, 404, 405), (path, res.status, res.body[:200])
    assert running_server.issued() == 0
    for path in SCEP_CONFUSED:
        out = http_raw(running_server.http_port, f"GET {path}?operation=GetCACaps HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert out.startswith((b"HTTP/1.1 404", b"HTTP/1.1 400")), (path, out[:200])


def _basic(server: RunningServer) -> str:
    import base64

    return base64.b64encode(f"{server.init.est_user}:{server.init.est_password}".encode()).decode()


_ = (Iterator, free_port, ssl)
