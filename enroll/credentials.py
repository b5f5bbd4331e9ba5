"""One-time EST enrollment credentials as operators handle them: device ranges for a batch,
the CSV a factory line loads, the JSON the admin API returns (the core keeps only digests:
:meth:`ca.issuer.Issuer.create_credentials`)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Sequence
from typing import Any

from ca.ledger import CredentialRecord

CSV_HEADER = ("user", "password", "profile", "bind", "device", "uses", "expires_at")

_TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")


def device_range(first: str, count: int) -> list[str]:
    """``count`` consecutive device names from ``first``, whose trailing number counts up with its
    width kept (``SN-0098`` x 3: ``SN-0098``, ``SN-0099``, ``SN-0100``)."""
    if count == 1:
        return [first]
    m = _TRAILING_NUMBER.match(first)
    if m is None:
        raise ValueError(f"--count needs a device name ending in a number, not {first!r}")
    prefix, digits = m.group(1), m.group(2)
    start = int(digits)
    return [f"{prefix}{start + i:0{len(digits)}d}" for i in range(count)]


def iso(ts: float | None) -> str | None:
    """UTC ISO 8601 with a Z, or None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def credential_json(rec: CredentialRecord, secret: str | None = None) -> dict[str, Any]:
    """One credential for the admin API (the password only when it was just made)."""
    out: dict[str, Any] = {
        "id": rec.id, "profile": rec.profile, "bind": rec.bind, "device": rec.device, "uses": rec.uses,
        "uses_left": rec.uses_left, "created_at": iso(rec.created_at), "expires_at": iso(rec.expires_at),
        "last_used_at": iso(rec.last_used_at), "revoked_at": iso(rec.revoked_at), "created_by": rec.created_by}
    if secret is not None:
        out["user"] = rec.id
        out["password"] = secret
    return out


def _cell(value: object) -> str:
    """A CSV cell that a spreadsheet will not run as a formula."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def credentials_csv(made: Sequence[tuple[CredentialRecord, str]]) -> str:
    """The CSV a provisioning station reads: one row per device, HTTP Basic user and password."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for rec, secret in made:
        w.writerow([_cell(v) for v in (rec.id, secret, rec.profile, rec.bind, rec.device, rec.uses,
                                       iso(rec.expires_at))])
    return buf.getvalue()
