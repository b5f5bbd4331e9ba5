"""Running the application on its listeners until SIGINT/SIGTERM, in one or several processes.

With ``workers > 1`` the parent reserves every address once (bound with SO_REUSEPORT, never
listening, so a busy port fails before any fork), and each worker binds and listens on its own
SO_REUSEPORT socket on that address: the kernel spreads new connections evenly over the workers
(a shared listening socket let the first awake worker take most of them). Crypto runs on each
event loop's thread, so cores are used by processes, not threads: an RSA-2048 signature blocks
its loop for about a millisecond. Invariants hold across workers because the
ledger enforces them, never in-process locks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp.http_exceptions
import aiohttp.web_response
from aiohttp import web

from enroll.app import IN_FLIGHT, InFlight, config_warnings, create_app, validate
from enroll.config import Config, Listen
from enroll.tls import server_context
from enroll.tls_openssl import OpenSSLTls, openssl_context

if TYPE_CHECKING:
    import ssl

    from ca.issuer import Issuer
    from ca.ledger import Ledger

log = logging.getLogger("enroll.server")

#: Longest request line accepted (a GET PKIOperation with a 4096-bit key and chain fits easily).
MAX_REQUEST_LINE = 64 * 1024

#: Exposure limits of every listener (README, "Security model"). aiohttp has no deadline for a
#: request head (slowloris) and keeps idle connections for an hour by default.
HEADER_TIMEOUT = 10.0  # seconds from connection (after the TLS handshake) to a complete request head
IDLE_TIMEOUT = 15.0  # keep-alive: an idle connection, or one dripping its next request head, closes
TLS_HANDSHAKE_TIMEOUT = 10.0
MAX_CONNECTIONS = 1024  # open connections per worker process; more are dropped at accept

#: A serial reserved this long ago and still not issued belongs to a request that crashed or
#: failed (signing takes milliseconds) or a process that stopped: it becomes ``abandoned`` (never
#: reused). Swept at start and every SWEEP_EVERY seconds (enroll.app.RESERVATION_TIMEOUT).
SWEEP_EVERY = 60.0

#: On SIGTERM, requests in flight get this long to finish (their bodies still read) before the
#: process stops; packaging/enroll.service waits longer (TimeoutStopSec).
DRAIN_TIMEOUT = 30.0

# No version disclosure: aiohttp would answer "Server: Python/3.x aiohttp/3.x" on every response,
# including the parser's own 400s, which never reach the application's signals.
aiohttp.web_response.SERVER_SOFTWARE = "enroll"  # type: ignore[attr-defined]


class _ClientErrorFilter(logging.Filter):
    """aiohttp logs every malformed request (line too long, bad header...) as an ERROR with a
    traceback and the first 100 bytes of the offending line, which may be a credential header.
    A client's bad request is not our error: one line at INFO, without the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, aiohttp.http_exceptions.HttpProcessingError):
            record.msg = json.dumps({"event": "http-bad-request", "status": exc.code, "error": type(exc).__name__})
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("aiohttp.server").addFilter(_ClientErrorFilter())


@dataclass
class ConnectionStats:
    """Per-process connection accounting (exposed for tests and logs)."""

    open: int = 0
    refused: int = 0
    expired: int = 0


STATS = ConnectionStats()

#: Connections still waiting for their first request head, oldest first: at the cap, the oldest
#: of these is evicted to make room (a slowloris fills the cap with exactly these).
_WAITING: dict[int, "GuardedProtocol"] = {}


