"""SCEP security rules (issue 11): each refusal is a signed FAILURE, issues nothing, and is audited.

Through the real app (``create_app``) on 127.0.0.1, SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import pytest
from asn1crypto import cms as acms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from ca.errors import CAError, ConfigError, LedgerError, RejectReason
from ca.issuer import Issuer
from scep import cms
from scep.asn1 import FailInfo, PkiStatus
from scep.client import self_signed_signer, simple_csr
from scep.message import PkiMessage, new_nonce
from scep.settings import parse_profile
from tests.support import cached_rsa_key
from tests.scep.test_scep_negative import Env, assert_failure, env  # noqa: F401  (env is a fixture)


async def _audit_reasons(issuer: Issuer, limit: int = 20) -> list[str]:
    return [r.reason or "" for r in await issuer.ledger.audit_records(limit)]


def _pkcsreq(env: Env, csr: x509.CertificateSigningRequest, key: Any, *, signer: x509.Certificate | None = None,
             txid: str, nonce: bytes | None = None, mtype: int = 19, digest: str = "sha256",
             cipher: str = "aes128") -> bytes:
    signer = signer or self_signed_signer(key, csr.subject)
    msg = PkiMessage(message_type=mtype, transaction_id=txid, sender_nonce=nonce or new_nonce())
    return msg.build(csr.public_bytes(serialization.Encoding.DER), signer_cert=signer, sign=cms.rsa_signer(key),
                     recipient=env.ra, cipher=cipher, digest=digest)


def _csr(key: Any, cn: str, challenge: str | None, sans: Sequence[str] = ()) -> x509.CertificateSigningRequest:
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    if challenge:
        b = b.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return b.sign(key, hashes.SHA256())


# --- 1. manual approval: what was approved is what is issued ------------------------------------

async def test_resend_after_approval_with_another_csr_is_refused(env: Env) -> None:
    """The reproduction: CN=printer-7 approved, a resend with the same key and transactionID asks
    for CN=domain-admin. Refused; the poll then gets exactly the approved CSR's certificate."""
    key = cached_rsa_key(40)
    approved_csr = simple_csr(key, "printer-7", env.challenge)
    signer = self_signed_signer(key, approved_csr.subject)
    first = await env.send(_pkcsreq(env, approved_csr, key, signer=signer, txid="TX-PRINTER-7"), "manual")
    assert first.status is PkiStatus.PENDING
    pending = [p for p in await env.issuer.list_pending() if p.transaction_id == "TX-PRINTER-7"]
    assert await env.issuer.approve(pending[0].id, "operator")

    swapped = simple_csr(key, "domain-admin", env.challenge)
    await assert_failure(env, _pkcsreq(env, swapped, key, txid="TX-PRINTER-7"), FailInfo.BAD_REQUEST, "manual")
    assert any("different CSR" in r for r in await _audit_reasons(env.issuer)), "the refusal is audited"
    assert not [c for c in await env.issuer.ledger.list_certificates() if c.subject == "CN=domain-admin"]

    again = await env.send(_pkcsreq(env, approved_csr, key, signer=signer, txid="TX-PRINTER-7"), "manual")
    assert again.status is PkiStatus.SUCCESS
    certs, _ = again.open(key.decrypt, signer)
    assert certs[0].subject.rfc4514_string() == "CN=printer-7"


async def test_resend_after_issuance_with_another_csr_is_refused(env: Env) -> None:
    """Once issued, the same transaction still answers only for the CSR it was issued from."""
    key = cached_rsa_key(41)
    csr = simple_csr(key, "printer-8", env.challenge)
    assert (await env.send(_pkcsreq(env, csr, key, txid="TX-PRINTER-8"))).status is PkiStatus.SUCCESS
    await assert_failure(env, _pkcsreq(env, simple_csr(key, "domain-admin", env.challenge), key,
                                        txid="TX-PRINTER-8"), FailInfo.BAD_REQUEST)
    assert any("different CSR" in r for r in await _audit_reasons(env.issuer))


