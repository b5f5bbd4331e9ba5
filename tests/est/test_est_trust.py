"""EST client-certificate authentication follows the lifecycle (RFC 7030 §3.3.2; README,
"Security model"): a revoked, held, retired or foreign certificate authenticates nothing, and a
certificate from one profile does not open a label of another. Every refusal issues nothing and
is audited with its reason."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.ledger import serial_hex
from est.client import EstClient, build_csr
from tests.est.test_est_server import name, raw
from tests.harness import EstServer, RunningServer
from tests.support import make_csr, rsa_key


def _write_identity(work: Path, stem: str, cert: x509.Certificate, key: object) -> tuple[str, str]:
    (work / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (work / f"{stem}.key").write_bytes(key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(work / f"{stem}.pem"), str(work / f"{stem}.key")


def _bank_csr() -> bytes:
    csr, _ = make_csr("www.bank.example", sans=[x509.DNSName("www.bank.example")])
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


def _same_names_csr(cert: x509.Certificate) -> bytes:
    """A renewal request: the certificate's own subject, a fresh key (RFC 7030 §4.2.2)."""
    csr = (x509.CertificateSigningRequestBuilder().subject_name(cert.subject)
           .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


async def _post(url: str, ca: Path, path: str, body: bytes, cert: tuple[str, str]) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(*cert)
    async with aiohttp.ClientSession() as s:
        async with s.post(url + path, data=body, ssl=ctx,
                          headers={"Content-Type": "application/pkcs10"}) as r:
            return r.status, await r.text()


async def _router_certificate(url: str, ca: Path, user: str, password: str) -> tuple[x509.Certificate, object]:
    key = rsa_key()
    async with EstClient(url, trust_anchor=ca, label="router", username=user, password=password,
                         max_polls=0) as est:
        result = await est.enroll(build_csr(key, name("router-x")))
    return result.certificate, key


async def test_revoked_router_certificate_cannot_enroll_a_server_certificate_on_gateway(serve: RunningServer) -> None:
    """The reported attack, on `enroll serve` with the embedded default: enroll a router over
    EST, revoke it for key compromise with the CLI, then present it to the gateway label."""
    cert, key = await _router_certificate(serve.base_https, serve.ca_bundle, serve.init.est_user, serve.init.est_password)
    serve.enroll("revoke", serial_hex(cert.serial_number), "--reason", "key_compromise")
    before = serve.issued()
    status, text = await _post(serve.base_https, serve.ca_bundle, "/.well-known/est/gateway/simpleenroll", _bank_csr(),
                               _write_identity(serve.work, "router", cert, key))
    assert status == 403, text
    assert "revoked" in text
    assert serve.issued() == before
    audit = serve.enroll("audit", "--event", "issue").stdout
    assert "revoked" in audit


async def test_valid_certificate_from_another_profile_is_refused(est_server: EstServer, tmp_path: Path) -> None:
    cert, key = await _router_certificate(est_server.base_https, est_server.ca_bundle, est_server.init.est_user,
                                          est_server.init.est_password)
    before = await est_server.issued()
    status, text = await _post(est_server.base_https, est_server.ca_bundle, "/.well-known/est/gateway/simpleenroll",
                               _bank_csr(), _write_identity(tmp_path, "router", cert, key))
    assert status == 403 and "profile 'router'" in text, text
    assert await est_server.issued() == before
    [row] = await est_server.issuer.ledger.audit_records(1, event="issue")
    assert not row.ok and "profile 'router'" in (row.reason or "") and "router-x" in (row.requester or "")


async def _gateway_identity(srv: EstServer, tmp_path: Path, cn: str) -> tuple[x509.Certificate, tuple[str, str]]:
    key = ec.generate_private_key(ec.SECP256R1())
    async with srv.basic("gateway") as est:
        cert = (await est.enroll(build_csr(key, name(cn)))).certificate
    return cert, _write_identity(tmp_path, cn, cert, key)


async def test_held_certificate_is_refused_until_released(est_server: EstServer, tmp_path: Path) -> None:
    cert, ident = await _gateway_identity(est_server, tmp_path, "gw-hold")
    await est_server.issuer.revoke(cert.serial_number, "certificate_hold")
    before = await est_server.issued()
    status, text = await _post(est_server.base_https, est_server.ca_bundle, "/.well-known/est/gateway/simpleenroll",
                               _bank_csr(), ident)
    assert status == 403 and "on hold" in text, text
    status, text = await _post(est_server.base_https, est_server.ca_bundle, "/.well-known/est/gateway/simplereenroll",
                               _same_names_csr(cert), ident)
    assert status == 403 and "on hold" in text, text
    assert await est_server.issued() == before
    await est_server.issuer.unhold(cert.serial_number)
    status, text = await _post(est_server.base_https, est_server.ca_bundle, "/.well-known/est/gateway/simpleenroll",
                               _bank_csr(), ident)
    assert status == 200, text


async def test_certificate_of_retired_device_is_refused(est_server: EstServer, tmp_path: Path) -> None:
    cert, ident = await _gateway_identity(est_server, tmp_path, "gw-retired")
    await est_server.issuer.retire(cert.serial_number)
    before = await est_server.issued()
    for op, body in (("simpleenroll", _bank_csr()), ("simplereenroll", _same_names_csr(cert))):
        status, text = await _post(est_server.base_https, est_server.ca_bundle, f"/.well-known/est/gateway/{op}",
                                   body, ident)
        assert status == 403 and "retired" in text, (op, text)
    assert await est_server.issued() == before


async def test_certificate_signed_by_our_ca_but_unknown_to_the_ledger_is_an_anomaly(
        est_server: EstServer, tmp_path: Path) -> None:
    certs = est_server.init.certs_dir
    ca_cert = x509.load_pem_x509_certificate((certs / "issuing-ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "issuing-ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    stray = (x509.CertificateBuilder().subject_name(name("stray")).issuer_name(ca_cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(ca_cert.not_valid_before_utc).not_valid_after(ca_cert.not_valid_after_utc)
             .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    before = await est_server.issued()
    status, text = await _post(est_server.base_https, est_server.ca_bundle, "/.well-known/est/gateway/simpleenroll",
                               _bank_csr(), _write_identity(tmp_path, "stray", stray, key))
    assert status == 403 and "not in the ledger" in text, text
    assert await est_server.issued() == before
    [row] = await est_server.issuer.ledger.audit_records(1, event="client-cert-anomaly")
    assert row.serial == f"{stray.serial_number:x}"


async def test_csr_with_another_content_type_is_415_and_issues_nothing(est_server: EstServer) -> None:
    csr, _ = make_csr("text-plain")
    body = base64.b64encode(csr.public_bytes(serialization.Encoding.DER))
    for ctype in ("text/plain", None, "application/x-www-form-urlencoded"):
        headers = {"Content-Type": ctype} if ctype else {"Content-Type": ""}
        status, _, text = await raw(est_server, "POST", "/.well-known/est/simpleenroll", body=body, auth=True,
                                    headers=headers)
        assert status == 415, (ctype, text)
    status, _, text = await raw(est_server, "POST", "/.well-known/est/simpleenroll", body=body, auth=True,
                                headers={"Content-Type": "application/PKCS10; charset=binary"})
    assert status == 200, text
    assert await est_server.issued() == 1
