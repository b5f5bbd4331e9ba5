"""Bounded request bodies for the routes ``enroll`` serves itself (OCSP, the admin API).

A body must fit a cap (413, RFC 9110 §15.5.14, refused on the declared length before a byte is
buffered) and arrive within a deadline once the request head is in (408, RFC 9110 §15.5.9): a
client that sends a head and then trickles (or withholds) its body would otherwise hold a
connection and a handler for as long as it likes, and a few hundred of them fill a worker's
connection cap for every protocol. The bytes are read by EST's reader (``est.http.read_body``,
which the protocols cannot import from here: docs/ARCHITECTURE.md, "Layers", protocols never
import ``enroll``); this module turns its refusals into :class:`BodyError`. SCEP applies the same
deadline (``scep.http.BODY_TIMEOUT``).
"""

from __future__ import annotations

from aiohttp import web

from est import http as est_http
from est.errors import EstError

#: Seconds a client has to send its whole body once the head is in (EST's deadline).
BODY_TIMEOUT = est_http.BODY_TIMEOUT


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
    :data:`BODY_TIMEOUT`); otherwise :class:`BodyError` 413 (RFC 9110 §15.5.14) or 408
    (RFC 9110 §15.5.9)."""
    try:
        return await est_http.read_body(request, cap, BODY_TIMEOUT if timeout is None else timeout)
    except EstError as exc:
        raise BodyError(exc.status, exc.detail) from None
