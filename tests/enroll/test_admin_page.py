"""The admin page in a real browser: Debian's headless chromium, driven over the DevTools protocol
(aiohttp websocket, no browser download): sign in, approve a pending request, revoke a
certificate with a reason and a confirmation; the results are checked through the API, the CRL
and OCSP. Skipped without chromium unless ENROLL_REQUIRE_INTEROP=1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509 import ocsp as xocsp
from cryptography.x509.oid import NameOID

from enroll.pki import DevPKI
from tests.enroll.admin_helpers import TOKEN, AdminServer, admin_server
from tests.support import make_csr, require_tool

pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


class Browser:
    """One chromium page over the DevTools protocol (JSON messages on a websocket)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._id = 0
        self.events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        my_id = self._id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = await asyncio.wait_for(self.ws.receive_json(), timeout=20)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))
            self.events.append(msg)
        raise TimeoutError(method)

    async def eval(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        probe = f"(() => {{ const v = ({expression}); return v instanceof Node ? true : v; }})()"
        while time.monotonic() < deadline:
            value = await self.eval(probe)
            if value:
                return value
            await asyncio.sleep(0.05)
        text = await self.eval("document.body.innerText")
        raise AssertionError(f"timed out waiting for {expression!r}; page says: {text[:1500]}")

    async def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element's first line box (Input.dispatchMouseEvent)."""
        box = await self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e || e.disabled) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getClientRects()[0];"
            " return r && r.width ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    async def type(self, selector: str, text: str) -> None:
        await self.wait_for(f"document.querySelector({json.dumps(selector)})")
        await self.eval(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)

    def problems(self) -> list[str]:
        """Uncaught exceptions, console errors and CSP violations seen so far."""
        out = []
        for e in self.events:
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(e["params"]["exceptionDetails"])[:300])
            if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error":
                out.append(json.dumps(e["params"]["args"])[:300])
            if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error":
                entry = e["params"]["entry"]
                # the sign-in probe's expected 401 is logged by chromium as a network error
                if not (entry.get("source") == "network" and "401" in entry.get("text", "")):
                    out.append(entry.get("text", "")[:300])
        return out


def _spki_pin(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    path = require_tool("chromium")
    yield path, tmp_path / "chromium-profile"


async def open_browser(binary: str, profile: Path, tls_cert_pem: bytes, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    profile.mkdir()
    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--disable-extensions", "--no-default-browser-check",
            f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            # trust exactly the test server's key (its CA is not in chromium's store)
            f"--ignore-certificate-errors-spki-list={_spki_pin(tls_cert_pem)}", "about:blank"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited: {log.read_text()[-2000:]}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.05)
    port = int(port_file.read_text().split()[0])
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                pages = [t for t in await resp.json() if t["type"] == "page"]
            if pages:
                return proc, pages[0]["webSocketDebuggerUrl"]
            await asyncio.sleep(0.05)
    raise RuntimeError("chromium has no page target")


def stop_browser(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def srv(tmp_path: Path, dev_pki: DevPKI) -> Iterator[AdminServer]:
    with admin_server(tmp_path / "server", dev_pki) as s:
        yield s


@contextlib.asynccontextmanager
async def connected_browser(chromium: tuple[str, Path], srv: AdminServer, tmp_path: Path) -> AsyncIterator[Browser]:
    """Headless chromium trusting ``srv``'s TLS certificate, driven over the DevTools protocol
    with the Page, Runtime and Log domains on; stopped on exit."""
    binary, profile = chromium
    tls_pem = (srv.init.certs_dir / "tls-server.pem").read_bytes()
    proc, ws_url = await open_browser(binary, profile, tls_pem, tmp_path / "chromium.log")
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
            b = Browser(ws)
            for domain in ("Page", "Runtime", "Log"):
                await b.send(f"{domain}.enable")
            yield b
    finally:
        stop_browser(proc)


@pytest.fixture
async def browser(chromium: tuple[str, Path], srv: AdminServer, tmp_path: Path) -> AsyncIterator[Browser]:
    async with connected_browser(chromium, srv, tmp_path) as b:
        yield b


def _est_cert(body: bytes) -> x509.Certificate:
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))[0]


