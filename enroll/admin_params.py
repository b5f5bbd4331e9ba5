"""Reading the admin API's requests: path and query parameters, JSON bodies and their fields;
every malformed value is a 400 with a JSON error naming it."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from aiohttp import web

from ca.api import REASONS
from ca.serials import parse_serial
from enroll.admin_views import json_error
from enroll.body import read_body

MAX_LIMIT = 500
MAX_BODY = 64 * 1024  # admin requests are small JSON objects


def serial_param(text: str) -> int:
    """A serial number in a path (``ca.serials.parse_serial``), else 400."""
    try:
        return parse_serial(text)
    except ValueError:
        raise json_error(400, f"{text!r} is not a hex serial number") from None


def int_param(request: web.Request, name: str, default: int | None, lo: int = 1, hi: int = MAX_LIMIT) -> int | None:
    """An integer query parameter within [lo, hi], ``default`` when absent, else 400."""
    v = request.query.get(name)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        raise json_error(400, f"{name} must be an integer") from None
    if not lo <= n <= hi:
        raise json_error(400, f"{name} must be between {lo} and {hi}")
    return n


def time_param(request: web.Request, name: str) -> float | None:
    """An ISO 8601 (RFC 3339) query parameter as a timestamp (UTC unless a zone is given), else 400."""
    v = request.query.get(name)
    if not v:
        return None
    try:
        d = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise json_error(400, f"{name} must be an ISO 8601 date or time, e.g. 2026-01-31T12:00:00Z") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return d.timestamp()


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (at most MAX_BODY bytes; none is ``{}``), else 400."""
    if not request.can_read_body:
        return {}
    raw = await read_body(request, MAX_BODY)  # BodyError: answered by the admin API's endpoint wrapper
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise json_error(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise json_error(400, "the body must be a JSON object")
    return data


def reason_field(body: dict[str, Any], default: str) -> str:
    """``reason``: an RFC 5280 §5.3.1 reason code name (ca.api.REASONS), else 400."""
    reason = body.get("reason", default)
    if not isinstance(reason, str) or reason not in REASONS:
        raise json_error(400, f"reason must be one of {', '.join(REASONS)}")
    return reason