# --- 2. renewal keeps subject and subjectAltName ----------------------------------------------

async def test_renewal_must_keep_the_subject_alt_name(env: Env) -> None:
    key, new_key = cached_rsa_key(42), cached_rsa_key(43)
    csr = _csr(key, "rtr-san", env.challenge, ["a.example"])
    signer = self_signed_signer(key, csr.subject)
    first = await env.send(_pkcsreq(env, csr, key, signer=signer, txid="SAN-1"))
    old = first.open(key.decrypt, signer)[0][0]
    assert old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["a.example"]
    for n, sans in enumerate((["b.example"], [], ["a.example", "b.example"])):
        rep = await assert_failure(env, _pkcsreq(env, _csr(new_key, "rtr-san", None, sans), key, signer=old,
                                                  txid=f"SAN-R{n}"), FailInfo.BAD_REQUEST)
        assert rep.fail_info_text == "renewal must keep the subjectAltName"
    assert any("renewal changes the subjectAltName" in r for r in await _audit_reasons(env.issuer))
    ok = await env.send(_pkcsreq(env, _csr(new_key, "rtr-san", None, ["a.example"]), key, signer=old, txid="SAN-OK"))
    assert ok.status is PkiStatus.SUCCESS


async def test_renewal_must_keep_the_subject_byte_for_byte(env: Env) -> None:
    """CN=x as PrintableString vs UTF8String: equal to cryptography's Name, not byte-equal."""
    key = cached_rsa_key(44)
    csr = _csr(key, "rtr-der", env.challenge)
    signer = self_signed_signer(key, csr.subject)
    cert = (await env.send(_pkcsreq(env, csr, key, signer=signer, txid="DER-1"))).open(key.decrypt, signer)[0][0]
    printable = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rtr-der", x509.name._ASN1Type.PrintableString)])
    assert printable.public_bytes() != cert.subject.public_bytes()
    csr = x509.CertificateSigningRequestBuilder().subject_name(printable).sign(cached_rsa_key(45), hashes.SHA256())
    rep = await assert_failure(env, _pkcsreq(env, csr, key, signer=cert, txid="DER-R"), FailInfo.BAD_REQUEST)
    assert rep.fail_info_text == "renewal must keep the subject"


# --- 3. an initial request is signed with the CSR's own key ------------------------------------

async def test_pkcsreq_signed_by_another_key_is_refused(env: Env) -> None:
    """RFC 8894 §2.3: the self-signed signer of an initial enrollment carries the CSR's key."""
    csr_key, signer_key = cached_rsa_key(46), cached_rsa_key(47)
    csr = simple_csr(csr_key, "someone", env.challenge)
    signer = self_signed_signer(signer_key, csr.subject)
    await assert_failure(env, _pkcsreq(env, csr, signer_key, signer=signer, txid="FOREIGN-SIGNER"),
                          FailInfo.BAD_MESSAGE_CHECK)
    assert any(r.startswith("BAD_MESSAGE_CHECK: PKCSReq signer key is not the CSR's key")
               for r in await _audit_reasons(env.issuer))


# --- 4. the hash inside signatureAlgorithm is checked too; MD5 only with allow_md5 ---------------

def _resign(der: bytes, key: rsa.RSAPrivateKey, sig_alg: str, hash_alg: hashes.HashAlgorithm) -> bytes:
    """Re-sign the SignerInfo with ``sig_alg`` (e.g. sha1_rsa), keeping digestAlgorithm as built."""
    info = acms.ContentInfo.load(der)
    si = info["content"]["signer_infos"][0]
    si["signature_algorithm"] = {"algorithm": sig_alg}
    si["signature"] = key.sign(si["signed_attrs"].untag().dump(force=True), padding.PKCS1v15(), hash_alg)
    return bytes(info.dump(force=True))