class GuardedProtocol(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: a connection cap, and a deadline for the first
    request head (later heads are bounded by aiohttp's keep-alive timeout, which closes a
    connection that has not completed its next request in time)."""

    def __init__(self, inner: asyncio.Protocol, header_timeout: float, max_connections: int) -> None:
        self.inner = inner
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if STATS.open >= self.max_connections:
            if not _WAITING:
                STATS.refused += 1
                transport.abort()  # type: ignore[attr-defined]
                return
            oldest = _WAITING[next(iter(_WAITING))]
            oldest._expire()  # a connection that never sent a request head yields its place
            oldest.connection_lost(None)  # account for it now; asyncio's later call is a no-op
        STATS.open += 1
        self.counted = True
        self.timer = asyncio.get_running_loop().call_later(self.header_timeout, self._expire)
        _WAITING[id(self)] = self
        self.inner.connection_made(transport)

    def _expire(self) -> None:
        self._head_done()
        STATS.expired += 1
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    def _head_done(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        _WAITING.pop(id(self), None)

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            seen = self.tail + data
            if b"\r\n\r\n" in seen or b"\n\n" in seen:
                self._head_done()
                self.tail = b""
            else:
                self.tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.counted else None

    def pause_writing(self) -> None:
        if self.counted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.counted:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        if self.counted:
            self.counted = False
            STATS.open -= 1
            self.inner.connection_lost(exc)


class GuardedSite(web.SockSite):
    """A SockSite whose connections go through :class:`GuardedProtocol`."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, *, ssl_context: object | None,
                 header_timeout: float = HEADER_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=1024)  # type: ignore[arg-type]
        self.header_timeout = header_timeout
        self.max_connections = max_connections

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        layer = self._ssl_context
        if isinstance(layer, OpenSSLTls):  # [tls] engine = "pyopenssl": TLS terminated in the protocol
            self._server = await loop.create_server(
                lambda: layer.protocol(GuardedProtocol(server(), self.header_timeout, self.max_connections)),
                sock=self._sock, backlog=self._backlog)
            return
        tls = layer is not None
        self._server = await loop.create_server(
            lambda: GuardedProtocol(server(), self.header_timeout, self.max_connections),
            sock=self._sock, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls else None)


def tls_layer(config: Config) -> "ssl.SSLContext | OpenSSLTls":
    """The HTTPS listeners' TLS per ``[tls] engine``: Python's ssl, or pyOpenSSL (which can
    export RFC 9266 tls-exporter for PoP linking on TLS 1.3)."""
    if config.tls.engine == "pyopenssl":
        return OpenSSLTls(openssl_context(config), TLS_HANDSHAKE_TIMEOUT)
    return server_context(config)


@dataclass(frozen=True)
class Bound:
    """A listening socket and whether it speaks TLS."""

    sock: socket.socket
    tls: bool
    listen: Listen


def bind_all(config: Config, *, reserve_only: bool = False) -> list[Bound]:
    """Bind every configured listener (IPv6 sockets are v6-only, so ::1 and 127.0.0.1 coexist).

    ``reserve_only``: bind with SO_REUSEPORT and do not listen (the parent of workers; see
    :func:`worker_sockets`)."""
    out = []
    for tls, listens in ((True, config.server.https), (False, config.server.http)):
        for listen in listens:
            family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
            if reserve_only:
                sock = _reuse_port_socket(family, (listen.host, listen.port))
            else:
                sock = socket.create_server((listen.host, listen.port), family=family, backlog=1024,
                                            reuse_port=False, dualstack_ipv6=False)
            sock.setblocking(False)
            out.append(Bound(sock, tls, listen))
    return out


def _reuse_port_socket(family: socket.AddressFamily, address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def worker_sockets(reserved: list[Bound]) -> list[Bound]:
    """In a worker: its own listening SO_REUSEPORT socket on each reserved address (the
    parent's reservations are closed in this process)."""
    out = []
    for b in reserved:
        address = b.sock.getsockname()
        sock = _reuse_port_socket(b.sock.family, address)
        sock.listen(1024)
        sock.setblocking(False)
        b.sock.close()
        out.append(Bound(sock, b.tls, b.listen))
    return out


async def serve_sockets(config: Config, bound: list[Bound], ready: asyncio.Event | None = None) -> None:
    """Serve on already-bound sockets until a stop signal arrives."""
    app = create_app(config)
    # SCEP GET carries the whole PKIMessage in the query string: allow long request lines.
    # auto_decompress=False: a Content-Encoding body is never inflated (no zip bombs); the
    # application refuses it with 415 (enroll.app).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=30,
                           max_line_size=MAX_REQUEST_LINE, max_field_size=16384, max_headers=64,
                           keepalive_timeout=IDLE_TIMEOUT, auto_decompress=False)
    await runner.setup()
    ctx = tls_layer(config) if any(b.tls for b in bound) else None
    try:
        for b in bound:
            await GuardedSite(runner, b.sock, ssl_context=ctx if b.tls else None).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info(json.dumps({"event": "listening", "pid": os.getpid(),
                             "https": [str(b.listen) for b in bound if b.tls],
                             "http": [str(b.listen) for b in bound if not b.tls]}))
        if ready is not None:
            ready.set()
        from enroll.app import ISSUER

        sweeper = asyncio.create_task(_sweep_forever(app[ISSUER]))
        await stop.wait()
        sweeper.cancel()
        await drain(runner, app[IN_FLIGHT])
    finally:
        await runner.cleanup()


