"""The EST server end to end over TLS with the project's own client (RFC 7030, RFC 8951).
Every negative test checks that nothing was issued."""

from __future__ import annotations

import base64
import ssl

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from est import asn1, serverkeygen_cms, wire
from est.client import EstClient, build_csr
from est.errors import EstError
from tests.harness import EstServer
from tests.support import KEK, KEK_ID, make_csr


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


async def raw(srv: EstServer, method: str, path: str, *, body: bytes | None = None,
              headers: dict[str, str] | None = None, auth: bool = False,
              cert: tuple[str, str] | None = None, tls13: bool | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTPS request, returning status, headers and body bytes as sent."""
    ctx = ssl.create_default_context(cafile=str(srv.ca_bundle))
    if cert:
        ctx.load_cert_chain(*cert)
    if tls13 is False:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    h = dict(headers or {})
    if method == "POST":
        h.setdefault("Content-Type", "application/pkcs10")
    if auth:
        token = base64.b64encode(f"{srv.init.est_user}:{srv.init.est_password}".encode()).decode()
        h["Authorization"] = f"Basic {token}"
    async with aiohttp.ClientSession() as s:
        async with s.request(method, srv.base_https + path, data=body, headers=h, ssl=ctx) as r:
            return r.status, dict(r.headers), await r.read()


def csr_b64(cn: str = "dev-1", **kw: object) -> tuple[bytes, object]:
    csr, key = make_csr(cn, **kw)  # type: ignore[arg-type]
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER)), key


# --- /cacerts, /csrattrs, routing ---------------------------------------------------------------


async def test_cacerts_full_chain_exact_content_type(est_server: EstServer) -> None:
    status, headers, body = await raw(est_server, "GET", "/.well-known/est/cacerts")
    assert status == 200
    assert headers["Content-Type"] == "application/pkcs7-mime"
    assert headers["Content-Transfer-Encoding"] == "base64"
    assert b"\n" not in body  # unwrapped
    certs = wire.decode_certs_only(base64.b64decode(body))
    subjects = {c.subject.rfc4514_string() for c in certs}
    assert any("Issuing" in s for s in subjects) and any("Root" in s for s in subjects)
    async with est_server.client() as c:
        assert await c.cacerts() == certs


async def test_csrattrs_from_profile(est_server: EstServer) -> None:
    status, headers, body = await raw(est_server, "GET", "/.well-known/est/pop/csrattrs")
    assert status == 200 and headers["Content-Type"] == "application/csrattrs"
    items = asn1.decode_csrattrs(base64.b64decode(body))
    assert items[0] == asn1.AttrOrOid(asn1.Oid.CHALLENGE_PASSWORD)
    assert asn1.key_type_ec("1.2.840.10045.3.1.7") in items


async def test_csrattrs_rfc9908_template(est_server: EstServer) -> None:
    async with est_server.client("skg") as c:
        items = await c.csrattrs()
    (tmpl,) = items
    assert tmpl.oid == asn1.Oid.CERTIFICATION_REQUEST_INFO_TEMPLATE and tmpl.values
    parsed = asn1.parse_certification_request_template(tmpl.values[0])
    assert parsed.subject == (asn1.TemplateRdn("2.5.4.3"),)
    assert parsed.extensions == (asn1.TemplateExtension("2.5.29.17"),)


async def test_unknown_label_is_404(est_server: EstServer) -> None:
    status, headers, body = await raw(est_server, "GET", "/.well-known/est/nosuch/cacerts")
    assert status == 404 and headers["Content-Type"].startswith("text/plain")


async def test_unknown_operation_is_404(est_server: EstServer) -> None:
    status, _, _ = await raw(est_server, "GET", "/.well-known/est/gateway/whatever")
    assert status == 404


@pytest.mark.parametrize("method,op,allow", [("POST", "cacerts", "GET, HEAD"),
                                             ("GET", "simpleenroll", "POST"),
                                             ("PUT", "serverkeygen", "POST")])
async def test_wrong_method_is_405_with_allow(est_server: EstServer, method: str, op: str, allow: str) -> None:
    status, headers, _ = await raw(est_server, method, f"/.well-known/est/{op}", body=b"x")
    assert status == 405 and headers["Allow"] == allow


async def test_fullcmc_pkcs10_body_is_415_and_empty_cmc_request_is_a_cmc_failure(est_server: EstServer) -> None:
    """/fullcmc takes application/pkcs7-mime; smime-type=CMC-request (RFC 7030 §4.3.1); a request
    that is no Full PKI Request is refused with 4xx and a CMC response (§4.3.2)."""
    status, _, _ = await raw(est_server, "POST", "/.well-known/est/fullcmc", body=b"MAA=", auth=True)
    assert status == 415
    status, headers, _ = await raw(est_server, "POST", "/.well-known/est/fullcmc", body=b"MAA=", auth=True,
                                   headers={"Content-Type": wire.CT_CMC_REQUEST})
    assert status == 400 and headers["Content-Type"] == wire.CT_CMC_RESPONSE
    assert await est_server.issued() == 0


# --- enroll ---------------------------------------------------------------------------------------


async def test_enroll_basic_exact_content_type(est_server: EstServer) -> None:
    body, key = csr_b64("gw-1")
    status, headers, resp = await raw(est_server, "POST", "/.well-known/est/simpleenroll", body=body, auth=True,
                                      headers={"Content-Type": "application/pkcs10"})
    assert status == 200, resp
    assert headers["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"
    assert headers["Content-Transfer-Encoding"] == "base64"
    (cert,) = wire.decode_certs_only(base64.b64decode(resp))
    assert cert.subject == name("gw-1")
    assert await est_server.issued() == 1


async def test_enroll_with_client(est_server: EstServer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    async with est_server.basic("gateway") as c:
        result = await c.enroll(build_csr(key, name("gw-client")))
    assert result.certificate.subject == name("gw-client")


@pytest.mark.parametrize("variant", ["pem", "wrapped-crlf-64", "cte-binary-header"])
async def test_enroll_rfc8951_input_variants(est_server: EstServer, variant: str) -> None:
    csr, _ = make_csr(f"v-{variant}")
    der = csr.public_bytes(serialization.Encoding.DER)
    headers = {"Content-Type": "application/pkcs10"}
    if variant == "pem":
        body = csr.public_bytes(serialization.Encoding.PEM)
    elif variant == "wrapped-crlf-64":
        body = wire.encode_base64(der, line_length=64)
    else:
        body = base64.b64encode(der)
        headers["Content-Transfer-Encoding"] = "binary"  # ignored (RFC 8951 §3.1)
    status, _, resp = await raw(est_server, "POST", "/.well-known/est/simpleenroll", body=body, auth=True,
                                headers=headers)
    assert status == 200, resp


async def test_wrong_password_is_401_with_www_authenticate(est_server: EstServer) -> None:
    body, _ = csr_b64("nope")
    token = base64.b64encode(b"estuser:wrong").decode()
    status, headers, _ = await raw(est_server, "POST", "/.well-known/est/simpleenroll", body=body,
                                   headers={"Authorization": f"Basic {token}"})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
    assert await est_server.issued() == 0


async def test_no_credentials_is_401(est_server: EstServer) -> None:
    body, _ = csr_b64("nope")
    status, headers, _ = await raw(est_server, "POST", "/.well-known/est/simpleenroll", body=body)
    assert status == 401 and "WWW-Authenticate" in headers
    assert await est_server.issued() == 0


async def test_enroll_with_client_certificate(est_server: EstServer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    c = est_server.client("gateway", client_cert=est_server.init.certs_dir / "example-client.pem",
                          client_key=est_server.init.certs_dir / "example-client.key")
    async with c:
        result = await c.enroll(build_csr(key, name("gw-mtls")))
    assert result.certificate.subject == name("gw-mtls")


async def test_client_cert_from_untrusted_ca_is_refused(est_server: EstServer) -> None:
    """bootstrap trusts only the manufacturer CA; the enroll-issued client cert is refused."""
    body, _ = csr_b64("sensor-x")
    status, _, text = await raw(est_server, "POST", "/.well-known/est/bootstrap/simpleenroll", body=body,
                                cert=(str(est_server.init.certs_dir / "example-client.pem"),
                                      str(est_server.init.certs_dir / "example-client.key")))
    assert status == 403, text
    assert await est_server.issued() == 0


async def test_no_client_cert_where_needed_is_refused(est_server: EstServer) -> None:
    body, _ = csr_b64("sensor-x")
    status, _, text = await raw(est_server, "POST", "/.well-known/est/bootstrap/simpleenroll", body=body,
                                auth=True)
    assert status == 403 and b"client certificate" in text
    assert await est_server.issued() == 0


async def test_bootstrap_with_idevid_gets_an_ldevid_for_its_own_serial_number_only(est_server: EstServer) -> None:
    """bootstrap binds the requested serialNumber to the IDevID's (bind_identity)."""
    idevid = (str(est_server.init.certs_dir / "example-idevid.pem"), str(est_server.init.certs_dir / "example-idevid.key"))
    for sn in ("SN-000002", None):
        attrs = [x509.NameAttribute(NameOID.SERIAL_NUMBER, sn)] if sn else []
        body, _ = csr_b64("sensor-000002", extra_attrs=attrs)
        status, _, text = await raw(est_server, "POST", "/.well-known/est/bootstrap/simpleenroll", body=body,
                                    cert=idevid)
        assert status == 403 and b"serialNumber" in text, (sn, text)
    assert await est_server.issued() == 0
    body, _ = csr_b64("sensor-000001", extra_attrs=[x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-000001")])
    status, _, text = await raw(est_server, "POST", "/.well-known/est/bootstrap/simpleenroll", body=body,
                                cert=idevid)
    assert status == 200, text


async def test_combined_auth_needs_both(est_server: EstServer) -> None:
    body, _ = csr_b64("both-1")
    cert = (str(est_server.init.certs_dir / "example-client.pem"), str(est_server.init.certs_dir / "example-client.key"))
    status, _, _ = await raw(est_server, "POST", "/.well-known/est/both/simpleenroll", body=body, cert=cert)
    assert status == 401
    status, _, _ = await raw(est_server, "POST", "/.well-known/est/both/simpleenroll", body=body, auth=True)
    assert status == 403
    assert await est_server.issued() == 0
    status, _, text = await raw(est_server, "POST", "/.well-known/est/both/simpleenroll", body=body, auth=True,
                                cert=cert)
    assert status == 200, text


async def test_broken_csr_signature_is_400(est_server: EstServer) -> None:
    csr, _ = make_csr("broken")
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF
    status, headers, _ = await raw(est_server, "POST", "/.well-known/est/simpleenroll",
                                   body=base64.b64encode(bytes(der)), auth=True)
    assert status == 400 and headers["Content-Type"].startswith("text/plain")
    assert await est_server.issued() == 0


@pytest.mark.parametrize("body", [b"", b"garbage!!", base64.b64encode(b"\x30\x03\x02\x01\x00")])
async def test_garbage_body_is_400(est_server: EstServer, body: bytes) -> None:
    status, headers, _ = await raw(est_server, "POST", "/.well-known/est/simpleenroll", body=body, auth=True)
    assert status == 400 and headers["Content-Type"].startswith("text/plain")
    assert await est_server.issued() == 0


async def test_oversized_body_is_413(est_server: EstServer) -> None:
    status, _, _ = await raw(est_server, "POST", "/.well-known/est/simpleenroll", body=b"A" * 300_000,
                             auth=True)
    assert status == 413
    assert await est_server.issued() == 0


# --- pending (RFC 7030 §4.2.3) --------------------------------------------------------------------


async def test_pending_then_approved_then_same_certificate(est_server: EstServer) -> None:
    body, _ = csr_b64("manual-1")
    status, headers, text = await raw(est_server, "POST", "/.well-known/est/manual/simpleenroll", body=body,
                                      auth=True)
    assert status == 202 and headers["Retry-After"] == "5" and text
    status, _, _ = await raw(est_server, "POST", "/.well-known/est/manual/simpleenroll", body=body, auth=True)
    assert status == 202
    assert await est_server.issued() == 0
    (pending,) = await est_server.issuer.list_pending()
    assert await est_server.issuer.approve(pending.id, "tester")
    status, _, resp = await raw(est_server, "POST", "/.well-known/est/manual/simpleenroll", body=body, auth=True)
    assert status == 200
    first = wire.decode_certs_only(base64.b64decode(resp))
    status, _, resp = await raw(est_server, "POST", "/.well-known/est/manual/simpleenroll", body=body, auth=True)
    assert wire.decode_certs_only(base64.b64decode(resp)) == first
    assert await est_server.issued() == 1


async def test_pending_then_rejected_is_403(est_server: EstServer) -> None:
    body, _ = csr_b64("manual-2")
    status, _, _ = await raw(est_server, "POST", "/.well-known/est/manual/simpleenroll", body=body, auth=True)
    assert status == 202
    (pending,) = await est_server.issuer.list_pending()
    assert await est_server.issuer.reject(pending.id, "tester", "no")
    status, _, _ = await raw(est_server, "POST", "/.well-known/est/manual/simpleenroll", body=body, auth=True)
    assert status == 403
    assert await est_server.issued() == 0


async def test_client_polls_202_until_approved(est_server: EstServer) -> None:
    import asyncio

    key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(key, name("manual-poll"))

    async def approve_later() -> None:
        for _ in range(100):
            pend = await est_server.issuer.list_pending()
            if pend:
                await est_server.issuer.approve(pend[0].id, "tester")
                return
            await asyncio.sleep(0.05)

    task = asyncio.create_task(approve_later())
    async with est_server.basic("manual", max_polls=5, min_poll_interval=0.1, max_poll_interval=0.2) as c:
        result = await c.enroll(csr)
    await task
    assert result.certificate.subject == name("manual-poll")


# --- reenroll (RFC 7030 §4.2.2) -------------------------------------------------------------------


async def _enrolled(srv: EstServer, cn: str, tmp_path: object) -> tuple[str, str, x509.Certificate]:
    from pathlib import Path

    key = ec.generate_private_key(ec.SECP256R1())
    async with srv.basic("gateway") as c:
        cert = (await c.enroll(build_csr(key, name(cn), sans=[x509.DNSName(f"{cn}.example")]))).certificate
    d = Path(str(tmp_path))
    cp, kp = d / f"{cn}.pem", d / f"{cn}.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return str(cp), str(kp), cert


async def test_reenroll_with_client_cert_new_key(est_server: EstServer, tmp_path: object) -> None:
    cp, kp, old = await _enrolled(est_server, "re-1", tmp_path)
    new_key = ec.generate_private_key(ec.SECP256R1())
    async with est_server.client("gateway", client_cert=cp, client_key=kp) as c:
        result = await c.reenroll(build_csr(new_key, old.subject, sans=[x509.DNSName("re-1.example")]))
    assert result.certificate.subject == old.subject and result.certificate.serial_number != old.serial_number


async def test_reenroll_rejects_changed_subject(est_server: EstServer, tmp_path: object) -> None:
    cp, kp, old = await _enrolled(est_server, "re-2", tmp_path)
    before = await est_server.issued()
    async with est_server.client("gateway", client_cert=cp, client_key=kp) as c:
        with pytest.raises(EstError) as err:
            await c.reenroll(build_csr(ec.generate_private_key(ec.SECP256R1()), name("other"),
                                       sans=[x509.DNSName("re-2.example")]))
    assert err.value.status == 403
    async with est_server.client("gateway", client_cert=cp, client_key=kp) as c:
        with pytest.raises(EstError) as err:
            await c.reenroll(build_csr(ec.generate_private_key(ec.SECP256R1()), old.subject,
                                       sans=[x509.DNSName("changed.example")]))
    assert err.value.status == 403
    assert await est_server.issued() == before


async def test_reenroll_rejects_revoked_certificate(est_server: EstServer, tmp_path: object) -> None:
    cp, kp, old = await _enrolled(est_server, "re-3", tmp_path)
    await est_server.issuer.revoke(old.serial_number, "key_compromise")
    before = await est_server.issued()
    async with est_server.client("gateway", client_cert=cp, client_key=kp) as c:
        with pytest.raises(EstError) as err:
            await c.reenroll(build_csr(ec.generate_private_key(ec.SECP256R1()), old.subject,
                                       sans=[x509.DNSName("re-3.example")]))
    assert err.value.status == 403 and "revoked" in err.value.detail
    assert await est_server.issued() == before


async def test_reenroll_rejects_retired_certificate(est_server: EstServer, tmp_path: object) -> None:
    cp, kp, old = await _enrolled(est_server, "re-4", tmp_path)
    await est_server.issuer.retire(old.serial_number)
    before = await est_server.issued()
    async with est_server.client("gateway", client_cert=cp, client_key=kp) as c:
        with pytest.raises(EstError) as err:
            await c.reenroll(build_csr(ec.generate_private_key(ec.SECP256R1()), old.subject,
                                       sans=[x509.DNSName("re-4.example")]))
    assert err.value.status == 403
    assert await est_server.issued() == before


async def test_reenroll_without_client_cert_is_403(est_server: EstServer) -> None:
    body, _ = csr_b64("re-5")
    status, _, _ = await raw(est_server, "POST", "/.well-known/est/simplereenroll", body=body, auth=True)
    assert status == 403
    assert await est_server.issued() == 0


async def test_reenroll_with_cert_not_issued_by_us_is_403(est_server: EstServer) -> None:
    """The IDevID chains to a configured trust store but is not in our ledger."""
    body, _ = csr_b64("sensor-000001")
    status, _, _ = await raw(est_server, "POST", "/.well-known/est/bootstrap/simplereenroll", body=body,
                             cert=(str(est_server.init.certs_dir / "example-idevid.pem"),
                                   str(est_server.init.certs_dir / "example-idevid.key")))
    assert status == 403
    assert await est_server.issued() == 0


# --- PoP linking (RFC 7030 §3.5) ------------------------------------------------------------------


async def test_pop_linked_enroll_on_tls12(est_server: EstServer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    async with est_server.basic("pop", pop=True) as c:
        result = await c.enroll(lambda ch: build_csr(key, name("pop-1"), challenge=ch))
    assert result.certificate.subject == name("pop-1")


async def test_pop_with_wrong_binding_is_400(est_server: EstServer) -> None:
    body, _ = csr_b64("pop-2", challenge="AAAAAAAAAAAAAAAA")
    status, _, text = await raw(est_server, "POST", "/.well-known/est/pop/simpleenroll", body=body, auth=True,
                                tls13=False)
    assert status == 400 and b"tls-unique" in text
    assert await est_server.issued() == 0


async def test_pop_on_tls13_is_refused_clearly(est_server: EstServer) -> None:
    body, _ = csr_b64("pop-3", challenge="AAAAAAAAAAAAAAAA")
    status, _, text = await raw(est_server, "POST", "/.well-known/est/pop/simpleenroll", body=body, auth=True)
    assert status == 400 and b"TLSv1.3" in text and b"tls-exporter" in text
    assert await est_server.issued() == 0


async def test_libest_pop_capture_is_refused_on_another_session(est_server: EstServer) -> None:
    """The captured CSR names the capture proxy's session: replayed here it must fail."""
    from pathlib import Path

    body = (Path(__file__).parent / "captures" / "libest-client-simpleenroll-pop.b64").read_bytes()
    status, _, _ = await raw(est_server, "POST", "/.well-known/est/pop/simpleenroll", body=body, auth=True,
                             tls13=False)
    assert status == 400
    assert await est_server.issued() == 0


# --- serverkeygen (RFC 7030 §4.4) -----------------------------------------------------------------


async def test_serverkeygen_plain_pkcs8(est_server: EstServer) -> None:
    csr, _ = make_csr("skg-1", sans=[x509.DNSName("skg-1.example")])
    status, headers, body = await raw(est_server, "POST", "/.well-known/est/skg/serverkeygen", auth=True,
                                      body=base64.b64encode(csr.public_bytes(serialization.Encoding.DER)))
    assert status == 200, body
    assert headers["Content-Type"].startswith("multipart/mixed; boundary=")
    result = wire.parse_serverkeygen_response(headers["Content-Type"], body)
    assert result.key_content_type == "application/pkcs8" and not result.encrypted
    key = serialization.load_der_private_key(result.key_der, None)
    (cert,) = result.certificates
    assert cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo) == \
        key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert cert.subject == name("skg-1")


async def test_serverkeygen_encrypted_to_kek(est_server: EstServer) -> None:
    csr_key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(csr_key, name("skg-kek"), extra_attributes=[(asn1.Oid.DECRYPT_KEY_IDENTIFIER, KEK_ID)])
    async with est_server.basic("skg") as c:
        result = await c.serverkeygen(csr, kek=serverkeygen_cms.KekRecipient(KEK_ID, KEK))
    assert result.encrypted and result.certificate.subject == name("skg-kek")


async def test_serverkeygen_unknown_kek_is_400(est_server: EstServer) -> None:
    csr_key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(csr_key, name("skg-x"), extra_attributes=[(asn1.Oid.DECRYPT_KEY_IDENTIFIER, b"nope")])
    async with est_server.basic("skg") as c:
        with pytest.raises(EstError) as err:
            await c.serverkeygen(csr)
    assert err.value.status == 400
    assert await est_server.issued() == 0


async def test_serverkeygen_refused_for_manual_profile(est_server: EstServer) -> None:
    body, _ = csr_b64("manual-skg")
    status, _, _ = await raw(est_server, "POST", "/.well-known/est/manual/serverkeygen", body=body, auth=True)
    assert status == 501
    assert await est_server.issued() == 0


async def test_est_is_https_only(est_server: EstServer) -> None:
    """Plain HTTP to the same app is refused (RFC 7030 §3.2.1)."""
    from aiohttp.test_utils import TestClient, TestServer

    from enroll.app import create_app

    app = create_app(est_server.config)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/.well-known/est/cacerts")
        assert resp.status == 403


async def test_client_refuses_untrusted_server(est_server: EstServer) -> None:
    """Explicit trust anchor: the manufacturer CA does not vouch for the server."""
    c = EstClient(est_server.base_https, trust_anchor=est_server.init.certs_dir / "manufacturer-ca.pem")
    async with c:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await c.cacerts()
