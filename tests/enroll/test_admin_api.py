"""The admin HTTP API over real TLS: authentication (fail closed), every endpoint, its audit trail,
and the OpenAPI document. One server per module; tests use their own device names."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp as xocsp

from enroll.admin_api import API, ROUTES
from enroll.pki import DevPKI
from tests.enroll.admin_helpers import AdminServer, admin_server
from tests.support import make_csr

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPKI) -> Iterator[AdminServer]:
    with admin_server(tmp_path_factory.mktemp("admin"), dev_pki) as s:
        yield s


def enroll_gateway(srv: AdminServer, cn: str, sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    csr, _ = make_csr(cn, sans=sans)
    status, body = srv.est_enroll("gateway", csr)
    assert status == 200, body
    from cryptography.hazmat.primitives.serialization import pkcs7
    import base64

    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))[0]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def audit_count(srv: AdminServer) -> int:
    status, page = srv.api("GET", "/audit?limit=500")
    assert status == 200
    return len(page["items"])


# --- authentication -------------------------------------------------------------------------------
def test_admin_is_404_when_not_configured(tmp_path: Path, dev_pki: DevPKI) -> None:
    with admin_server(tmp_path, dev_pki, admin=False) as s:
        for path in ("/admin/api/v1/health", "/admin/", "/admin/api/v1/openapi.json"):
            status, _, body = s.call("GET", path)
            assert status == 404 and b"not configured" in body
        status, _, _ = s.call("POST", "/admin/api/v1/certificates/01/revoke", {"reason": "key_compromise"})
        assert status == 404


def test_requests_without_valid_credentials_are_refused(srv: AdminServer, dev_pki: DevPKI) -> None:
    before = audit_count(srv)
    status, headers, body = srv.call("GET", API + "/health", token=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert "credentials" in body["error"]
    status, headers, _ = srv.call("GET", API + "/health", token="wrong-token")
    assert status == 401 and "invalid_token" in headers["WWW-Authenticate"]
    status, _, _ = srv.call("POST", API + "/crl/issuing/publish", {}, token="wrong-token")
    assert status == 401
    # a device certificate (trust store "enroll") is not an admin certificate
    status, _, _ = srv.call("GET", API + "/health", token=None, client=dev_pki.client)
    assert status == 401
    assert audit_count(srv) == before  # nothing happened


def test_plain_http_is_refused_even_with_a_token(srv: AdminServer) -> None:
    status, _, body = srv.call("GET", API + "/health", https=False)
    assert status == 403 and "HTTPS only" in body["error"]
    status, _, body = srv.call("GET", "/admin/", https=False, token=None)
    assert status == 403


def test_admin_client_certificate_authenticates_and_is_audited(srv: AdminServer) -> None:
    status, body = srv.api("GET", "/health", token=None, client=srv.admin)
    assert status == 200 and body["admin"] == "cert:CN=alice-admin"
    status, body = srv.api("POST", "/crl/issuing/publish", {}, token=None, client=srv.admin)
    assert status == 200
    status, page = srv.api("GET", "/audit?event=crl-publish&limit=1")
    assert page["items"][0]["requester"] == "tls-client-cert:cert:CN=alice-admin"


def test_mutations_need_json_and_same_origin(srv: AdminServer) -> None:
    cert = enroll_gateway(srv, unique("csrf"))
    serial = format(cert.serial_number, "x")
    before = audit_count(srv)
    status, _, _ = srv.call("POST", f"{API}/certificates/{serial}/revoke", raw=b"reason=key_compromise",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    status, _, body = srv.call("POST", f"{API}/certificates/{serial}/revoke", {"reason": "key_compromise"},
                               headers={"Origin": "https://evil.example"})
    assert status == 403 and "cross-origin" in body["error"]
    status, body = srv.api("GET", f"/certificates/{serial}")
    assert body["state"] == "valid"
    assert audit_count(srv) == before


# --- certificates -------------------------------------------------------------------------------
def test_list_filter_page_show_and_revoke(srv: AdminServer, dev_pki: DevPKI) -> None:
    tag = unique("fleet")
    certs = [enroll_gateway(srv, f"{tag}-{i}") for i in range(3)]
    status, page = srv.api("GET", f"/certificates?q={tag}&limit=2")
    assert status == 200 and len(page["items"]) == 2 and page["next_cursor"]
    status, page2 = srv.api("GET", f"/certificates?q={tag}&limit=2&cursor={page['next_cursor']}")
    assert [c["subject"] for c in page2["items"]] == [f"CN={tag}-0"]
    serial = format(certs[1].serial_number, "x")
    status, detail = srv.api("GET", f"/certificates/{serial}")
    assert status == 200 and detail["state"] == "valid" and detail["pem"].startswith("-----BEGIN CERTIFICATE")
    assert x509.load_pem_x509_certificate(detail["pem"].encode()) == certs[1]
    assert {"authorityInfoAccess", "cRLDistributionPoints"} <= {e["name"] for e in detail["extensions"]}

    status, body = srv.api("POST", f"/certificates/{serial}/revoke", {"reason": "no-such-reason"})
    assert status == 400
    status, body = srv.api("POST", f"/certificates/{serial}/revoke", {"reason": "key_compromise"})
    assert status == 200 and body["state"] == "revoked" and body["revocation_reason"] == "key_compromise"
    status, body = srv.api("POST", f"/certificates/{serial}/revoke", {"reason": "key_compromise"})
    assert status == 409 and "already revoked" in body["error"]
    status, page = srv.api("GET", f"/certificates?q={tag}&state=revoked")
    assert [c["serial"] for c in page["items"]] == [serial]
    status, page = srv.api("GET", f"/audit?serial={serial}")
    events = [(a["event"], a["ok"], a["requester"]) for a in page["items"]]
    assert events[:2] == [("revoke", False, "operator:token:ops"), ("revoke", True, "operator:token:ops")]
    # relying parties see it: CRL and OCSP
    crl = x509.load_der_x509_crl(srv.call("GET", "/crl/issuing.crl", token=None, https=False)[2])
    assert crl.get_revoked_certificate_by_serial_number(certs[1].serial_number) is not None
    assert ocsp_status(srv, certs[1], dev_pki) is xocsp.OCSPCertStatus.REVOKED
    assert ocsp_status(srv, certs[0], dev_pki) is xocsp.OCSPCertStatus.GOOD


def ocsp_status(srv: AdminServer, cert: x509.Certificate, dev_pki: DevPKI) -> xocsp.OCSPCertStatus:
    from cryptography.hazmat.primitives import hashes, serialization

    req = xocsp.OCSPRequestBuilder().add_certificate(cert, dev_pki.issuing.cert, hashes.SHA1()).build()
    status, headers, body = srv.call("POST", "/ocsp", raw=req.public_bytes(serialization.Encoding.DER), token=None,
                                     https=False, headers={"Content-Type": "application/ocsp-request"})
    assert status == 200 and headers["Content-Type"] == "application/ocsp-response"
    return xocsp.load_der_ocsp_response(body).certificate_status


def test_hold_and_unhold_through_the_api(srv: AdminServer, dev_pki: DevPKI) -> None:
    cert = enroll_gateway(srv, unique("held"))
    serial = format(cert.serial_number, "x")
    status, body = srv.api("POST", f"/certificates/{serial}/unhold", {})
    assert status == 409 and "not on hold" in body["error"]
    status, body = srv.api("POST", f"/certificates/{serial}/revoke", {"reason": "certificate_hold"})
    assert body["state"] == "on_hold"
    assert ocsp_status(srv, cert, dev_pki) is xocsp.OCSPCertStatus.REVOKED
    status, body = srv.api("POST", f"/certificates/{serial}/unhold", {})
    assert status == 200 and body["state"] == "valid"
    assert ocsp_status(srv, cert, dev_pki) is xocsp.OCSPCertStatus.GOOD
    crl = x509.load_der_x509_crl(srv.call("GET", "/crl/issuing.crl", token=None, https=False)[2])
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is None


def test_unknown_things_are_404(srv: AdminServer) -> None:
    before = audit_count(srv)
    for method, path, body in (("GET", "/certificates/abcdef", None), ("GET", "/devices/" + "0" * 32, None),
                               ("POST", "/certificates/abcdef/revoke", {"reason": "superseded"}),
                               ("POST", "/pending/999999/approve", {}), ("POST", "/crl/nope/publish", {}),
                               ("GET", "/no-such-endpoint", None)):
        status, payload = srv.api(method, path, body)
        assert status == 404, (path, payload)
        assert "error" in payload
    status, payload = srv.api("GET", "/certificates/not-hex")
    assert status == 400
    assert audit_count(srv) == before + 1  # only the refused approval of a non-existent request


# --- devices --------------------------------------------------------------------------------------
def test_device_history_and_retirement(srv: AdminServer) -> None:
    name = unique("router")
    san = [x509.DNSName(f"{name}.example.net")]
    first = enroll_gateway(srv, name, san)
    enroll_gateway(srv, name, san)
    status, page = srv.api("GET", f"/devices?q={name}")
    assert status == 200 and len(page["items"]) == 1
    dev = page["items"][0]
    assert dev["certificates"] == 2 and dev["active"] == 2 and dev["sans"] == [f"dns:{name}.example.net"]
    status, detail = srv.api("GET", f"/devices/{dev['device']}")
    assert [h["event"] for h in detail["history"]] == ["issue", "issue"]
    status, body = srv.api("POST", f"/devices/{dev['device']}/retire", {"reason": "cessation_of_operation"})
    assert status == 200 and body["retired"] and len(body["revoked"]) == 2
    assert body["retired_by"] == "operator:token:ops"
    # its next enrollment is refused and nothing is issued
    status, page = srv.api("GET", f"/certificates?device={dev['device']}")
    count = len(page["items"])
    csr, _ = make_csr(name, sans=san)
    status, text = srv.est_enroll("gateway", csr)
    assert status == 403 and b"retired" in text
    status, page = srv.api("GET", f"/certificates?device={dev['device']}")
    assert len(page["items"]) == count and all(c["state"] == "revoked" for c in page["items"])
    status, detail = srv.api("GET", f"/devices/{dev['device']}")
    events = [h["event"] for h in detail["history"]]
    assert events.count("revoke") == 2 and "retire-device" in events
    status, body = srv.api("POST", f"/devices/{dev['device']}/retire", {})
    assert status == 409
    assert first.serial_number  # the first certificate is among the revoked
    status, page = srv.api("GET", f"/devices?q={name}&retired=true")
    assert len(page["items"]) == 1


def test_revoke_all_certificates_of_a_device(srv: AdminServer) -> None:
    name = unique("phone")
    enroll_gateway(srv, name)
    enroll_gateway(srv, name)
    status, page = srv.api("GET", f"/devices?q={name}")
    device = page["items"][0]["device"]
    status, body = srv.api("POST", f"/devices/{device}/revoke", {"reason": "superseded"})
    assert status == 200 and len(body["revoked"]) == 2
    status, page = srv.api("GET", f"/certificates?device={device}&state=valid")
    assert page["items"] == []


# --- pending, challenges, CRL, overview -------------------------------------------------------------
def test_pending_approve_and_reject(srv: AdminServer) -> None:
    csr_ok, _ = make_csr(unique("approve-me"))
    csr_no, _ = make_csr(unique("reject-me"))
    assert srv.est_enroll("manual", csr_ok)[0] == 202
    assert srv.est_enroll("manual", csr_no)[0] == 202
    status, page = srv.api("GET", "/pending")
    by_subject = {p["subject"]: p for p in page["items"]}
    ok = by_subject[csr_ok.subject.rfc4514_string()]
    no = by_subject[csr_no.subject.rfc4514_string()]
    status, body = srv.api("POST", f"/pending/{ok['id']}/approve", {})
    assert status == 200 and body["status"] == "approved" and body["decided_by"] == "operator:token:ops"
    status, body = srv.api("POST", f"/pending/{no['id']}/reject", {"reason": "unknown device"})
    assert status == 200 and body["status"] == "rejected"
    status, body = srv.api("POST", f"/pending/{no['id']}/approve", {})
    assert status == 409
    assert srv.est_enroll("manual", csr_ok)[0] == 200
    status, text = srv.est_enroll("manual", csr_no)
    assert status == 403
    status, page = srv.api("GET", "/pending?status=all")
    assert {p["id"]: p["status"] for p in page["items"]}[ok["id"]] == "issued"


def test_one_time_challenge_and_crl_publish(srv: AdminServer) -> None:
    status, body = srv.api("POST", "/challenges", {"profile": "mdm", "ttl": 600})
    assert status == 201 and re.fullmatch(r"[A-Za-z0-9]{24}", body["challenge"])
    status, body = srv.api("POST", "/challenges", {"profile": "nope"})
    assert status == 404
    status, body = srv.api("POST", "/challenges", {"profile": "mdm", "ttl": -5})
    assert status == 400
    status, first = srv.api("POST", "/crl/issuing/publish", {})
    status, second = srv.api("POST", "/crl/issuing/publish", {})
    assert second["crl_number"] == first["crl_number"] + 1
    crl = x509.load_der_x509_crl(srv.call("GET", "/crl/issuing.crl", token=None, https=False)[2])
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == second["crl_number"]
    status, page = srv.api("GET", "/audit?event=challenge-new&limit=1")
    assert page["items"][0]["requester"] == "operator:token:ops"
    assert body.get("challenge") is None  # the refused ones returned no secret


def test_overview_health_and_expiry_metrics(srv: AdminServer) -> None:
    enroll_gateway(srv, unique("overview"))
    status, body = srv.api("GET", "/overview")
    assert status == 200 and body["profiles"]["gateway"]["valid"] >= 1
    assert set(body["profiles"]) >= {"gateway", "sensor", "manual"} and body["recent"]
    status, body = srv.api("GET", "/health")
    assert body["status"] == "ok" and body["cas"]["issuing"]["crl_number"] >= 1
    status, body = srv.api("GET", "/certificates?expiring_within=3000d&limit=5")
    assert status == 200 and body["items"]
    status, _, text = srv.call("GET", "/metrics", token=None)
    assert re.search(rb'enroll_certificates_expiring\{profile="gateway",within="30d"\} 0', text)
    assert re.search(rb'enroll_certificates\{profile="gateway",state="valid"\} [1-9]', text)


# --- OpenAPI --------------------------------------------------------------------------------------
def test_openapi_document_matches_the_routes(srv: AdminServer) -> None:
    status, doc = srv.api("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(m, p) for m, p, _, _ in ROUTES} | {("GET", "/openapi.json")}
    assert documented == served
    op_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(op_ids) == len(set(op_ids)) and all(op_ids)
    schemas = doc["components"]["schemas"]

    def refs(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.split("/")[-1] in schemas
    for path, ops in doc["paths"].items():
        for name in re.findall(r"{(\w+)}", path):
            for op in ops.values():
                assert any(p["in"] == "path" and p["name"] == name for p in op["parameters"]), (path, name)
    assert doc["components"]["securitySchemes"]["adminCertificate"]["type"] == "mutualTLS"
