"""ca/issuer_base.py: the core's shared state, lookups and audit trail. Every acceptance and every
refusal of an authenticated requester is written; a refusal that authenticated nobody is counted
in ``refusal_counts`` and written as a sample per (event, reason class, client) (ca/ratelimit.py);
an audit write that fails is logged, never raised; our certificates are found by signature and
ledger row, byte for byte."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ca.api import AuthMethod, Channel, Issued, Requester
from ca.errors import NotFoundError
from ca.issuer import Issuer
from ca.issuer_base import (
    IssuerBase,
    IssuingCA,
    actor,
    describe,
    is_device_key,
    requester_columns,
    spki_sha256,
)
from ca.ledger import Ledger
from ca.ratelimit import RefusalSampler
from enroll.pki import DevPKI
from tests.ca.test_ratelimit import Clock
from tests.support import cached_rsa_key, make_cert, make_csr, request


async def _audit_count(issuer: Issuer) -> int:
    return len(await issuer.ledger.audit_records(1_000_000))


async def _refuse(issuer: Issuer, requester: Requester | None, *, reason: str = "401: password required",
                  remote: str | None = None) -> None:
    await issuer.audit("est-enroll", ok=False, channel=Channel.EST, profile="gateway", requester=requester,
                       reason=reason, remote=remote)


# --- audit sampling -----------------------------------------------------------------------

async def test_a_refusal_of_an_authenticated_requester_is_always_written(issuer: Issuer) -> None:
    issuer.refusals = RefusalSampler(clock=Clock())
    before = await _audit_count(issuer)
    nobody = Requester(AuthMethod.NONE, "CN=self-signed", remote="192.0.2.1")
    user = Requester(AuthMethod.BASIC, "estuser", remote="192.0.2.1")
    for _ in range(3):
        await _refuse(issuer, nobody)
        await _refuse(issuer, user)
    rows = (await issuer.ledger.audit_records(1_000_000))[: await _audit_count(issuer) - before]
    assert sorted(r.requester or "" for r in rows) == ["basic:estuser"] * 3 + ["none:CN=self-signed"]
    assert all(not r.ok and r.reason == "401: password required" for r in rows)
    assert dict(issuer.refusal_counts) == {("est-enroll", "401"): 3}  # only the unauthenticated ones


async def test_unauthenticated_refusals_are_sampled_per_client_and_reason_class(issuer: Issuer) -> None:
    issuer.refusals = RefusalSampler(clock=Clock())
    before = await _audit_count(issuer)
    for _ in range(3):
        await _refuse(issuer, None, remote="192.0.2.1")
        await _refuse(issuer, Requester(AuthMethod.NONE, "x", remote="192.0.2.2"))  # the requester's address
        await _refuse(issuer, None, remote="192.0.2.1", reason="403: no such label")
    await _refuse(issuer, None, remote="2001:db8:1:2::1")
    await _refuse(issuer, None, remote="2001:db8:1:2::99")  # the same /64: the same client
    await _refuse(issuer, Requester(AuthMethod.NONE, "x", remote="192.0.2.2"), remote="192.0.2.3")  # remote= wins
    rows = (await issuer.ledger.audit_records(1_000_000))[: await _audit_count(issuer) - before]
    assert sorted((r.reason or "")[:3] for r in rows) == ["401"] * 4 + ["403"]
    assert dict(issuer.refusal_counts) == {("est-enroll", "401"): 9, ("est-enroll", "403"): 3}


async def test_acceptances_are_written_without_none_valued_detail(issuer: Issuer) -> None:
    issuer.refusals = RefusalSampler(clock=Clock())
    for _ in range(2):
        await issuer.audit("challenge-new", ok=True, channel=Channel.ADMIN, profile="router", requester=None,
                           detail={"ttl": 60, "by": None})
    await issuer.audit("challenge-new", ok=True, channel=Channel.ADMIN, profile="router",
                       requester=actor("admin"), serial=0xBEEF, detail={"by": None})
    rows = await issuer.ledger.audit_records(3, event="challenge-new")
    assert [(r.requester, r.serial, r.detail) for r in rows] == [
        ("operator:admin", "beef", None), (None, None, {"ttl": 60}), (None, None, {"ttl": 60})]
    assert issuer.refusal_counts == {}


async def test_an_audit_write_that_fails_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    broken = IssuerBase(Ledger("sqlite:////nonexistent-dir/ledger.db"), {}, {})
    try:
        with caplog.at_level(logging.INFO, logger="enroll.audit"):
            await broken.audit("issue", ok=True, channel=Channel.EST, profile="gateway", requester=None)
    finally:
        await broken.ledger.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any('"event": "audit-write-failed"' in m and '"audit": "issue"' in m for m in messages), messages


# --- lookups ------------------------------------------------------------------------------

async def test_an_unknown_profile_is_not_found(issuer: Issuer) -> None:
    assert issuer.profile("gateway").name == "gateway"
    with pytest.raises(NotFoundError, match="no profile 'nope'"):
        issuer.profile("nope")
    with pytest.raises(NotFoundError):
        await issuer.ca_chain("nope")


async def test_our_certificate_is_found_by_signature_and_by_its_exact_ledger_row(issuer: Issuer,
                                                                                  dev_pki: DevPKI) -> None:
    out = await issuer.issue(request(make_csr("gw-base")[0]))
    assert isinstance(out, Issued), out
    cert = out.certificate
    assert await issuer.issued_by_us(cert)
    rec = await issuer.certificate_status(cert)
    assert rec is not None and rec.serial == cert.serial_number and rec.der == cert.public_bytes(Encoding.DER)
    assert await issuer.find_certificate(cert.issuer, cert.serial_number) == cert
    assert await issuer.find_certificate(cert.issuer, cert.serial_number + 1) is None
    assert await issuer.find_certificate(dev_pki.root.cert.subject, cert.serial_number) is None
    # Signed by our CA key with the same serial, but not the certificate the ledger holds.
    now = dt.datetime.now(dt.timezone.utc)
    twin = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
            .public_key(cert.public_key()).serial_number(cert.serial_number)
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(dev_pki.issuing.key, hashes.SHA256()))
    assert await issuer.issued_by_us(twin)
    assert await issuer.certificate_status(twin) is None
    foreign = make_cert(cached_rsa_key(0), "stranger")
    assert not await issuer.issued_by_us(foreign)
    assert await issuer.certificate_status(foreign) is None


async def test_remember_nonce_refuses_a_replay(issuer: Issuer) -> None:
    nonce = bytes(range(16))
    assert await issuer.remember_nonce("scep", nonce)
    assert not await issuer.remember_nonce("scep", nonce)
    assert await issuer.ledger.nonce_seen("scep", nonce.hex())


# --- helpers ------------------------------------------------------------------------------

def test_requesters_are_described_and_stored_as_method_principal_and_evidence() -> None:
    cert = make_cert(cached_rsa_key(1), "gw-1")
    der = cert.public_bytes(Encoding.DER)
    by_cert = Requester(AuthMethod.TLS_CLIENT_CERT, "CN=gw-1", cert)
    assert describe(by_cert) == "tls-client-cert:CN=gw-1" and describe(None) is None
    assert requester_columns(by_cert) == {"auth_method": "tls-client-cert", "requester": "CN=gw-1",
                                          "requester_evidence": hashlib.sha256(der).hexdigest()}
    assert requester_columns(Requester(AuthMethod.BASIC, "u"))["requester_evidence"] is None
    assert actor("admin") == Requester(AuthMethod.OPERATOR, "admin")
    assert actor(by_cert) is by_cert and actor(None) is None


def test_spki_fingerprint_and_device_key_shape() -> None:
    key = cached_rsa_key(1).public_key()
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert spki_sha256(key) == hashlib.sha256(spki).hexdigest()
    assert is_device_key("0123456789abcdef" * 2)
    assert not is_device_key("0123456789ABCDEF" * 2) and not is_device_key("abc") and not is_device_key("g" * 32)


def test_issuing_ca_template_urls() -> None:
    ca = IssuingCA("issuing", backend=None, crl_url="http://x/crl", ocsp_url="http://x/ocsp")  # type: ignore[arg-type]
    assert ca.template_urls() == {"crl_url": "http://x/crl", "ocsp_url": "http://x/ocsp", "ca_issuers_url": None}
    assert dataclasses.replace(ca, ca_issuers_url="http://x/ca").template_urls()["ca_issuers_url"] == "http://x/ca"
