"""Admin surface hardening: admin trust anchors compared by certificate (SHA-256 of DER), not by
store name, against every CA and every device-facing anchor; a revocation path for admin
certificates (``[admin] allowed_fingerprints``, ``[admin] crl``, fail closed); HSTS (RFC 6797)
and nosniff on every admin response; admin bodies bounded like every other body."""

from __future__ import annotations

import datetime as dt
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.errors import ConfigError
from enroll.app import validate
from enroll.config import Config, load_config, parse_config
from enroll.config_admin import fingerprint
from enroll.pki import DevPKI, Pair, make_cert
from enroll.setup import InitResult
from tests.enroll.admin_helpers import TOKEN, write_admin_config
from tests.harness import InProc, serve_inproc

HEALTH = "/admin/api/v1/health"


# --- separation of admin anchors from device anchors -----------------------------------------------
@pytest.mark.parametrize("source, where", [
    ("issuing-ca.pem", "[cas.issuing]"),  # the issuing CA itself
    ("root-ca.pem", "[cas.issuing]"),  # the root in the CA's chain
    ("manufacturer-ca.pem", "'manufacturer' (profiles.bootstrap.est.client_trust)"),
    ("scep-ra.pem", "scep.ra_cert"),
], ids=["issuing-ca", "root-in-chain", "device-trust-store", "scep-ra"])
def test_admin_trust_store_holding_a_device_anchor_under_another_name_is_refused(
        embedded: InitResult, source: str, where: str) -> None:
    certs = embedded.config_path.parent / "certs"
    shutil.copy(certs / source, certs / "ops-anchor.pem")  # same certificate, new file and store name
    raw: dict[str, Any] = tomllib.loads(embedded.config_path.read_text())
    raw["trust"]["ops"] = {"certs": ["certs/ops-anchor.pem"]}
    raw["tls"]["client_trust"].append("ops")
    raw["admin"] = {"client_trust": ["ops"]}
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, embedded.config_path)
    assert exc.value.key == "admin.client_trust"
    assert where in exc.value.problem and "device certificates would authenticate as admins" in exc.value.problem


def test_admin_trust_store_of_its_own_ca_loads(embedded: InitResult, dev_pki: DevPKI) -> None:
    write_admin_config(embedded, dev_pki)
    cfg = load_config(embedded.config_path)
    assert cfg.admin is not None and cfg.admin.client_trust == ("admin",)
    validate(cfg)


@pytest.mark.parametrize("extra, key", [
    ('allowed_fingerprints = ["abc"]\n', "admin.allowed_fingerprints"),
    ('allowed_fingerprints = ["' + "g" * 64 + '"]\n', "admin.allowed_fingerprints"),
    ('crl = "certs/missing.crl"\n', "admin.crl"),
    ('crl = "certs/admin-ca.pem"\n', "admin.crl"),  # a certificate, not a CRL
], ids=["short-fingerprint", "not-hex", "crl-missing", "crl-not-a-crl"])
def test_bad_admin_revocation_keys_are_named(embedded: InitResult, dev_pki: DevPKI, extra: str, key: str) -> None:
    write_admin_config(embedded, dev_pki, extra=extra)
    with pytest.raises(ConfigError) as exc:
        load_config(embedded.config_path)
    assert exc.value.key == key


def test_admin_revocation_keys_need_admin_client_certificates(embedded: InitResult) -> None:
    raw: dict[str, Any] = tomllib.loads(embedded.config_path.read_text())
    raw["admin"] = {"allowed_fingerprints": ["ab" * 32]}
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, embedded.config_path)
    assert exc.value.key == "admin.allowed_fingerprints" and "client_trust" in exc.value.problem


# --- admin certificate revocation ----------------------------------------------------------------
def another_admin(admin_ca: Pair, cn: str) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    return Pair(make_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), key, admin_ca, days=30,
                          eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), key)


