"""SCEP end to end through create_app(): the client against the real app on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.issuer import Issuer
from enroll.app import create_app
from enroll.config import Config
from enroll.setup import InitResult
from scep.asn1 import FailInfo, MessageType, PkiStatus
from scep.client import ScepClient, http_request, self_signed_signer, simple_csr
from tests.support import cached_rsa_key


@dataclass
class Scep:
    base: str
    issuer: Issuer
    challenge: str

    def client(self, profile: str | None = None, **kw: object) -> ScepClient:
        return ScepClient(self.base + "/scep" + (f"/{profile}" if profile else ""), **kw)  # type: ignore[arg-type]

    async def issued_count(self) -> int:
        return await self.issuer.ledger.count_certificates()


@pytest.fixture
async def scep(config: Config, issuer: Issuer, embedded: InitResult, aiohttp_server) -> AsyncIterator[Scep]:  # type: ignore[no-untyped-def]
    app = create_app(config, issuer=issuer)
    server: TestServer = await aiohttp_server(app, host="127.0.0.1")
    yield Scep(f"http://127.0.0.1:{server.port}", issuer, embedded.scep_challenge)


async def test_getcacaps_lists_only_what_the_profile_allows(scep: Scep) -> None:
    router = await scep.client().get_ca_caps()
    assert {"AES", "POSTPKIOperation", "Renewal", "SHA-256", "SHA-384", "SHA-512", "SCEPStandard", "DES3", "SHA-1"} == router
    mdm = await scep.client("mdm").get_ca_caps()
    assert "DES3" not in mdm and "SHA-1" not in mdm and "GetNextCACert" not in mdm


async def test_getcacert_returns_ra_first_chain(scep: Scep) -> None:
    certs = await scep.client().get_ca_cert()
    assert certs[0].subject.rfc4514_string().startswith("CN=Enroll Dev SCEP RA")
    assert "Issuing" in certs[1].subject.rfc4514_string()


async def test_enroll_with_static_challenge(scep: Scep) -> None:
    key = cached_rsa_key(4)
    result = await scep.client().enroll(simple_csr(key, "router-1", scep.challenge), key)
    assert result.status is PkiStatus.SUCCESS, result
    assert result.certificates[0].subject.rfc4514_string() == "CN=router-1"
    assert result.certificates[0].public_key() == key.public_key()


async def test_wrong_challenge_is_failure_and_issues_nothing(scep: Scep) -> None:
    key = cached_rsa_key(4)
    before = await scep.issued_count()
    result = await scep.client().enroll(simple_csr(key, "router-x", "wrong"), key)
    assert (result.status, result.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_REQUEST)
    assert result.fail_info_text
    assert await scep.issued_count() == before


async def test_one_time_challenge_is_consumed(scep: Scep) -> None:
    otc = await scep.issuer.create_one_time_challenge("mdm", 60)
    key = cached_rsa_key(5)
    first = await scep.client("mdm").enroll(simple_csr(key, "phone-1", otc), key)
    assert first.status is PkiStatus.SUCCESS
    before = await scep.issued_count()
    key2 = cached_rsa_key(6)
    again = await scep.client("mdm").enroll(simple_csr(key2, "phone-2", otc), key2)
    assert (again.status, again.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_REQUEST)
    assert await scep.issued_count() == before


async def test_retransmitted_pkcsreq_returns_the_same_certificate(scep: Scep) -> None:
    key = cached_rsa_key(7)
    csr = simple_csr(key, "router-2", scep.challenge)
    c = scep.client()
    one = await c.enroll(csr, key, transaction_id="TX-SAME")
    two = await c.enroll(csr, key, transaction_id="TX-SAME")
    assert one.status is two.status is PkiStatus.SUCCESS
    assert one.certificates[0] == two.certificates[0]


async def test_same_transaction_with_another_key_is_refused(scep: Scep) -> None:
    key = cached_rsa_key(8)
    c = scep.client()
    assert (await c.enroll(simple_csr(key, "router-3", scep.challenge), key, transaction_id="TX-K")).status is PkiStatus.SUCCESS
    before = await scep.issued_count()
    other = cached_rsa_key(9)
    res = await c.enroll(simple_csr(other, "router-3", scep.challenge), other, transaction_id="TX-K")
    assert (res.status, res.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_REQUEST)
    assert await scep.issued_count() == before


async def test_renewal_signed_by_our_certificate(scep: Scep) -> None:
    key = cached_rsa_key(10)
    c = scep.client("anytime")
    first = await c.enroll(simple_csr(key, "router-4", scep.challenge), key)
    old = first.certificates[0]
    new_key = cached_rsa_key(11)
    for mtype in (MessageType.RENEWAL_REQ, MessageType.PKCS_REQ):
        res = await c.renew(simple_csr(new_key, "router-4"), old, key, message_type=mtype,
                            transaction_id=f"RENEW-{int(mtype)}")
        assert res.status is PkiStatus.SUCCESS, res
        assert res.certificates[0].public_key() == new_key.public_key()


async def test_renewal_before_the_window_is_refused(scep: Scep) -> None:
    """windowed: renewal_window_days = 60 of 365: a fresh certificate may not renew yet."""
    key = cached_rsa_key(10)
    c = scep.client("windowed")
    old = (await c.enroll(simple_csr(key, "router-w", scep.challenge), key)).certificates[0]
    before = await scep.issued_count()
    res = await c.renew(simple_csr(cached_rsa_key(11), "router-w"), old, key)
    assert (res.status, res.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_REQUEST)
    assert res.fail_info_text == "renewal not allowed for this certificate now"
    assert await scep.issued_count() == before
    audit = [r.reason or "" for r in await scep.issuer.ledger.audit_records(5)]
    assert any("too early to renew" in r for r in audit)


async def test_self_signed_renewalreq_is_refused(scep: Scep) -> None:
    key = cached_rsa_key(12)
    before = await scep.issued_count()
    fake_old = self_signed_signer(key, x509.Name.from_rfc4514_string("CN=router-5"))
    res = await scep.client().renew(simple_csr(cached_rsa_key(13), "router-5"), fake_old, key)
    assert (res.status, res.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_REQUEST)
    assert await scep.issued_count() == before


async def test_manual_approval_then_poll(scep: Scep) -> None:
    key = cached_rsa_key(14)
    csr = simple_csr(key, "manual-1", scep.challenge)
    c = scep.client("manual")
    signer = self_signed_signer(key, csr.subject)
    res = await c.enroll(csr, key, signer=signer)
    assert res.status is PkiStatus.PENDING
    assert (await c.poll(res.transaction_id, csr.subject, signer, key)).status is PkiStatus.PENDING
    pending = await scep.issuer.list_pending()
    assert await scep.issuer.approve(pending[0].id, "tester")
    done = await c.poll(res.transaction_id, csr.subject, signer, key)
    assert done.status is PkiStatus.SUCCESS
    assert done.certificates[0].public_key() == key.public_key()


async def test_manual_reject_then_poll_fails(scep: Scep) -> None:
    key = cached_rsa_key(15)
    csr = simple_csr(key, "manual-2", scep.challenge)
    c = scep.client("manual")
    signer = self_signed_signer(key, csr.subject)
    res = await c.enroll(csr, key, signer=signer)
    pending = [p for p in await scep.issuer.list_pending() if p.transaction_id == res.transaction_id]
    assert await scep.issuer.reject(pending[0].id, "tester", "no")
    done = await c.poll(res.transaction_id, csr.subject, signer, key)
    assert (done.status, done.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_REQUEST)


async def test_getcert_and_getcrl(scep: Scep) -> None:
    key = cached_rsa_key(16)
    c = scep.client()
    cert = (await c.enroll(simple_csr(key, "router-6", scep.challenge), key)).certificates[0]
    got = await c.get_cert(cert.serial_number, cert, key)
    assert got.status is PkiStatus.SUCCESS and got.certificates == (cert,)
    crl = await c.get_crl(cert, key)
    assert crl.status is PkiStatus.SUCCESS and len(crl.crls) == 1
    missing = await c.get_cert(12345, cert, key)
    assert (missing.status, missing.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_CERT_ID)


@pytest.mark.parametrize("path", ["/scep/pkiclient.exe", "/cgi-bin/pkiclient.exe", "/certsrv/mscep/mscep.dll",
                                  "/scep/router/pkiclient.exe", "/scep/router/"])
async def test_hard_coded_paths(scep: Scep, path: str) -> None:
    resp = await http_request(scep.base + path + "?operation=GetCACaps")
    assert resp.status == 200 and b"POSTPKIOperation" in resp.body


async def test_unknown_profile_is_404(scep: Scep) -> None:
    assert (await http_request(scep.base + "/scep/nope?operation=GetCACaps")).status == 404
    assert (await http_request(scep.base + "/scep/gateway?operation=GetCACaps")).status == 404  # no scep table


async def test_garbage_is_400(scep: Scep) -> None:
    resp = await http_request(scep.base + "/scep?operation=PKIOperation", "POST", b"\x30\x03junk")
    assert resp.status == 400
    resp = await http_request(scep.base + "/scep?operation=PKIOperation&message=%%%")
    assert resp.status == 400


async def test_pkioperation_over_get(scep: Scep) -> None:
    key = cached_rsa_key(17)
    c = scep.client()
    c._caps = {"AES", "SHA-256"}  # no POSTPKIOperation: the client falls back to GET
    res = await c.enroll(simple_csr(key, "router-get", scep.challenge), key)
    assert res.status is PkiStatus.SUCCESS


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


async def test_renewal_keeping_key_and_transaction_id_gets_a_new_certificate(scep: Scep) -> None:
    """scepclient and certmonger renew with the same key and the same transactionID."""
    key = cached_rsa_key(18)
    c = scep.client("anytime")
    first = await c.enroll(simple_csr(key, "same-key", scep.challenge), key, transaction_id="KEEP")
    old = first.certificates[0]
    again = await c.renew(simple_csr(key, "same-key", scep.challenge), old, key, transaction_id="KEEP",
                          message_type=MessageType.PKCS_REQ)
    assert again.status is PkiStatus.SUCCESS
    assert again.certificates[0].serial_number != old.serial_number
    retransmit = await c.renew(simple_csr(key, "same-key", scep.challenge), old, key, transaction_id="KEEP",
                               message_type=MessageType.PKCS_REQ)
    assert retransmit.certificates[0] == again.certificates[0]
