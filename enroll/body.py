"""Bounded request bodies for the routes ``enroll`` serves itself (OCSP, the admin API).

A body must fit a cap (413, RFC 9110 §15.5.14, refused on the declared length before a byte is
buffered) and arrive within a deadline once the request head is in (408, RFC 9110 §15.5.9): a
client that sends a head and then trickles (or withholds) its body would otherwise hold a
connection and a handler for as long as it likes, and a few hundred of them fill a worker's
connection cap for every protocol. The EST and SCEP handlers apply the same rule with the same
deadline (``est.http.read_body``, ``scep.http.BODY_TIMEOUT``); they cannot import this module
(docs/ARCHITECTURE.md, "Layers": protocols never import ``enroll``).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

#: Seconds a client has to send its whole body once the head is in.
BODY_TIMEOUT = 30.0


class BodyError(Exception):
    """The body was refused before parsing; ``status`` is 413 or 408."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    async def respond(self, request: web.Request, response: web.Response | None = None) -> web.Response:
        """Send ``response`` (default: the detail as text/plain) and close the connection.

        The unread rest of the body is not waited for: aiohttp would otherwise linger after the
        response, reading it for up to ten more seconds, and keep the connection slot.
        """
        resp = response or web.Response(status=self.status, text=self.detail + "\n", content_type="text/plain")
        resp.headers["Connection"] = "close"
        resp.force_close()
        await resp.prepare(request)
        await resp.write_eof()
        request.protocol.force_close()
        return resp


async def read_body(request: web.Request, cap: int, timeout: float | None = None) -> bytes:
    """At most ``cap`` bytes, all received within ``timeout`` seconds (default
    :data:`BODY_TIMEOUT`); otherwise :class:`BodyError` 413 or 408."""
    if request.content_length is not None and request.content_length > cap:
        raise BodyError(413, f"request body larger than {cap} bytes")
    timeout = BODY_TIMEOUT if timeout is None else timeout
    chunks = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await request.content.read(min(65536, cap + 1 - len(chunks)))
                if not chunk:
                    break
                chunks += chunk
                if len(chunks) > cap:
                    raise BodyError(413, f"request body larger than {cap} bytes")
    except TimeoutError:
        raise BodyError(408, f"request body not received within {timeout:g} seconds") from None
    return bytes(chunks)