def write_crl(path: Path, signer: Pair, revoked: list[x509.Certificate], *, next_update_hours: float = 1,
              issuer: x509.Name | None = None) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateRevocationListBuilder().issuer_name(issuer or signer.cert.subject)
         .last_update(now - dt.timedelta(hours=2)).next_update(now + dt.timedelta(hours=next_update_hours)))
    for cert in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                                      .revocation_date(now - dt.timedelta(minutes=5)).build())
    path.write_bytes(b.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


async def admin_get(srv: InProc, client: Pair, tmp: Path) -> tuple[int, bytes]:
    status, _, body = await srv.get(HEALTH, ssl_ctx=srv.client_ssl(client, tmp))
    return status, body


async def admin_challenge(srv: InProc, client: Pair, tmp: Path) -> int:
    status, _, _ = await srv.get("/admin/api/v1/challenges", method="POST", ssl_ctx=srv.client_ssl(client, tmp),
                                 data=b'{"profile": "router"}', headers={"Content-Type": "application/json"})
    return status


async def challenges_by(srv: InProc, cn: str) -> int:
    rows = await srv.issuer.ledger.audit_records(100_000)
    return sum(1 for a in rows if "challenge" in a.event and cn in (a.requester or ""))


def with_admins(embedded: InitResult, dev_pki: DevPKI, extra: str = "") -> tuple[Pair, Pair, Pair]:
    """[admin] with its own CA (file certs/admin-ca.pem) and two admins, alice and bob; ``extra``
    lines go into the [admin] table (``{alice}`` is replaced by alice's fingerprint)."""
    admin_ca, alice = write_admin_config(embedded, dev_pki)
    bob = another_admin(admin_ca, "bob-admin")
    add_admin_lines(embedded, extra.replace("{alice}", fingerprint(alice.cert)))
    return admin_ca, alice, bob


def add_admin_lines(embedded: InitResult, extra: str) -> None:
    text = embedded.config_path.read_text()
    marker = '[admin]\nclient_trust = ["admin"]\n'
    assert marker in text
    embedded.config_path.write_text(text.replace(marker, marker + extra, 1))


async def test_allowed_fingerprints_admit_only_the_listed_admin_certificates(
        embedded: InitResult, dev_pki: DevPKI, tmp_path: Path) -> None:
    admin_ca, alice, bob = with_admins(embedded, dev_pki)
    openssl_spelling = ":".join(f"{b:02X}" for b in bytes.fromhex(fingerprint(alice.cert)))
    add_admin_lines(embedded, f'allowed_fingerprints = ["{openssl_spelling}"]\n')
    cfg = load_config(embedded.config_path)
    assert cfg.admin is not None and cfg.admin.allowed_fingerprints == {fingerprint(alice.cert)}
    async with serve_inproc(cfg) as srv:
        assert (await admin_get(srv, alice, tmp_path))[0] == 200
        status, body = await admin_get(srv, bob, tmp_path)  # chains to the admin CA, but not listed
        assert status == 401 and b"allowed_fingerprints" in body
        assert await admin_challenge(srv, bob, tmp_path) == 401
        assert await challenges_by(srv, "bob-admin") == 0
        assert await admin_challenge(srv, alice, tmp_path) == 201  # the audit query does see challenges
        assert await challenges_by(srv, "alice-admin") == 1
        assert (await srv.get(HEALTH, headers={"Authorization": f"Bearer {TOKEN}"}))[0] == 200  # tokens unaffected


async def test_without_allowed_fingerprints_every_admin_of_the_admin_ca_authenticates(
        embedded: InitResult, dev_pki: DevPKI, tmp_path: Path) -> None:
    admin_ca, alice, bob = with_admins(embedded, dev_pki)
    async with serve_inproc(load_config(embedded.config_path)) as srv:
        assert (await admin_get(srv, alice, tmp_path))[0] == 200
        assert (await admin_get(srv, bob, tmp_path))[0] == 200


async def test_admin_crl_refuses_a_revoked_admin_certificate(embedded: InitResult, dev_pki: DevPKI,
                                                             tmp_path: Path) -> None:
    admin_ca, alice, bob = with_admins(embedded, dev_pki, 'crl = "certs/admin.crl"\n')
    crl = embedded.certs_dir / "admin.crl"
    write_crl(crl, admin_ca, [bob.cert])
    cfg = load_config(embedded.config_path)
    validate(cfg)
    async with serve_inproc(cfg) as srv:
        assert (await admin_get(srv, alice, tmp_path))[0] == 200
        status, body = await admin_get(srv, bob, tmp_path)
        assert status == 401 and b"revoked" in body
        assert await admin_challenge(srv, bob, tmp_path) == 401
        assert await challenges_by(srv, "bob-admin") == 0
        # A new CRL on disk is picked up without a restart: alice revoked too.
        write_crl(crl, admin_ca, [bob.cert, alice.cert])
        status, body = await admin_get(srv, alice, tmp_path)
        assert status == 401 and b"revoked" in body


async def test_admin_crl_past_next_update_fails_closed(embedded: InitResult, dev_pki: DevPKI,
                                                       tmp_path: Path) -> None:
    admin_ca, alice, bob = with_admins(embedded, dev_pki, 'crl = "certs/admin.crl"\n')
    crl = embedded.certs_dir / "admin.crl"
    write_crl(crl, admin_ca, [])
    async with serve_inproc(load_config(embedded.config_path)) as srv:
        assert (await admin_get(srv, alice, tmp_path))[0] == 200
        write_crl(crl, admin_ca, [], next_update_hours=-1)  # stale: nobody is cleared
        for who in (alice, bob):
            status, body = await admin_get(srv, who, tmp_path)
            assert status == 401 and b"nextUpdate" in body
        assert await admin_challenge(srv, alice, tmp_path) == 401
        assert await challenges_by(srv, "alice-admin") == 0
        crl.unlink()  # unreadable: still closed
        assert (await admin_get(srv, alice, tmp_path))[0] == 401


async def test_admin_crl_must_be_signed_by_an_admin_anchor(embedded: InitResult, dev_pki: DevPKI,
                                                           tmp_path: Path) -> None:
    admin_ca, alice, bob = with_admins(embedded, dev_pki, 'crl = "certs/admin.crl"\n')
    forger = Pair(admin_ca.cert, ec.generate_private_key(ec.SECP256R1()))  # right name, wrong key
    write_crl(embedded.certs_dir / "admin.crl", forger, [])
    cfg = load_config(embedded.config_path)
    with pytest.raises(ConfigError) as exc:
        validate(cfg)
    assert exc.value.key == "admin.crl" and "not signed by an admin trust anchor" in exc.value.problem
    async with serve_inproc(cfg) as srv:
        status, body = await admin_get(srv, alice, tmp_path)
        assert status == 401 and b"not signed" in body


# --- response headers ------------------------------------------------------------------------------
async def test_admin_responses_carry_hsts_and_nosniff(embedded: InitResult, dev_pki: DevPKI) -> None:
    with_admins(embedded, dev_pki)
    async with serve_inproc(load_config(embedded.config_path)) as srv:
        answers = {
            "api": await srv.get(HEALTH, headers={"Authorization": f"Bearer {TOKEN}"}),
            "api-401": await srv.get(HEALTH),
            "api-404": await srv.get("/admin/api/v1/nope", headers={"Authorization": f"Bearer {TOKEN}"}),
            "page": await srv.get("/admin/"),
            "script": await srv.get("/admin/app.js"),
        }
        for name, (status, headers, _) in answers.items():
            assert headers.get("Strict-Transport-Security") == "max-age=31536000", name
            assert headers.get("X-Content-Type-Options") == "nosniff", name
        assert [answers[n][0] for n in answers] == [200, 401, 404, 200, 200]
        csp = answers["page"][1]["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        # Plain HTTP: refused, and no HSTS there (RFC 6797 §7.2).
        status, headers, _ = await srv.get("/admin/", https=False)
        assert status == 403 and "Strict-Transport-Security" not in headers
        assert headers.get("X-Content-Type-Options") == "nosniff"
        status, headers, _ = await srv.get("/health")
        assert status == 200 and "Strict-Transport-Security" not in headers  # only the admin surface


async def test_oversized_admin_body_is_413(embedded: InitResult, dev_pki: DevPKI) -> None:
    with_admins(embedded, dev_pki)
    async with serve_inproc(load_config(embedded.config_path)) as srv:
        body = b'{"profile": "router", "pad": "' + b"x" * (70 * 1024) + b'"}'
        status, headers, out = await srv.get("/admin/api/v1/challenges", method="POST", data=body,
                                             headers={"Authorization": f"Bearer {TOKEN}",
                                                      "Content-Type": "application/json"})
        assert status == 413 and b"larger than" in out
        assert headers.get("Strict-Transport-Security") == "max-age=31536000"
        assert await challenges_by(srv, "token:ops") == 0
