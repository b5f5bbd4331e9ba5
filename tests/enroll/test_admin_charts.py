"""The admin page's charts (issue 17): issuance per day by profile (30 days), certificates
expiring per week (13 weeks), refusals by reason class, as inline SVG drawn from GET
/admin/api/v1/charts; checked against the ledger and, in headless chromium, bar by bar against
the API's numbers."""

from __future__ import annotations

import base64
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import pkcs7

from ca.ratelimit import reason_class
from enroll.pki import DevPKI
from tests.enroll.admin_helpers import TOKEN, AdminServer, admin_server
from tests.enroll.test_admin_page import Browser, chromium, connected_browser  # noqa: F401 - fixture
from tests.support import make_csr

DAY = 86400


def _serial(body: bytes) -> str:
    return format(pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))[0].serial_number, "x")


@pytest.fixture
def fleet(tmp_path: Path, dev_pki: DevPKI) -> Iterator[tuple[AdminServer, dict[str, Any]]]:
    """Five certificates (gateway x3, sensor x2), one of them issued three days ago, two expiring
    in 10 and 40 days; two refused requests."""
    with admin_server(tmp_path / "server", dev_pki) as srv:
        serials = {}
        for profile, cn in (("gateway", "gw-1"), ("gateway", "gw-2"), ("gateway", "gw-3"), ("sensor", "s-1"),
                            ("sensor", "s-2")):
            status, body = srv.est_enroll(profile, make_csr(cn)[0])
            assert status == 200, body
            serials[cn] = _serial(body)
        now = time.time()
        db = srv.config.ledger_url.removeprefix("sqlite:///")
        with sqlite3.connect(db, timeout=30) as conn:
            conn.execute("UPDATE certificates SET issued_at = ? WHERE serial = ?", (now - 3 * DAY, serials["gw-3"]))
            conn.execute("UPDATE certificates SET not_after = ? WHERE serial = ?", (now + 10 * DAY, serials["gw-1"]))
            conn.execute("UPDATE certificates SET not_after = ? WHERE serial = ?", (now + 40 * DAY, serials["s-1"]))
        wrong = base64.b64encode(f"{srv.init.est_user}:wrong-password".encode()).decode()
        status, _, _ = srv.call("POST", "/.well-known/est/gateway/simpleenroll", token=None, raw=b"AAAA",
                                headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {wrong}"})
        assert status in (400, 401)
        status, _, _ = srv.call("POST", "/.well-known/est/gateway/simpleenroll", token=None, raw=b"AAAA",
                                headers={"Content-Type": "text/plain"})
        assert status == 415
        yield srv, {"serials": serials, "db": db}


def _ledger_refusals(db: str) -> Counter[str]:
    with sqlite3.connect(db, timeout=30) as conn:
        rows = conn.execute("SELECT reason FROM audit WHERE ok = 0 AND event != 'refusals-suppressed'").fetchall()
    return Counter(reason_class(r or "") for (r,) in rows)


def test_chart_data_counts_what_the_ledger_holds(fleet: tuple[AdminServer, dict[str, Any]]) -> None:
    srv, facts = fleet
    status, c = srv.api("GET", "/charts")
    assert status == 200, c
    assert len(c["days"]) == 30 and len(c["weeks"]) == 13 and len(c["expiring_per_week"]) == 13
    gw, sensor = c["issued_per_day"]["gateway"], c["issued_per_day"]["sensor"]
    assert gw[-1] == 2 and gw[-4] == 1 and sum(gw) == 3
    assert sensor[-1] == 2 and sum(sensor) == 2
    assert set(c["issued_per_day"]) >= {"gateway", "sensor", "router", "mdm"}  # every profile, zeros too
    assert sum(c["issued_per_day"]["router"]) == 0
    assert c["expiring_per_week"][1] == 1 and c["expiring_per_week"][5] == 1 and sum(c["expiring_per_week"]) == 2
    refusals = {r["reason"]: r["count"] for r in c["refusals"]}
    assert refusals == dict(_ledger_refusals(facts["db"])) and sum(refusals.values()) >= 2
    assert "415" in refusals
    # revoking takes a certificate out of the expiring chart (it will never expire in use)
    status, _ = srv.api("POST", f"/certificates/{facts['serials']['gw-1']}/revoke", {"reason": "superseded"})
    assert status == 200
    assert srv.api("GET", "/charts")[1]["expiring_per_week"][1] == 0


@pytest.fixture
async def chart_browser(chromium: tuple[str, Path], fleet: tuple[AdminServer, dict[str, Any]],  # noqa: F811
                        tmp_path: Path) -> AsyncIterator[Browser]:
    srv, _ = fleet
    async with connected_browser(chromium, srv, tmp_path) as b:
        yield b


BARS = """(id => Array.from(document.querySelectorAll('#' + id + ' rect.bar')).map(r => ({
  label: r.getAttribute('data-label'), series: r.getAttribute('data-series') || '',
  count: Number(r.getAttribute('data-count')), height: r.getBBox().height, width: r.getBBox().width})))"""


@pytest.mark.interop
async def test_charts_in_chromium_draw_the_api_numbers(chart_browser: Browser,
                                                       fleet: tuple[AdminServer, dict[str, Any]]) -> None:
    srv, _ = fleet
    browser = chart_browser
    await browser.send("Page.navigate", url=f"{srv.base_https}/admin/")
    await browser.wait_for("document.getElementById('login') && !document.getElementById('login').hidden")
    await browser.type("#token", TOKEN)
    await browser.click("#login-btn")
    await browser.wait_for("document.querySelector('#chart-issued rect.bar') && "
                           "document.querySelector('#chart-refusals rect.bar')")
    c = srv.api("GET", "/charts")[1]

    issued = await browser.eval(f"{BARS}('chart-issued')")
    want = {(day, profile, n) for profile, values in c["issued_per_day"].items()
            for day, n in zip(c["days"], values) if n}
    assert {(b["label"], b["series"], b["count"]) for b in issued} == want
    assert len(issued) == len(want)
    expiring = await browser.eval(f"{BARS}('chart-expiring')")
    assert [b["count"] for b in expiring] == [n for n in c["expiring_per_week"] if n]
    assert [b["label"] for b in expiring] == [w[:10] for w, n in zip(c["weeks"], c["expiring_per_week"]) if n]
    refused = await browser.eval(f"{BARS}('chart-refusals')")
    assert [(b["label"], b["count"]) for b in refused] == [(r["reason"], r["count"]) for r in c["refusals"]]
    # bar lengths are proportional to the numbers (one scale per chart)
    for bars, size in ((issued, "height"), (expiring, "height"), (refused, "width")):
        scales = {round(b[size] / b["count"], 3) for b in bars}
        assert max(scales) - min(scales) < 0.01 * max(scales), (size, bars)
    assert browser.problems() == []


async def test_chart_queries_run_on_sqlite_and_postgresql(issuer: Any) -> None:
    from ca.api import Issued
    from enroll.admin_charts import chart_data
    from tests.support import request

    outcome = await issuer.issue(request(make_csr("chart-1")[0]))
    assert isinstance(outcome, Issued)
    for reason in ("badRequest: one", "badRequest: two", "401: no credentials"):
        await issuer.ledger.audit(event="issue", ok=False, channel="est", profile="gateway", requester=None,
                                  reason=reason, csr_sha256=None, serial=None, detail=None)
    await issuer.ledger.audit(event="refusals-suppressed", ok=False, channel="est", profile=None, requester=None,
                              reason="", csr_sha256=None, serial=None,
                              detail={"suppressed": {"est-enroll 401": 5}, "total": 5})
    c = await chart_data(issuer, time.time())
    assert c["issued_per_day"]["gateway"][-1] == 1 and sum(c["expiring_per_week"]) == 0
    assert c["refusals"] == [{"reason": "401", "count": 6}, {"reason": "badRequest", "count": 2}]