async def test_sha1_with_rsa_signature_is_refused_where_sha1_is_not_allowed(env: Env) -> None:
    key = cached_rsa_key(48)
    der = _resign(_pkcsreq(env, simple_csr(key, "sha1sig", env.challenge), key, txid="SHA1SIG"), key,
                  "sha1_rsa", hashes.SHA1())
    await assert_failure(env, der, FailInfo.BAD_ALG, "modern")
    assert any(r.startswith("BAD_ALG: signature algorithm sha1_rsa") for r in await _audit_reasons(env.issuer))


async def test_md5_digest_is_refused_even_where_legacy_algorithms_are_allowed(env: Env) -> None:
    """anytime has allow_legacy = true but not allow_md5."""
    key = cached_rsa_key(49)
    der = _pkcsreq(env, simple_csr(key, "md5", env.challenge), key, txid="MD5-DIGEST", digest="md5")
    await assert_failure(env, der, FailInfo.BAD_ALG, "anytime")
    assert "BAD_ALG: digest md5 not allowed" in await _audit_reasons(env.issuer)


async def test_md5_with_rsa_signature_is_refused_even_where_legacy_algorithms_are_allowed(env: Env) -> None:
    """digestAlgorithm SHA-1 (allowed by allow_legacy), signatureAlgorithm md5WithRSAEncryption."""
    key = cached_rsa_key(49)
    der = _resign(_pkcsreq(env, simple_csr(key, "md5", env.challenge), key, txid="MD5-SIG", digest="sha1"),
                  key, "md5_rsa", hashes.MD5())
    await assert_failure(env, der, FailInfo.BAD_ALG, "anytime")
    reasons = await _audit_reasons(env.issuer)
    assert any(r.startswith("BAD_ALG: signature algorithm md5_rsa") for r in reasons), reasons


async def test_allow_md5_profile_accepts_md5(env: Env) -> None:
    key = cached_rsa_key(50)
    der = _resign(_pkcsreq(env, simple_csr(key, "md5-ok", env.challenge), key, txid="MD5-OK", digest="md5"),
                  key, "md5_rsa", hashes.MD5())
    rep = await env.send(der, "md5ok")
    assert rep.status is PkiStatus.SUCCESS


def test_allow_md5_is_a_boolean_and_off_by_default() -> None:
    assert "md5" not in parse_profile("p", {"allow_legacy": True}).digests
    assert "md5" in parse_profile("p", {"allow_md5": True}).digests
    with pytest.raises(ConfigError) as err:
        parse_profile("p", {"allow_md5": "yes"})
    assert err.value.key == "profiles.p.scep.allow_md5"


# --- 5. nonces: recorded only after authorization, pruned by age --------------------------------

async def test_unauthenticated_pkcsreq_records_no_nonce(env: Env) -> None:
    key = cached_rsa_key(51)
    nonce = new_nonce()
    await assert_failure(env, _pkcsreq(env, simple_csr(key, "anon", "wrong"), key, txid="ANON", nonce=nonce),
                          FailInfo.BAD_REQUEST)
    assert not await env.issuer.ledger.nonce_seen("scep:router", nonce.hex())
    assert any(r == "unauthenticated: challenge missing or wrong" for r in await _audit_reasons(env.issuer))
    ok_nonce = new_nonce()
    ok = await env.send(_pkcsreq(env, simple_csr(key, "anon", env.challenge), key, txid="AUTHED", nonce=ok_nonce))
    assert ok.status is PkiStatus.SUCCESS
    assert await env.issuer.ledger.nonce_seen("scep:router", ok_nonce.hex())


