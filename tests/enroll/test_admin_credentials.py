"""One-time EST credentials through the admin API and page (issue 18): made in bulk (JSON or a CSV
download, the passwords in that answer only), listed without secrets, revoked; each enrolls once
over EST on the shipped ``factory`` label, for its own device only."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from enroll.pki import DevPKI
from tests.enroll.admin_helpers import AdminServer, admin_server
from tests.support import make_csr
from tests.enroll.test_admin_page import Browser, browser, chromium  # noqa: F401  (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPKI) -> Iterator[AdminServer]:
    with admin_server(tmp_path_factory.mktemp("admin-cred"), dev_pki) as s:
        yield s


def factory_enroll(srv: AdminServer, user: str, password: str, serial_number: str, cn: str = "dev") -> int:
    csr, _ = make_csr(cn, extra_attrs=[x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number)])
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    status, _, _ = srv.call("POST", "/.well-known/est/factory/simpleenroll", token=None,
                            raw=base64.b64encode(csr.public_bytes(serialization.Encoding.DER)),
                            headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {auth}"})
    return status


def factory_issued(srv: AdminServer) -> int:
    status, page = srv.api("GET", "/certificates?profile=factory&limit=500")
    assert status == 200
    return len(page["items"])


def test_credentials_made_listed_used_once_and_revoked(srv: AdminServer) -> None:
    status, made = srv.api("POST", "/credentials", {"profile": "factory", "devices": ["API-0001", "API-0002"],
                                                    "ttl": "1d"})
    assert status == 201, made
    one, two = made["items"]
    assert one["device"] == "API-0001" and one["password"] and one["user"] == one["id"] and one["uses_left"] == 1
    status, page = srv.api("GET", "/credentials?unused=1")
    listed = {c["id"]: c for c in page["items"]}
    assert {one["id"], two["id"]} <= set(listed) and all("password" not in c for c in page["items"])

    before = factory_issued(srv)
    assert factory_enroll(srv, one["user"], one["password"], "API-0002") == 403  # another device's name
    assert factory_issued(srv) == before
    assert factory_enroll(srv, one["user"], one["password"], "API-0001") == 200
    assert factory_enroll(srv, one["user"], one["password"], "API-0001", cn="again") == 401
    assert factory_issued(srv) == before + 1

    status, revoked = srv.api("POST", f"/credentials/{two['id']}/revoke", {})
    assert status == 200 and revoked["revoked_at"]
    assert factory_enroll(srv, two["user"], two["password"], "API-0002") == 401
    assert factory_issued(srv) == before + 1
    assert srv.api("POST", f"/credentials/{two['id']}/revoke", {})[0] == 409
    assert srv.api("POST", "/credentials/nope/revoke", {})[0] == 404
    status, page = srv.api("GET", "/credentials?unused=1")
    assert not {one["id"], two["id"]} & {c["id"] for c in page["items"]}
    status, page = srv.api("GET", "/audit?event=credential-revoke&limit=1")
    assert page["items"][0]["requester"] == "operator:token:ops"


def test_credentials_as_a_csv_download(srv: AdminServer) -> None:
    status, headers, body = srv.call("POST", "/admin/api/v1/credentials?format=csv",
                                     {"profile": "factory", "device": "CSV-0001", "uses": 2})
    assert status == 201 and headers["Content-Type"].startswith("text/csv")
    assert "attachment" in headers["Content-Disposition"] and headers["Cache-Control"] == "no-store"
    [row] = list(csv.DictReader(io.StringIO(body.decode())))
    assert row["device"] == "CSV-0001" and row["uses"] == "2" and row["profile"] == "factory"
    assert factory_enroll(srv, row["user"], row["password"], "CSV-0001") == 200


@pytest.mark.parametrize("body,code", [
    ({"devices": ["X-1"]}, 400), ({"profile": "nope", "devices": ["X-1"]}, 404),
    ({"profile": "factory"}, 400), ({"profile": "factory", "devices": ["X-1"], "ttl": "soon"}, 400),
    ({"profile": "factory", "devices": ["X-1"], "bind": "O"}, 409),
    ({"profile": "factory", "devices": ["X-1", "X-1"]}, 409),
])
def test_bad_credential_requests_make_nothing(srv: AdminServer, body: dict[str, object], code: int) -> None:
    count = len(srv.api("GET", "/credentials")[1]["items"])
    status, _ = srv.api("POST", "/credentials", body)
    assert status == code
    assert len(srv.api("GET", "/credentials")[1]["items"]) == count


@pytest.mark.interop
async def test_credentials_view_creates_lists_and_revokes_in_chromium(browser: Browser, srv: AdminServer,
                                                                       tmp_path: Path) -> None:
    from tests.enroll.admin_helpers import TOKEN

    await browser.send("Page.navigate", url=f"{srv.base_https}/admin/")
    await browser.wait_for("document.getElementById('login') && !document.getElementById('login').hidden")
    await browser.type("#token", TOKEN)
    await browser.click("#login-btn")
    # the overview renders first (its view would replace one opened before it is done)
    await browser.wait_for("!document.getElementById('nav').hidden && document.getElementById('total-valid')")
    await browser.click("nav a[href='#/credentials']")
    await browser.wait_for("document.getElementById('cred-form')")
    await browser.type("#cred-devices", "PAGE-0001\nPAGE-0002\n<img src=x onerror=alert(1)>")
    await browser.click("#cred-create")
    await browser.wait_for("document.getElementById('message').textContent.includes('3 credential(s) made')")
    await browser.wait_for("document.getElementById('cred-download')")
    status, page = srv.api("GET", "/credentials?unused=1")
    mine = {c["device"]: c["id"] for c in page["items"] if c["device"].startswith(("PAGE-", "<img"))}
    assert len(mine) == 3
    assert await browser.eval("document.querySelectorAll('#credentials img').length") == 0  # text, never HTML
    hostile = mine["<img src=x onerror=alert(1)>"]
    await browser.wait_for(f"document.querySelector('#credentials tr[data-id=\"{hostile}\"] button.revoke-cred')")
    await browser.click(f"#credentials tr[data-id='{hostile}'] button.revoke-cred")
    await browser.wait_for("document.getElementById('message').textContent.includes('revoked')")
    status, page = srv.api("GET", "/credentials?unused=1")
    assert hostile not in {c["id"] for c in page["items"]}
    assert browser.problems() == []