async def test_sign_in_approve_and_revoke_in_chromium(browser: Browser, srv: AdminServer, dev_pki: DevPKI) -> None:
    waiting_csr, _ = make_csr("waiting-laptop")
    assert srv.est_enroll("manual", waiting_csr)[0] == 202
    unwanted_csr, _ = make_csr("unwanted-laptop")
    assert srv.est_enroll("manual", unwanted_csr)[0] == 202
    status, body = srv.est_enroll("gateway", make_csr("doomed-gateway")[0])
    assert status == 200
    doomed = _est_cert(body)
    serial = format(doomed.serial_number, "x")

    # sign in
    await browser.send("Page.navigate", url=f"{srv.base_https}/admin/")
    await browser.wait_for("document.getElementById('login') && !document.getElementById('login').hidden")
    await browser.type("#token", "not-the-token")
    await browser.click("#login-btn")
    await browser.wait_for("document.getElementById('message').textContent.includes('not accepted')")
    await browser.type("#token", TOKEN)
    await browser.click("#login-btn")
    await browser.wait_for("!document.getElementById('nav').hidden && document.getElementById('total-valid')")
    assert "token:ops" in await browser.eval("document.getElementById('who').textContent")
    assert await browser.eval("document.getElementById('pending-count').textContent") == "2"

    # approve the pending request
    await browser.click("nav a[href='#/pending']")
    await browser.wait_for("document.querySelectorAll('#pending tbody tr').length === 2")
    status, page = srv.api("GET", "/pending")
    ids = {p["subject"]: p["id"] for p in page["items"]}
    waiting, unwanted = ids["CN=waiting-laptop"], ids["CN=unwanted-laptop"]
    await browser.click(f"#pending tr[data-id='{waiting}'] button.approve")
    await browser.wait_for("document.getElementById('message').textContent.includes('approved')")
    await browser.wait_for("document.querySelectorAll('#pending tbody tr').length === 1")
    status, page = srv.api("GET", "/pending?status=all")
    [req] = [p for p in page["items"] if p["id"] == waiting]
    assert req["status"] == "approved" and req["decided_by"] == "operator:token:ops"
    status, body = srv.est_enroll("manual", waiting_csr)  # the device's next poll gets its certificate
    assert status == 200 and _est_cert(body).subject == waiting_csr.subject

    # reject the other one with a reason
    await browser.click(f"#pending tr[data-id='{unwanted}'] button.reject")
    await browser.type(f"#reject-reason-{unwanted}", "not one of ours")
    await browser.click(f"#reject-confirm-{unwanted}")
    await browser.wait_for("document.getElementById('no-pending')")
    status, page = srv.api("GET", "/pending?status=rejected")
    [req] = [p for p in page["items"] if p["id"] == unwanted]
    assert req["reason"] == "not one of ours" and req["decided_by"] == "operator:token:ops"
    assert srv.est_enroll("manual", unwanted_csr)[0] == 403  # and nothing was issued to it

    # find the certificate, revoke it with a reason and a confirmation
    await browser.click("nav a[href='#/certs']")
    await browser.type("#f-q", "doomed")
    await browser.click("#search-btn")
    await browser.wait_for("location.hash.includes('q=doomed') && "
                           "document.querySelectorAll('table.certs tbody tr').length === 1")
    await browser.wait_for(f"document.querySelector('tr[data-serial=\"{serial}\"] a')")
    await browser.click(f"tr[data-serial='{serial}'] a")
    await browser.wait_for("document.getElementById('revoke-btn')")
    await browser.eval("document.getElementById('revoke-reason').value = 'key_compromise'")
    await browser.click("#revoke-btn")
    await browser.wait_for("document.getElementById('revoke-confirm')")
    status, detail = srv.api("GET", f"/certificates/{serial}")
    assert detail["state"] == "valid"  # nothing happens before the confirmation
    await browser.click("#revoke-confirm")
    await browser.wait_for("document.getElementById('message').textContent.includes('revoked')")
    await browser.wait_for("document.querySelector('dd[data-key=\"State\"]')?.textContent === 'revoked'")

    status, detail = srv.api("GET", f"/certificates/{serial}")
    assert detail["state"] == "revoked" and detail["revocation_reason"] == "key_compromise"
    status, page = srv.api("GET", f"/audit?serial={serial}&event=revoke")
    assert [a["requester"] for a in page["items"]] == ["operator:token:ops"]
    _, _, crl_der = srv.call("GET", "/crl/issuing.crl", token=None, https=False)
    entry = x509.load_der_x509_crl(crl_der).get_revoked_certificate_by_serial_number(doomed.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    req_der = (xocsp.OCSPRequestBuilder().add_certificate(doomed, dev_pki.issuing.cert, hashes.SHA1()).build()
               .public_bytes(serialization.Encoding.DER))
    _, _, answer = srv.call("POST", "/ocsp", raw=req_der, token=None, https=False,
                            headers={"Content-Type": "application/ocsp-request"})
    resp = xocsp.load_der_ocsp_response(answer)
    assert resp.certificate_status is xocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason is x509.ReasonFlags.key_compromise
    assert browser.problems() == []


async def test_page_escapes_hostile_subjects(browser: Browser, srv: AdminServer) -> None:
    # gateway's CN is a host name by policy; OU carries the hostile text instead
    status, _ = srv.est_enroll("gateway", make_csr("xss-subject", extra_attrs=[
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "<img src=x onerror=alert(1)>")])[0])
    assert status == 200
    await browser.send("Page.navigate", url=f"{srv.base_https}/admin/")
    await browser.wait_for("document.getElementById('login') && !document.getElementById('login').hidden")
    await browser.type("#token", TOKEN)
    await browser.click("#login-btn")
    await browser.wait_for("document.getElementById('total-valid')")
    assert await browser.eval("document.querySelectorAll('main img').length") == 0
    assert "onerror=alert(1)" in await browser.eval("document.getElementById('view').innerText")
    assert not [e for e in browser.events if e.get("method") == "Page.javascriptDialogOpening"]
    assert browser.problems() == []
