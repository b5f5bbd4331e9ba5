"""SCEP over HTTP with aiohttp (RFC 8894 §4): the only place SCEP errors become responses.

Routes: every configured base path (``/scep``, ``/cgi-bin/pkiclient.exe``,
``/certsrv/mscep/mscep.dll`` by default), optionally followed by ``/<profile>`` and by the
suffixes clients hard-code (:func:`profile_from_tail`). GET and POST; HTTP/1.0 and a missing
Content-Type are fine; GET ``message=`` is decoded by :mod:`scep.quirks`.

Status codes: 200 for every answer, including signed CertRep FAILUREs; 400 only for input that
never became a pkiMessage (or an unknown operation); 404 for an unknown profile or an operation
the profile does not offer (GetNextCACert without a rollover CA).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from scep.cms import MAX_MESSAGE_BYTES
from scep.answers import Reply
from scep.errors import ScepDecodeError
from scep.quirks import decode_get_message, raw_query_param
from scep.service import ScepService, UnknownProfile

log = logging.getLogger("enroll.scep")

#: Seconds a client has to send a POST body once the head is in (slow-POST attacks).
BODY_TIMEOUT = 30.0

SERVICE = web.AppKey("scep_service", ScepService)

#: Path tails that clients hard-code after the SCEP base path (RFC 8894 §4.1; old clients append them).
HARD_CODED_SUFFIXES = ("/cgi-bin/pkiclient.exe", "/certsrv/mscep/mscep.dll", "/pkiclient.exe")


def profile_from_tail(tail: str) -> str | None:
    """The profile segment of what follows a base path, ignoring hard-coded client suffixes.

    Clients: Cisco IOS and EJBCA-style URLs append ``/pkiclient.exe``; NDES clients
    ``/certsrv/mscep/mscep.dll``; sscep users often configure ``/cgi-bin/pkiclient.exe``.
    ``""`` -> default profile; ``"/router/pkiclient.exe"`` -> ``"router"``; a trailing
    slash is ignored. Raises :class:`UnknownProfile` for deeper paths.
    """
    tail = tail.rstrip("/")
    for suffix in HARD_CODED_SUFFIXES:
        if tail.endswith(suffix):
            tail = tail[: -len(suffix)].rstrip("/")
            break
    if not tail:
        return None
    segment = tail.lstrip("/")
    if "/" in segment or not segment:
        raise UnknownProfile(segment)
    return segment


def operation_of(raw_query: str) -> str | None:
    """``operation`` from the raw query, case-insensitive in name and value (old Cisco images)."""
    value = raw_query_param(raw_query, "operation")
    if value is None:
        return None
    from urllib.parse import unquote

    return unquote(value).strip().lower()


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


def _reply(reply: Reply) -> web.Response:
    return web.Response(body=reply.body, content_type=reply.content_type)


async def handle(request: web.Request) -> web.StreamResponse:
    """Every SCEP operation on every SCEP path."""
    service = request.app[SERVICE]
    try:
        profile = service.profile(profile_from_tail(request.match_info.get("tail", "")))
    except UnknownProfile as exc:
        return _text(404, f"no SCEP profile {str(exc)!r}")
    raw_query = request.query_string
    operation = operation_of(raw_query)
    try:
        if operation == "getcacaps":
            caps = await service.capabilities(profile)
            return web.Response(text="\n".join(caps), content_type="text/plain")
        if operation == "getcacert":
            return _reply(await service.ca_certificates(profile))
        if operation == "getnextcacert":
            nxt = await service.next_ca_certificates(profile)
            if nxt is None:
                return _text(404, "no rollover CA certificate")
            return _reply(nxt)
        if operation == "pkioperation":
            if request.method == "POST":
                # 413 on the declared length, before waiting for (or buffering) any of the body;
                # a body without a length is still capped by the application's client_max_size.
                if request.content_length is not None and request.content_length > MAX_MESSAGE_BYTES:
                    return _text(413, f"request body larger than {MAX_MESSAGE_BYTES} bytes")
                try:
                    der = await asyncio.wait_for(request.read(), BODY_TIMEOUT)
                except asyncio.TimeoutError:
                    return _text(408, f"request body not received within {BODY_TIMEOUT:g} seconds")
                if not der:
                    # PyScep posts with an (empty) message= in the query as well: body wins
                    der = decode_get_message(raw_query) or b""
            else:
                decoded = decode_get_message(raw_query)
                if decoded is None:
                    return _text(400, "PKIOperation needs a message")
                der = decoded
            peer = request.remote
            return _reply(await service.pki_operation(profile, der, peer))
    except ScepDecodeError as exc:
        log.info(json.dumps({"event": "scep-undecodable", "profile": profile.name, "detail": exc.detail}))
        return _text(400, exc.public_text)
    except ValueError as exc:  # base64 of a GET message
        return _text(400, str(exc))
    return _text(400, "unknown or missing operation")


def mount_routes(app: web.Application, service: ScepService, paths: tuple[str, ...]) -> None:
    """Register GET/POST on each base path and below it."""
    app[SERVICE] = service
    for base in paths:
        for path in (base, base + "{tail:/.*}"):
            app.router.add_route("GET", path, handle)
            app.router.add_route("POST", path, handle)


async def post_webhook(url: str, payload: Mapping[str, Any], timeout: float, token: str | None) -> bool:
    """Ask an authorization webhook; True only for HTTP 200 with JSON ``{"allow": true}``.

    Anything else (timeout, error status, other JSON, a truthy non-boolean) denies: fail closed.
    """
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.post(url, data=json.dumps(payload), headers=headers) as resp:
                if resp.status != 200:
                    return False
                body = await resp.json(content_type=None)
    except Exception as exc:  # noqa: BLE001
        log.warning(json.dumps({"event": "scep-webhook-error", "error": exc.__class__.__name__}))
        return False
    return isinstance(body, dict) and body.get("allow") is True
