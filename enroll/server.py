"""Running the application on its listeners until SIGINT/SIGTERM, in one or several processes.

With ``workers > 1`` the parent binds every listening socket once and forks the workers, which
all accept on the shared sockets (crypto runs on each event loop's thread, so cores are used by
processes, not threads; DESIGN.md, platform notes). Invariants hold across workers because the
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

from aiohttp import web

from enroll.app import create_app, validate
from enroll.config import Config, Listen
from enroll.tls import server_context

log = logging.getLogger("enroll.server")

#: Longest request line accepted (a GET PKIOperation with a 4096-bit key and chain fits easily).
MAX_REQUEST_LINE = 64 * 1024


@dataclass(frozen=True)
class Bound:
    """A listening socket and whether it speaks TLS."""

    sock: socket.socket
    tls: bool
    listen: Listen


def bind_all(config: Config) -> list[Bound]:
    """Bind every configured listener (IPv6 sockets are v6-only, so ::1 and 127.0.0.1 coexist)."""
    out = []
    for tls, listens in ((True, config.server.https), (False, config.server.http)):
        for listen in listens:
            family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
            sock = socket.create_server((listen.host, listen.port), family=family, backlog=1024, reuse_port=False,
                                        dualstack_ipv6=False)
            sock.setblocking(False)
            out.append(Bound(sock, tls, listen))
    return out


async def serve_sockets(config: Config, bound: list[Bound], ready: asyncio.Event | None = None) -> None:
    """Serve on already-bound sockets until a stop signal arrives."""
    app = create_app(config)
    # SCEP GET carries the whole PKIMessage in the query string: allow long request lines.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=30,
                           max_line_size=MAX_REQUEST_LINE, max_field_size=16384)
    await runner.setup()
    ctx = server_context(config) if any(b.tls for b in bound) else None
    try:
        for b in bound:
            await web.SockSite(runner, b.sock, ssl_context=ctx if b.tls else None).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info(json.dumps({"event": "listening", "pid": os.getpid(),
                             "https": [str(b.listen) for b in bound if b.tls],
                             "http": [str(b.listen) for b in bound if not b.tls]}))
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await runner.cleanup()


async def _migrate(config: Config) -> None:
    from ca.ledger import Ledger

    ledger = Ledger(config.ledger_url)
    try:
        await ledger.migrate()
    finally:
        await ledger.close()


def run(config: Config, workers: int | None = None) -> None:
    """Validate, bind, and serve with ``workers`` processes (default: ``[server] workers``)."""
    validate(config)
    asyncio.run(_migrate(config))
    n = workers or config.server.workers
    bound = bind_all(config)
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
                asyncio.run(serve_sockets(config, bound))
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
