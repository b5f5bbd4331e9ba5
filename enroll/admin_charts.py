"""The admin page's charts (``GET /admin/api/v1/charts``): certificates issued per UTC day and
profile, valid certificates (:class:`ca.records.CertState`) expiring per week, refusals by reason
class, each counted by the ledger's database."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from ca.issuer import Issuer
from ca.ledger import CertState, audit_log, certificates, state_is
from ca.ratelimit import reason_class
from enroll.admin_views import iso

CHART_DAYS = 30
CHART_WEEKS = 13  # 91 days ahead


def _buckets(column: Any, edges: list[float]) -> list[Any]:
    """One ``count`` per [edges[i], edges[i+1]) of ``column``, computed by the database (portable
    SQL: SUM of CASE, as SQLite and PostgreSQL differ on date and floor functions)."""
    return [sa.func.sum(sa.case((sa.and_(column >= lo, column < hi), 1), else_=0)) for lo, hi in zip(edges, edges[1:])]


async def chart_data(issuer: Issuer, now: float) -> dict[str, Any]:
    """Aggregates for the admin page's charts, counted in the ledger."""
    c, a = certificates.c, audit_log.c
    today = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [today - dt.timedelta(days=CHART_DAYS - 1 - i) for i in range(CHART_DAYS)]
    day_edges = [d.timestamp() for d in days] + [(today + dt.timedelta(days=1)).timestamp()]
    ledger = issuer.ledger
    # The ledger has no aggregate queries of its own yet: read through its read path.
    rows: list[Any] = await ledger._read(sa.select(c.profile, *_buckets(c.issued_at, day_edges))  # noqa: SLF001
                                         .where(c.status == "issued", c.issued_at >= day_edges[0])
                                         .group_by(c.profile))
    per_day = {r[0]: [int(v or 0) for v in r[1:]] for r in rows}
    for name in issuer.profiles:
        per_day.setdefault(name, [0] * CHART_DAYS)
    week_edges = [now + i * 7 * 86400 for i in range(CHART_WEEKS + 1)]
    valid = sa.and_(c.status == "issued", state_is(CertState.VALID, now), c.not_after < week_edges[-1])
    row = (await ledger._read(sa.select(*_buckets(c.not_after, week_edges)).where(valid)))[0]  # noqa: SLF001
    expiring = [int(row[i] or 0) for i in range(CHART_WEEKS)]
    since = now - CHART_DAYS * 86400
    refusals: dict[str, int] = {}
    counted: list[Any] = await ledger._read(  # noqa: SLF001
        sa.select(a.reason, sa.func.count()).where(a.ok.is_(False), a.at >= since,
                                                   a.event != "refusals-suppressed").group_by(a.reason))
    for r in counted:
        cls = reason_class(r[0] or "")
        refusals[cls] = refusals.get(cls, 0) + int(r[1])
    summaries: list[Any] = await ledger._read(  # noqa: SLF001
        sa.select(a.detail).where(a.event == "refusals-suppressed", a.at >= since))
    for r in summaries:
        for key, n in (json.loads(r[0] or "{}").get("suppressed") or {}).items():
            cls = key.rsplit(" ", 1)[-1]
            refusals[cls] = refusals.get(cls, 0) + int(n)
    return {
        "days": [d.date().isoformat() for d in days],
        "issued_per_day": dict(sorted(per_day.items())),
        "weeks": [iso(t) for t in week_edges[:-1]],
        "expiring_per_week": expiring,
        "refusals": [{"reason": k, "count": v} for k, v in sorted(refusals.items(), key=lambda kv: (-kv[1], kv[0]))],
        "since": iso(since),
    }