async def drain(runner: web.AppRunner, in_flight: "InFlight", timeout: float = DRAIN_TIMEOUT) -> None:
    """Stop without dropping an enrollment: close the listeners (a load balancer sends new
    connections elsewhere), let every request in flight finish, bodies still arriving included
    (aiohttp's own shutdown stops reading them), then return for the runner's cleanup."""
    for site in list(runner.sites):
        await site.stop()
    in_flight.draining = True
    if in_flight.count:
        log.info(json.dumps({"event": "draining", "pid": os.getpid(), "requests": in_flight.count}))
    try:
        await asyncio.wait_for(in_flight.idle(), timeout)
    except TimeoutError:
        log.warning(json.dumps({"event": "drain-timeout", "pid": os.getpid(), "requests": in_flight.count}))


async def _migrate(config: Config) -> None:
    from ca.ledger import Ledger

    ledger = Ledger(config.ledger_url)
    try:
        await ledger.migrate()
        await sweep_reservations(ledger)
    finally:
        await ledger.close()


async def sweep_reservations(ledger: "Ledger") -> None:
    """Mark stale reservations abandoned (see RESERVATION_TIMEOUT) and say so in the log."""
    import time

    from ca.errors import LedgerError

    from ca.ledger import NONCE_RETENTION_SECONDS

    try:
        await ledger.prune_auth_failures(time.time() - 86400)  # older than any throttle window
        await ledger.prune_nonces(time.time() - NONCE_RETENTION_SECONDS)  # RFC 8894 §3.2.1.5 replay window
        from enroll.app import RESERVATION_TIMEOUT

        done = await ledger.abandon_stale_reservations(time.time() - RESERVATION_TIMEOUT)
    except LedgerError as exc:
        log.warning(json.dumps({"event": "reservation-sweep-failed", "error": str(exc)}))
        return
    if done:
        log.warning(json.dumps({"event": "reservations-abandoned", "count": len(done),
                                "serials": [f"{issuer}:{serial}" for issuer, serial in done[:20]]}))


async def _sweep_forever(issuer: "Issuer") -> None:
    while True:
        await asyncio.sleep(SWEEP_EVERY)
        await sweep_reservations(issuer.ledger)
        await issuer.flush_refusal_summaries()  # the last sampled minute's summary, even when quiet


def run(config: Config, workers: int | None = None) -> None:
    """Validate, bind, and serve with ``workers`` processes (default: ``[server] workers``)."""
    validate(config)
    for warning in config_warnings(config):
        log.warning(json.dumps({"event": "config-warning", "warning": warning}))
    asyncio.run(_migrate(config))
    n = workers or config.server.workers
    bound = bind_all(config, reserve_only=n > 1)
    if n == 1:
        asyncio.run(serve_sockets(config, bound))
        return
    children: list[int] = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:  # worker
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 0
            try:
                asyncio.run(serve_sockets(config, worker_sockets(bound)))
            except BaseException:  # noqa: BLE001 - the worker must always exit here
                log.exception("worker failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        while True:
            try:
                _, st = os.waitpid(child, 0)
                status = status or (os.waitstatus_to_exitcode(st) if st else 0)
                break
            except InterruptedError:
                continue
        forward(signal.SIGTERM, None)  # one worker gone: stop the others too
    sys.exit(1 if status else 0)
