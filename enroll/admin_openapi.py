"""The OpenAPI 3.1 document of ``/admin/api/v1`` (served at ``openapi.json``; a test checks it
against the routes that exist)."""

from __future__ import annotations

from typing import Any

from ca.api import REASONS
from ca.records import CertState, PendingStatus
from enroll.admin_views import API


# --- OpenAPI -------------------------------------------------------------------------------------
def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page_of(name: str) -> dict[str, Any]:
    return {"type": "object", "required": ["items", "next_cursor"],
            "properties": {"items": {"type": "array", "items": _ref(name)},
                           "next_cursor": {"type": ["string", "null"],
                                           "description": "pass as ?cursor= for the next page"}}}


_TS = {"type": ["string", "null"], "format": "date-time"}
_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 description of ``/admin/api/v1`` (served at ``/admin/api/v1/openapi.json``)."""
    reasons = {"type": "string", "enum": list(REASONS)}

    def q(name: str, desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": desc, "schema": schema or _STR}

    def p(name: str, desc: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "description": desc, "schema": _STR}

    def ok(schema: dict[str, Any], desc: str = "OK") -> dict[str, Any]:
        return {"description": desc, "content": {"application/json": {"schema": schema}}}

    errors = {str(c): {"description": d, "content": {"application/json": {"schema": _ref("Error")}}}
              for c, d in ((400, "bad parameter"), (401, "no or wrong credentials"),
                           (403, "plain HTTP or cross-origin"), (404, "not found"),
                           (409, "not possible in the current state"))}

    def op(summary: str, response: dict[str, Any], params: list[dict[str, Any]] | None = None,
           body: dict[str, Any] | None = None, op_id: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {"summary": summary, "operationId": op_id, "parameters": params or [],
                               "responses": {"200": response, **errors}}
        if body is not None:
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        return out

    serial = p("serial", "certificate serial number in hex, as `openssl x509 -serial` prints it")
    device = p("device", "device key (32 hex characters)")
    reason_body = {"type": "object", "properties": {"reason": reasons, "ca": _STR}}
    paths: dict[str, Any] = {
        "/health": {"get": op("Service health: ledger, CRL state per CA, pending count",
                              ok(_ref("Health")), op_id="health")},
        "/overview": {"get": op("Fleet overview: counts by profile, expiring soon, recent enrollments",
                                ok(_ref("Overview")), op_id="overview")},
        "/charts": {"get": op("Chart data: issued per day and profile (30 days), expiring per week (13 weeks), "
                              "refusals by reason class (30 days)", ok(_ref("Charts")), op_id="charts")},
        "/certificates": {"get": op("List issued certificates, newest first (or soonest expiring)",
                                    ok(_page_of("Certificate")), [
                                        q("profile", "only this profile"),
                                        q("state", "valid, revoked, on_hold, retired or expired",
                                          {"type": "string",
                                           "enum": ["valid", "revoked", "on_hold", "retired", "expired"]}),
                                        q("device", "only this device"),
                                        q("q", "substring of the subject"),
                                        q("expiring_within", "valid and expiring within, e.g. 30d, 12h"),
                                        q("limit", "page size (1-500)", {"type": "integer"}),
                                        q("cursor", "next_cursor of the previous page")],
                                    op_id="listCertificates")},
        "/certificates/{serial}": {"get": op("One certificate with its PEM", ok(_ref("CertificateDetail")),
                                             [serial, q("ca", "CA name when the serial exists under several")],
                                             op_id="getCertificate")},
        "/certificates/{serial}/revoke": {"post": op(
            "Revoke (reason certificate_hold suspends); publishes a new CRL", ok(_ref("CertificateDetail")),
            [serial], reason_body, "revokeCertificate")},
        "/certificates/{serial}/unhold": {"post": op(
            "Release a certificateHold; the certificate leaves the CRL", ok(_ref("CertificateDetail")),
            [serial], {"type": "object", "properties": {"ca": _STR}}, "unholdCertificate")},
        "/devices": {"get": op("Device inventory", ok(_page_of("Device")), [
            q("profile", "only this profile"), q("q", "substring of subject or SAN, or a device key"),
            q("retired", "true or false", {"type": "string", "enum": ["true", "false"]}),
            q("limit", "page size (1-500)", {"type": "integer"}), q("cursor", "next_cursor of the previous page")],
            op_id="listDevices")},
        "/devices/{device}": {"get": op("A device, its certificates and its history", ok(_ref("DeviceDetail")),
                                        [device], op_id="getDevice")},
        "/devices/{device}/revoke": {"post": op("Revoke every certificate of a device", ok(_ref("Revoked")),
                                                [device], reason_body, "revokeDevice")},
        "/devices/{device}/retire": {"post": op(
            "Retire a device: revoke all its certificates, refuse its future enrollments and renewals",
            ok(_ref("Device")), [device], reason_body, "retireDevice")},
        "/pending": {"get": op("Requests waiting for approval", ok(_page_of("Pending")), [
            q("status", "pending (default), approved, issuing, issued, rejected or all")], op_id="listPending")},
        "/pending/{id}/approve": {"post": op("Approve; the client's next poll gets its certificate",
                                             ok(_ref("Pending")), [p("id", "request id")],
                                             {"type": "object"}, "approvePending")},
        "/pending/{id}/reject": {"post": op("Reject; the client's next poll is refused", ok(_ref("Pending")),
                                            [p("id", "request id")],
                                            {"type": "object", "properties": {"reason": _STR}}, "rejectPending")},
        "/challenges": {"post": {**op("Issue a one-time SCEP challenge", ok(_ref("Challenge")), [],
                                      {"type": "object", "required": ["profile"],
                                       "properties": {"profile": _STR, "ttl": {"type": "integer", "minimum": 1}}},
                                      "createChallenge"),
                                 "responses": {"201": ok(_ref("Challenge"), "Created"), **errors}}},
        "/credentials": {
            "get": op("One-time EST credentials (never their passwords), newest first", ok(_page_of("Credential")), [
                q("profile", "only this profile"), q("unused", "1: only those that can still enroll"),
                q("limit", "at most this many (1-500)", {"type": "integer"})], op_id="listCredentials"),
            "post": {**op("Make one-time EST credentials, one per device; the passwords are in this answer only",
                          ok(_page_of("NewCredential")),
                          [q("format", "csv: answer text/csv (user,password,profile,bind,device,uses,expires_at)",
                             {"type": "string", "enum": ["json", "csv"]})],
                          {"type": "object", "required": ["profile"], "properties": {
                              "profile": _STR, "device": _STR, "devices": {"type": "array", "items": _STR},
                              "bind": {"type": "string", "enum": ["serialNumber", "CN"]},
                              "ttl": {"type": ["integer", "string"]}, "uses": {"type": "integer", "minimum": 1}}},
                          "createCredentials"),
                     "responses": {"201": ok(_page_of("NewCredential"), "Created"), **errors}}},
        "/credentials/{id}/revoke": {"post": op("Revoke a one-time EST credential", ok(_ref("Credential")),
                                                [p("id", "credential id (its HTTP Basic user name)")],
                                                {"type": "object"}, "revokeCredential")},
        "/crl/{ca}/publish": {"post": op("Sign and publish a new CRL now", ok(_ref("CRL")), [p("ca", "CA name")],
                                         {"type": "object"}, "publishCrl")},
        "/audit": {"get": op("The decision log, newest first", ok(_page_of("AuditRecord")), [
            q("serial", "only records about this certificate"), q("device", "only records about this device"),
            q("since", "ISO 8601 time, inclusive"), q("until", "ISO 8601 time, exclusive"),
            q("event", "issue, renew, revoke, hold, unhold, approve, reject, retire-device, ..."),
            q("limit", "page size (1-500)", {"type": "integer"}), q("cursor", "next_cursor of the previous page")],
            op_id="listAudit")},
        "/openapi.json": {"get": op("This document", ok({"type": "object"}), op_id="openapi")},
    }
    cert_props = {"serial": _STR, "ca": _STR, "profile": _STR, "device": _NSTR, "subject": _NSTR,
                  "state": {"type": "string", "enum": [s.value for s in CertState]},
                  "not_before": _TS, "not_after": _TS, "issued_at": _TS, "revoked_at": _TS,
                  "revocation_reason": _NSTR, "retired": {"type": "boolean"}, "channel": _STR, "requester": _STR,
                  "auth_method": _NSTR, "requester_evidence": _NSTR,
                  "renews": _NSTR}
    device_props = {"device": _STR, "profile": _STR, "subject": _STR, "sans": {"type": "array", "items": _STR},
                    "first_seen": _TS, "last_issued_at": _TS, "certificates": {"type": "integer"},
                    "active": {"type": "integer"}, "retired": {"type": "boolean"}, "retired_at": _TS,
                    "retired_by": _NSTR, "retire_reason": _NSTR}
    credential_props = {"id": _STR, "profile": _STR, "bind": _STR, "device": _STR, "uses": {"type": "integer"},
                        "uses_left": {"type": "integer"}, "created_at": _TS, "expires_at": _TS,
                        "last_used_at": _TS, "revoked_at": _TS, "created_by": _NSTR}
    schemas = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": _STR}},
        "Certificate": {"type": "object", "properties": cert_props},
        "CertificateDetail": {"type": "object", "properties": {
            **cert_props, "sans": {"type": "array", "items": _STR}, "issuer": _STR, "key_type": _STR,
            "sha256": _STR, "pem": _STR, "transaction_id": _NSTR, "csr_sha256": _STR, "spki_sha256": _STR,
            "retired_at": _TS, "extensions": {"type": "array", "items": {"type": "object"}}}},
        "Device": {"type": "object", "properties": device_props},
        "DeviceDetail": {"type": "object", "properties": {
            **device_props, "items": {"type": "array", "items": _ref("Certificate")},
            "history": {"type": "array", "items": _ref("AuditRecord")}}},
        "Revoked": {"type": "object", "properties": {"revoked": {"type": "array", "items": _STR}}},
        "Pending": {"type": "object", "properties": {
            "id": {"type": "integer"}, "profile": _STR, "channel": _STR, "requester": _STR,
            "status": {"type": "string", "enum": [s.value for s in PendingStatus]}, "auth_method": _NSTR,
            "subject": _NSTR, "sans": {"type": "array", "items": _STR}, "csr_sha256": _STR,
            "transaction_id": _NSTR, "created_at": _TS, "decided_at": _TS, "decided_by": _NSTR, "reason": _NSTR,
            "serial": _NSTR}},
        "AuditRecord": {"type": "object", "properties": {
            "id": {"type": "integer"}, "at": _TS, "event": _STR, "ok": {"type": "boolean"}, "channel": _NSTR,
            "profile": _NSTR, "requester": _NSTR, "reason": _NSTR, "serial": _NSTR, "csr_sha256": _NSTR,
            "detail": {"type": ["object", "null"]}}},
        "Challenge": {"type": "object", "properties": {"challenge": _STR, "profile": _STR, "expires_at": _TS}},
        "Credential": {"type": "object", "properties": credential_props},
        "NewCredential": {"type": "object", "properties": {**credential_props, "user": _STR, "password": _STR}},
        "CRL": {"type": "object", "properties": {"ca": _STR, "crl_number": {"type": "integer"},
                                                 "this_update": _TS, "next_update": _TS,
                                                 "entries": {"type": "integer"}}},
        "Health": {"type": "object", "properties": {"status": _STR, "ledger": _STR, "cas": {"type": "object"},
                                                    "pending": {"type": "integer"}, "admin": _STR}},
        "Charts": {"type": "object", "properties": {
            "days": {"type": "array", "items": _STR},
            "issued_per_day": {"type": "object", "additionalProperties": {"type": "array",
                                                                          "items": {"type": "integer"}}},
            "weeks": {"type": "array", "items": _TS},
            "expiring_per_week": {"type": "array", "items": {"type": "integer"}},
            "refusals": {"type": "array", "items": {"type": "object", "properties": {
                "reason": _STR, "count": {"type": "integer"}}}},
            "since": _TS}},
        "Overview": {"type": "object", "properties": {
            "profiles": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                **{st.value: {"type": "integer"} for st in CertState},
                "expiring_7d": {"type": "integer"}, "expiring_30d": {"type": "integer"}}}},
            "pending": {"type": "integer"}, "recent": {"type": "array", "items": _ref("Certificate")},
            "expiring": {"type": "array", "items": _ref("Certificate")}, "admin": _STR}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "enroll admin API", "version": "1",
                 "description": "Certificate lifecycle operations. Authenticate with a bearer token from "
                                "[admin.tokens] or an admin client certificate. Mutating calls are POSTs with "
                                "a JSON body and are audited with the admin's identity."},
        "servers": [{"url": API}],
        "security": [{"bearer": []}, {"adminCertificate": []}],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "adminCertificate": {"type": "mutualTLS",
                                 "description": "a client certificate chaining to [admin] client_trust"}}},
    }