async def test_replay_of_a_refused_request_is_refused_again(env: Env) -> None:
    """Right challenge, refused by policy (EC key on the RSA-only router profile): nothing is
    written but the refusal (the unit of work records a nonce only with what it issues), so the
    same bytes again get the same refusal and still issue nothing."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec-router")])).add_attribute(
        x509.oid.AttributeOID.CHALLENGE_PASSWORD, env.challenge.encode()).sign(key, hashes.SHA256())
    now = dt.datetime.now(dt.timezone.utc)
    signer = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(csr.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
              .sign(key, hashes.SHA256()))
    der = _pkcsreq(env, csr, key, signer=signer, txid="EC-REPLAY")
    first = await assert_failure(env, der, FailInfo.BAD_ALG)
    assert first.fail_info_text == "algorithm not allowed"
    replay = await assert_failure(env, der, FailInfo.BAD_ALG)
    assert replay.fail_info_text == "algorithm not allowed"


async def test_old_nonces_are_pruned(issuer: Issuer) -> None:
    ledger = issuer.ledger
    t0 = time.time()
    assert await ledger.remember_nonce("scep:router", "aa" * 16, t0)
    assert not await ledger.remember_nonce("scep:router", "aa" * 16, t0 + 60)  # replay within the window
    assert await ledger.remember_nonce("scep:router", "bb" * 16, t0 + 8 * 86400)  # > 7 days later: prunes
    assert not await ledger.nonce_seen("scep:router", "aa" * 16)
    assert await ledger.nonce_seen("scep:router", "bb" * 16)
    assert await ledger.prune_nonces(t0 + 9 * 86400) == 1
    assert not await ledger.nonce_seen("scep:router", "bb" * 16)


# --- 6. failInfoText is fixed public text -------------------------------------------------------

SECRET = "could not connect to postgresql://enroll:hunter2@db.internal:5432/enroll"


async def test_core_error_detail_never_reaches_the_client(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CAError raised inside the core (the ledger down at the unit of work's read)."""
    async def down(*_a: Any, **_kw: Any) -> Any:
        raise LedgerError(SECRET)

    monkeypatch.setattr(env.issuer.ledger, "gate", down)
    key = cached_rsa_key(52)
    der = _pkcsreq(env, simple_csr(key, "outage", env.challenge), key, txid="OUTAGE-1")
    rep = await assert_failure(env, der, FailInfo.BAD_REQUEST)
    assert rep.fail_info_text == "service unavailable; retry later"
    assert "hunter2" not in (rep.fail_info_text or "")
    assert any(SECRET in r for r in await _audit_reasons(env.issuer)), "the detail goes to the audit"


async def test_rejected_outcome_detail_never_reaches_the_client(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Rejected outcome from issue() (the CA backend is down) carries the detail."""
    async def down(*_a: Any, **_kw: Any) -> Any:
        raise CAError(SECRET, reason=RejectReason.UNAVAILABLE)

    monkeypatch.setattr(env.issuer.cas["issuing"].backend, "sign", down)
    key = cached_rsa_key(53)
    rep = await assert_failure(env, _pkcsreq(env, simple_csr(key, "outage-2", env.challenge), key,
                                              txid="OUTAGE-2"), FailInfo.BAD_REQUEST)
    assert rep.fail_info_text == "service unavailable; retry later"
    assert any(SECRET in r for r in await _audit_reasons(env.issuer))


# --- 7. webhook URLs ----------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["https://hooks.example/scep", "http://127.0.0.1:8080/hook", "http://127.9.9.9/h",
                                 "http://[::1]:9000/hook", "http://localhost/hook", "HTTP://LOCALHOST/hook"])
def test_webhook_url_https_or_loopback_http(url: str) -> None:
    assert parse_profile("p", {"auth": ["webhook"], "webhook_url": url}).webhook_url == url


@pytest.mark.parametrize("url", ["http://hooks.example/scep", "http://10.0.0.1/hook", "http://[::2]/h",
                                 "http://127.0.0.1.evil.example/h", "ftp://127.0.0.1/h", "https:///nohost",
                                 "http://localhost:99999/h"])
def test_webhook_url_plain_http_elsewhere_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_profile("p", {"auth": ["webhook"], "webhook_url": url})
    assert err.value.key == "profiles.p.scep.webhook_url"
