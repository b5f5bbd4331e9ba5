"""Running the application on its listeners until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import signal

from aiohttp import web

from enroll.app import create_app, validate
from enroll.config import Config
from enroll.tls import server_context

log = logging.getLogger("enroll.server")


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    """Serve HTTPS and HTTP listeners until a stop signal arrives."""
    validate(config)
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    ctx = server_context(config) if config.server.https else None
    sites: list[web.BaseSite] = []
    for listen in config.server.https:
        sites.append(web.TCPSite(runner, listen.host, listen.port, ssl_context=ctx, backlog=1024))
    for listen in config.server.http:
        sites.append(web.TCPSite(runner, listen.host, listen.port, backlog=1024))
    try:
        for site in sites:
            await site.start()
        log.info(json.dumps({"event": "listening", "https": [str(x) for x in config.server.https],
                             "http": [str(x) for x in config.server.http]}))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await runner.cleanup()
