"""Small loopback clients for the hardening tests: raw HTTP(S) bytes, one EST and one SCEP
enrollment against a ``RunningServer`` (tests/harness.py)."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from tests.harness import RunningServer
from tests.support import make_csr


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP response (head + Content-Length body), or whatever came before close/timeout."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body
    except (TimeoutError, ConnectionError, ssl.SSLError):
        return data


def http_raw(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
        except ConnectionError:
            pass
        return _read_response(sock)


def client_context(server: RunningServer) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.ca_bundle))
    return ctx


def https_raw(server: RunningServer, raw: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.https_port), timeout=timeout) as plain:
        with client_context(server).wrap_socket(plain, server_hostname="localhost") as sock:
            try:
                sock.sendall(raw)
            except (ConnectionError, ssl.SSLError):
                pass
            return _read_response(sock)


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes


def parse(raw: bytes) -> Resp:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return Resp(status, headers, body)


def basic(server: RunningServer) -> str:
    return base64.b64encode(server.userpass.encode()).decode()


def est_post(server: RunningServer, path: str, body: bytes, *, auth: str | None = None,
             extra: str = "") -> Resp:
    auth = basic(server) if auth is None else auth
    req = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/pkcs10\r\n"
           + (f"Authorization: Basic {auth}\r\n" if auth else "") + extra
           + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    return parse(https_raw(server, req))


def est_enroll(server: RunningServer, cn: str, path: str = "/.well-known/est/simpleenroll") -> Resp:
    csr, _ = make_csr(cn)
    return est_post(server, path, base64.b64encode(csr.public_bytes(serialization.Encoding.DER)))


def scep_enroll(server: RunningServer, cn: str, challenge: str | None = None, profile: str = "router") -> bool:
    """A full SCEP PKCSReq with our own client; True on SUCCESS."""
    from scep.asn1 import PkiStatus
    from scep.client import ScepClient, simple_csr
    from tests.support import cached_rsa_key

    key = cached_rsa_key(0)
    csr = simple_csr(key, cn, challenge or server.init.scep_challenge)

    async def go() -> bool:
        import secrets

        res = await ScepClient(f"{server.base_http}/scep/{profile}").enroll(csr, key,
                                                                          transaction_id=secrets.token_hex(8))
        return res.status is PkiStatus.SUCCESS

    return asyncio.run(go())
