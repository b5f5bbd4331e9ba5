"""A small HTTP transport of the suite's own (aiohttp), recording every exchange byte for byte:
status, headers exactly as received, body. Loopback or any URL the user gives; no retries, no
redirects, no load."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from conformance.asn1dump import hexdump


@dataclass
class Exchange:
    """One HTTP request and what came back (or the transport error)."""

    method: str
    url: str
    request_headers: dict[str, str]
    request_body: bytes
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    error: str | None = None
    tls_version: str | None = None

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (case-insensitive), exactly as sent."""
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def content_type(self) -> str | None:
        return self.header("Content-Type")

    def media_type(self) -> str:
        """The media type without parameters, lower-cased."""
        return (self.content_type or "").split(";")[0].strip().lower()

    def lines(self, body: bool = True) -> list[str]:
        """Evidence: request line, status line, headers, a body preview."""
        shown_url = self.url if len(self.url) < 160 else self.url[:150] + "...(" + str(len(self.url)) + " chars)"
        out = [f"> {self.method} {shown_url}" + (f" ({len(self.request_body)} bytes body)" if self.request_body else "")]
        if self.error:
            out.append(f"< transport error: {self.error}")
            return out
        out.append(f"< HTTP {self.status} {self.reason}")
        out.extend(f"< {k}: {v}" for k, v in self.headers)
        if body and self.body:
            if self._texty():
                text = self.body.decode("utf-8", "replace")
                out.append("< body: " + repr(text[:300]) + ("..." if len(text) > 300 else ""))
            else:
                out.append("< body " + hexdump(self.body))
        return out

    def _texty(self) -> bool:
        try:
            self.body[:400].decode("ascii")
        except UnicodeDecodeError:
            return False
        return True


class Http:
    """An aiohttp session with the suite's TLS settings; ``request`` never raises for HTTP or
    transport errors, it records them in the Exchange."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0) -> None:
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self.exchanges: list[Exchange] = []

    async def __aenter__(self) -> Http:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, auto_decompress=False,
            connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False, limit=1,
                                           force_close=True))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                      data: bytes | None = None, encoded: bool = False) -> Exchange:
        """Send one request. ``encoded``: the URL's query is already percent-encoded as wanted."""
        assert self._session is not None
        hdrs = dict(headers or {})
        ex = Exchange(method, url, hdrs, data or b"")
        try:
            async with self._session.request(method, URL(url, encoded=encoded), headers=hdrs, data=data,
                                             allow_redirects=False) as resp:
                conn = resp.connection
                sslobj = conn.transport.get_extra_info("ssl_object") if conn and conn.transport else None
                if sslobj is not None:
                    ex.tls_version = sslobj.version()
                ex.status = resp.status
                ex.reason = resp.reason or ""
                ex.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers]
                ex.body = await resp.read()
        except aiohttp.ClientConnectorCertificateError as exc:
            ex.error = f"TLS certificate verification failed: {exc}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ex.error = f"{type(exc).__name__}: {exc}"
        self.exchanges.append(ex)
        return ex


async def exchange_on_stream(reader: Any, writer: Any, method: str, url: str, host: str, path: str, *,
                             headers: dict[str, str] | None = None, body: bytes = b"",
                             timeout: float = 30.0, limit: int = 1 << 20) -> Exchange:
    """One HTTP/1.1 request on an already open (TLS) stream, for checks that must know which TLS
    session carries the request (RFC 7030 §3.5 tls-unique). ``Connection: close``: the reply is
    read to EOF (at most ``limit`` bytes), a chunked body is de-chunked."""
    import asyncio

    hdrs = {"Host": host, "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    ex = Exchange(method, url, hdrs, body)
    sslobj = writer.get_extra_info("ssl_object")
    ex.tls_version = sslobj.version() if sslobj is not None else None
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    try:
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        raw = await asyncio.wait_for(_read_to_eof(reader, limit), timeout)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        ex.error = f"{type(exc).__name__}: {exc}"
        return ex
    finally:
        writer.close()
    top, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        ex.error = f"not an HTTP reply: {raw[:80]!r}"
        return ex
    ex.status, ex.reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
    ex.headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in header_lines) if k]
    ex.body = _dechunk(rest) if (ex.header("Transfer-Encoding") or "").lower() == "chunked" else rest
    return ex


async def _read_to_eof(reader: Any, limit: int) -> bytes:
    buf = bytearray()
    while len(buf) < limit:
        chunk = await reader.read(min(65536, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return bytes(out)
