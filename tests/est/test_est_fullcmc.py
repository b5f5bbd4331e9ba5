"""/fullcmc (RFC 7030 §4.3, RFC 5272/6402) end to end over TLS: Full PKI Requests built, and
Full PKI Responses decoded, with pyasn1-alt-modules (tests/est/cmc_pyasn1.py), never with the
server's own codec. Every refusal is checked for a CMC failure and for nothing issued."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5652, rfc6402

from est.client import EnrollmentPending
from est.errors import EstError
from tests.est import cmc_pyasn1 as P
from tests.est.test_est_server import raw
from tests.harness import EstServer, RunningServer
from tests.support import make_csr

CMC_REQUEST = "application/pkcs7-mime; smime-type=CMC-request"
CMC_RESPONSE = "application/pkcs7-mime; smime-type=CMC-response"
SUCCESS, FAILED, PENDING, NO_SUPPORT = 0, 2, 3, 4
BAD_REQUEST, BAD_MESSAGE_CHECK, BAD_IDENTITY = 2, 1, 7


def spki(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def request(csr: x509.CertificateSigningRequest, *, tid: int | None = 4711, nonce: bytes = b"nonce-1",
            bpid: int = 1) -> bytes:
    controls = []
    if tid is not None:
        controls.append(P.control(bpid + 1, P.TRANSACTION_ID, univ.Integer(tid)))
    controls.append(P.control(bpid + 2, P.SENDER_NONCE, univ.OctetString(nonce)))
    return P.pki_data(controls, [P.pkcs10_request(bpid, csr)])


async def post(srv: EstServer, der: bytes, *, label: str = "", auth: bool = True,
               cert: tuple[str, str] | None = None, content_type: str = CMC_REQUEST
               ) -> tuple[int, dict[str, str], bytes]:
    path = f"/.well-known/est/{label + '/' if label else ''}fullcmc"
    return await raw(srv, "POST", path, body=base64.b64encode(der), auth=auth, cert=cert,
                     headers={"Content-Type": content_type})


def decoded(status: int, headers: dict[str, str], body: bytes) -> P.Response:
    assert headers["Content-Type"] == CMC_RESPONSE, (status, body[:200])
    return P.decode_response(base64.b64decode(body))


# --- success ------------------------------------------------------------------------------------


async def test_fullcmc_pkcs10_issues_certificate_in_pki_response(est_server: EstServer) -> None:
    csr, key = make_csr("cmc-1")
    status, headers, body = await post(est_server, P.unsigned(request(csr)))
    assert status == 200
    resp = decoded(status, headers, body)
    assert (resp.status, resp.body_list) == (SUCCESS, [1])
    assert resp.transaction_id == 4711 and resp.recipient_nonce == b"nonce-1"  # RFC 5272 §6.6
    assert resp.signer_infos == 0  # unsigned: TLS authenticates the server (RFC 7030 §3.3)
    (cert,) = resp.certificates
    assert spki(cert.public_key()) == spki(key.public_key())
    assert cert.subject.rfc4514_string() == "CN=cmc-1"
    assert await est_server.issued() == 1
    [row] = await est_server.issuer.ledger.audit_records(1, event="issue")
    assert row.ok


async def test_fullcmc_signed_by_the_request_key_issues(est_server: EstServer) -> None:
    csr, key = make_csr("cmc-signed")
    status, headers, body = await post(est_server, P.signed(request(csr), key))
    resp = decoded(status, headers, body)
    assert status == 200 and resp.status == SUCCESS
    assert spki(resp.certificates[0].public_key()) == spki(key.public_key())
    assert await est_server.issued() == 1


async def test_fullcmc_signed_by_the_tls_client_certificate_issues(est_server: EstServer) -> None:
    certs = est_server.init.certs_dir
    client_cert = x509.load_pem_x509_certificate((certs / "example-client.pem").read_bytes())
    client_key = serialization.load_pem_private_key((certs / "example-client.key").read_bytes(), None)
    assert isinstance(client_key, ec.EllipticCurvePrivateKey)
    csr, key = make_csr("cmc-mtls")
    status, headers, body = await post(est_server, P.signed(request(csr), client_key, cert=client_cert),
                                       auth=False, cert=(str(certs / "example-client.pem"),
                                                         str(certs / "example-client.key")))
    resp = decoded(status, headers, body)
    assert status == 200 and resp.status == SUCCESS
    assert await est_server.issued() == 1


async def test_fullcmc_same_transaction_id_returns_the_same_certificate(est_server: EstServer) -> None:
    csr, _ = make_csr("cmc-idem")
    first = decoded(*await post(est_server, P.unsigned(request(csr, tid=99))))
    again = decoded(*await post(est_server, P.unsigned(request(csr, tid=99, nonce=b"nonce-2"))))
    assert first.certificates == again.certificates and again.recipient_nonce == b"nonce-2"
    assert await est_server.issued() == 1


async def test_fullcmc_same_transaction_id_with_another_key_is_refused(est_server: EstServer) -> None:
    csr, _ = make_csr("cmc-tid")
    assert decoded(*await post(est_server, P.unsigned(request(csr, tid=5)))).status == SUCCESS
    other, _ = make_csr("cmc-tid")
    status, headers, body = await post(est_server, P.unsigned(request(other, tid=5)))
    resp = decoded(status, headers, body)
    assert 400 <= status < 500 and resp.status == FAILED and resp.fail_info is not None
    assert resp.certificates == []
    assert await est_server.issued() == 1


async def test_fullcmc_pending_then_polled_with_same_transaction_id(est_server: EstServer) -> None:
    csr, key = make_csr("cmc-manual")
    der = P.unsigned(request(csr, tid=321))
    status, headers, body = await post(est_server, der, label="manual")
    resp = decoded(status, headers, body)
    assert status == 200 and resp.status == PENDING and resp.pend_token and headers["Retry-After"] == "5"
    assert resp.certificates == [] and await est_server.issued() == 0
    (pending,) = await est_server.issuer.list_pending()
    assert await est_server.issuer.approve(pending.id, "tester")
    resp = decoded(*await post(est_server, der, label="manual"))
    assert resp.status == SUCCESS and spki(resp.certificates[0].public_key()) == spki(key.public_key())
    assert await est_server.issued() == 1


# --- authentication -----------------------------------------------------------------------------


async def test_fullcmc_without_credentials_is_401(est_server: EstServer) -> None:
    csr, _ = make_csr("cmc-anon")
    status, headers, _ = await post(est_server, P.unsigned(request(csr)), auth=False)
    assert status == 401 and "WWW-Authenticate" in headers
    assert await est_server.issued() == 0


async def test_fullcmc_wrong_password_is_cmc_failure_bad_identity(est_server: EstServer) -> None:
    csr, _ = make_csr("cmc-wrong")
    token = base64.b64encode(f"{est_server.init.est_user}:wrong".encode()).decode()
    status, headers, body = await raw(est_server, "POST", "/.well-known/est/fullcmc",
                                      body=base64.b64encode(P.unsigned(request(csr))),
                                      headers={"Content-Type": CMC_REQUEST, "Authorization": f"Basic {token}"})
    resp = decoded(status, headers, body)
    assert status == 401 and "WWW-Authenticate" in headers
    assert (resp.status, resp.fail_info, resp.certificates) == (FAILED, BAD_IDENTITY, [])
    assert await est_server.issued() == 0


async def test_fullcmc_other_content_type_is_415(est_server: EstServer) -> None:
    csr, _ = make_csr("cmc-ct")
    status, _, _ = await post(est_server, P.unsigned(request(csr)), content_type="application/pkcs10")
    assert status == 415
    assert await est_server.issued() == 0


# --- hostile requests ---------------------------------------------------------------------------


def _nested() -> bytes:
    csr, key = make_csr("cmc-nested")
    inner = P.signed(request(csr), key)
    return P.signed(inner, key, econtent_type=rfc5652.id_signedData)


def _two_requests() -> bytes:
    a, _ = make_csr("cmc-a")
    b, _ = make_csr("cmc-b")
    return P.unsigned(P.pki_data([], [P.pkcs10_request(1, a), P.pkcs10_request(2, b)]))


def _unknown_control() -> bytes:
    csr, _ = make_csr("cmc-unknown")
    ctl = P.control(2, univ.ObjectIdentifier("1.3.6.1.4.1.99999.1"), univ.Integer(1))
    return P.unsigned(P.pki_data([ctl], [P.pkcs10_request(1, csr)]))


def _identification() -> bytes:
    csr, _ = make_csr("cmc-ident")
    ctl = P.control(2, P.IDENTIFICATION, rfc6402.char.UTF8String("someone"))
    return P.unsigned(P.pki_data([ctl], [P.pkcs10_request(1, csr)]))


def _body_part_reuse() -> bytes:
    csr, _ = make_csr("cmc-reuse")
    ctl = P.control(1, P.TRANSACTION_ID, univ.Integer(1))
    return P.unsigned(P.pki_data([ctl], [P.pkcs10_request(1, csr)]))


def _body_part_zero() -> bytes:
    csr, _ = make_csr("cmc-zero")
    return P.unsigned(P.pki_data([], [P.pkcs10_request(0, csr)]))


def _cms_sequence() -> bytes:
    csr, key = make_csr("cmc-cms")
    inner = P.signed(request(csr), key)
    return P.unsigned(P.pki_data([], [P.pkcs10_request(1, csr)], cms=[(2, inner)]))


def _signed_by_other_key() -> bytes:
    csr, _ = make_csr("cmc-forged")
    other = ec.generate_private_key(ec.SECP256R1())
    return P.signed(request(csr), other)


def _signed_by_foreign_certificate() -> bytes:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "foreign")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    csr, _ = make_csr("cmc-foreign", key)
    return P.signed(request(csr), key, cert=cert)


def _garbage() -> bytes:
    return b"\x30\x03\x02\x01\x01"


def _deep_nesting() -> bytes:
    der = b"\x05\x00"
    for _ in range(3000):
        der = b"\x30\x84" + len(der).to_bytes(4, "big") + der
    return der


HOSTILE = {
    "nested-signeddata": (_nested, FAILED),
    "two-tagged-requests": (_two_requests, FAILED),
    "unknown-control": (_unknown_control, FAILED),
    "identification-not-supported": (_identification, NO_SUPPORT),
    "body-part-id-reuse": (_body_part_reuse, FAILED),
    "body-part-id-zero": (_body_part_zero, FAILED),
    "cms-sequence": (_cms_sequence, NO_SUPPORT),
    "signed-by-another-key": (_signed_by_other_key, FAILED),
    "signed-by-foreign-certificate": (_signed_by_foreign_certificate, FAILED),
    "garbage": (_garbage, FAILED),
    "deep-nesting": (_deep_nesting, FAILED),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_fullcmc_hostile_request_gets_cmc_failure_and_nothing_issued(est_server: EstServer, case: str) -> None:
    build, expected = HOSTILE[case]
    status, headers, body = await post(est_server, build())
    assert status == 400, body[:300]
    resp = decoded(status, headers, body)
    assert resp.status == expected and resp.certificates == []
    if expected == FAILED:
        assert resp.fail_info is not None
    assert await est_server.issued() == 0
    [row] = await est_server.issuer.ledger.audit_records(1)
    assert row.event == "est-fullcmc" and not row.ok


# --- our client -----------------------------------------------------------------------------------


async def test_client_enroll_cmc_and_pending_budget(est_server: EstServer) -> None:
    csr, key = make_csr("cmc-client")
    async with est_server.basic() as client:
        resp = await client.enroll_cmc(csr)
    assert spki(resp.certificates[0].public_key()) == spki(key.public_key())
    manual, _ = make_csr("cmc-client-manual")
    async with est_server.basic("manual") as client:
        with pytest.raises(EnrollmentPending):
            await client.enroll_cmc(manual, transaction_id=8)
    async with est_server.client(username=est_server.init.est_user, password="wrong") as client:
        with pytest.raises(EstError) as exc:
            await client.enroll_cmc(make_csr("cmc-client-bad")[0])
    assert exc.value.status == 401
    assert await est_server.issued() == 1


def test_cli_fullcmc(serve: RunningServer) -> None:
    w: Path = serve.work
    res = subprocess.run([sys.executable, "-m", "enroll", "est", "fullcmc", serve.base_https, "--ca-file", str(serve.ca_bundle),
                          "-u", serve.init.est_user, "-p", serve.init.est_password, "--key", str(w / "cmc.key"),
                          "--subject", "CN=cli-cmc", "-o", str(w / "cmc.pem")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    cert = x509.load_pem_x509_certificate((w / "cmc.pem").read_bytes())
    key = serialization.load_pem_private_key((w / "cmc.key").read_bytes(), None)
    assert cert.subject.rfc4514_string() == "CN=cli-cmc" and spki(cert.public_key()) == spki(key.public_key())
    assert serve.issued() == 1
