"""ca/authentication.py through an Issuer, what tests/ca/test_identity.py (client certificates by
the lifecycle rule), tests/ca/test_issuer.py (passwords, challenges, renewal) and
tests/est/test_one_time_credentials.py (credentials over EST) leave out: ``authenticate`` on its
own claims (HTTP Basic, RFC 7617; static challenges, RFC 8894 §2.2; Basic plus a client
certificate, RFC 7030 §3.3; never a one-time credential, which only the issuing unit of work may
spend), the throttle refusing before any secret is checked, one-time challenges and credentials
stored by digest only and audited, and a credential's binding to its device."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.x509.oid import NameOID

from ca.api import AuthMethod, CertificatePolicy, Channel, Claims, Issued
from ca.authentication import check_credential_binding, offered_credential, offers_secret
from ca.authz import challenge_digest, credential_digest
from ca.errors import AuthenticationError, AuthorizationError, CAError, NotFoundError, ThrottledError
from ca.issuer import Issuer
from ca.ledger_schema import challenges, credentials
from ca.ratelimit import CLIENT_FREE
from ca.records import CredentialRecord
from enroll.setup import InitResult
from tests.support import make_csr, request

REMOTE = "192.0.2.10"
BASIC = (frozenset({AuthMethod.BASIC}),)
CHALLENGE = (frozenset({AuthMethod.CHALLENGE}),)
ONE_TIME = (frozenset({AuthMethod.ONE_TIME_CREDENTIAL}),)
GATEWAY = CertificatePolicy(("enroll",), ("gateway",))


def _basic(user: str, password: str | None, accept: tuple[frozenset[AuthMethod], ...] = BASIC,
           **kw: object) -> Claims:
    return Claims(accept=accept, user=user, password=password, remote=REMOTE, identity=user, namespace="est",
                  **kw)  # type: ignore[arg-type]


async def _client_failures(issuer: Issuer) -> int:
    return await issuer.ledger.count_auth_failures("client", REMOTE, 0)


# --- HTTP Basic and static challenges through authenticate() ------------------------------

async def test_basic_claims_authenticate_the_configured_user(issuer: Issuer, embedded: InitResult) -> None:
    who = await issuer.authenticate(_basic("estuser", embedded.est_password), "gateway", Channel.EST)
    assert (who.method, who.principal, who.remote, who.certificate) == (AuthMethod.BASIC, "estuser", REMOTE, None)
    assert await _client_failures(issuer) == 0


async def test_a_wrong_password_is_refused_and_counted_for_the_throttle(issuer: Issuer, embedded: InitResult) -> None:
    with pytest.raises(AuthenticationError, match="password authentication failed"):
        await issuer.authenticate(_basic("estuser", "wrong"), "gateway", Channel.EST)
    with pytest.raises(AuthenticationError, match="password authentication failed"):
        await issuer.authenticate(_basic("nobody", embedded.est_password), "gateway", Channel.EST)
    assert await _client_failures(issuer) == 2
    assert await issuer.ledger.count_auth_failures("identity", "est:estuser", 0) == 1


async def test_no_password_is_refused_but_not_counted(issuer: Issuer) -> None:
    with pytest.raises(AuthenticationError, match="password authentication required"):
        await issuer.authenticate(_basic("estuser", None), "gateway", Channel.EST)
    assert await _client_failures(issuer) == 0


async def test_a_throttled_client_is_refused_before_its_password_is_checked(issuer: Issuer,
                                                                           embedded: InitResult) -> None:
    await issuer.ledger.record_auth_failure([("client", REMOTE)] * (CLIENT_FREE + 5), time.time())
    with pytest.raises(ThrottledError) as refused:
        await issuer.authenticate(_basic("estuser", embedded.est_password), "gateway", Channel.EST)
    assert refused.value.retry_after >= 1
    assert await _client_failures(issuer) == CLIENT_FREE + 5  # the refused attempt is not counted
    # Another client is not held back by this one's failures.
    other = Claims(accept=BASIC, user="estuser", password=embedded.est_password, remote="198.51.100.7",
                   identity="estuser", namespace="est")
    assert (await issuer.authenticate(other, "gateway", Channel.EST)).principal == "estuser"


async def test_a_static_challenge_authenticates_only_on_its_profile(issuer: Issuer, embedded: InitResult) -> None:
    claims = Claims(accept=CHALLENGE, challenge=embedded.scep_challenge, remote=REMOTE, identity="CN=r1",
                    namespace="scep")
    who = await issuer.authenticate(claims, "router", Channel.SCEP)
    assert (who.method, who.principal) == (AuthMethod.CHALLENGE, "challenge")
    # A static challenge is not consumed: it authenticates again.
    assert (await issuer.authenticate(claims, "router", Channel.SCEP)).method is AuthMethod.CHALLENGE
    with pytest.raises(AuthenticationError, match="challenge missing or wrong"):
        await issuer.authenticate(claims, "mdm", Channel.SCEP)  # mdm has no static challenge
    wrong = Claims(accept=CHALLENGE, challenge="wrong", remote=REMOTE, identity="CN=r1", namespace="scep")
    with pytest.raises(AuthenticationError, match="challenge missing or wrong"):
        await issuer.authenticate(wrong, "router", Channel.SCEP)
    assert await issuer.ledger.count_auth_failures("identity", "scep:CN=r1", 0) == 2
    with pytest.raises(NotFoundError):
        await issuer.authenticate(claims, "no-such-profile", Channel.SCEP)


# --- Basic plus a client certificate -----------------------------------------------------

async def test_basic_with_a_client_certificate_needs_both(issuer: Issuer, embedded: InitResult) -> None:
    out = await issuer.issue(request(make_csr("gw-auth")[0]))
    assert isinstance(out, Issued), out
    both = (frozenset({AuthMethod.BASIC, AuthMethod.TLS_CLIENT_CERT}),)
    claims = _basic("estuser", embedded.est_password, both, certificate=out.certificate, policy=GATEWAY)
    who = await issuer.authenticate(claims, "gateway", Channel.EST)
    assert who.method is AuthMethod.TLS_CLIENT_CERT
    assert who.principal == f"estuser ({out.certificate.subject.rfc4514_string()})"
    assert who.certificate == out.certificate
    with pytest.raises(AuthenticationError, match="password authentication failed"):
        await issuer.authenticate(_basic("estuser", "wrong", both, certificate=out.certificate, policy=GATEWAY),
                                  "gateway", Channel.EST)
    with pytest.raises(AuthorizationError, match="client certificate is required"):
        await issuer.authenticate(Claims(accept=(frozenset({AuthMethod.TLS_CLIENT_CERT}),), remote=REMOTE),
                                  "gateway", Channel.EST)
    await issuer.revoke(out.serial, "superseded")
    with pytest.raises(AuthorizationError, match="revoked"):
        await issuer.authenticate(claims, "gateway", Channel.EST)


# --- one-time credentials and challenges --------------------------------------------------

async def test_authenticate_alone_never_accepts_a_one_time_credential(issuer: Issuer) -> None:
    """A one-time credential is good only in the unit of work that spends it (``Issuer.enroll``);
    ``authenticate`` spends nothing, so it fails closed rather than let a credential be reused."""
    [(rec, secret)] = await issuer.create_credentials("factory", ["SN-1"], by="admin")
    claims = _basic(rec.id, secret, ONE_TIME)
    assert offered_credential(claims) == credential_digest(rec.id, secret)
    with pytest.raises(AuthenticationError, match="one-time credential"):
        await issuer.authenticate(claims, "factory", Channel.EST)
    stored = await issuer.ledger.get_credential(rec.id)
    assert stored is not None and stored.uses_left == 1 and stored.last_used_at is None


async def test_credentials_are_stored_by_digest_revoked_once_and_audited(issuer: Issuer) -> None:
    made = await issuer.create_credentials("factory", ["SN-1", "SN-2"], ttl_seconds=600, uses=2, bind="CN",
                                           by="admin")
    (first, secret), (second, _) = made
    assert (first.bind, first.device, first.uses_left, first.created_by) == ("CN", "SN-1", 2, "operator:admin")
    stored = await issuer.ledger.run_read(lambda c: c.execute(sa.select(credentials.c.id, credentials.c.digest)
                                                              .order_by(credentials.c.id)).all())
    digests = {row.id: row.digest for row in stored}
    assert digests[first.id] == credential_digest(first.id, secret) and secret not in digests.values()
    [audit] = await issuer.ledger.audit_records(event="credential-new")
    assert audit.detail is not None and audit.detail["ids"] == [first.id, second.id]
    assert secret not in str(audit.detail)

    revoked = await issuer.revoke_credential(first.id, by="admin")
    assert revoked.revoked_at is not None and not revoked.usable(time.time())
    with pytest.raises(CAError, match="already revoked"):
        await issuer.revoke_credential(first.id)
    with pytest.raises(NotFoundError):
        await issuer.revoke_credential("c-nobody")
    assert [r.id for r in await issuer.list_credentials("factory", unused=True)] == [second.id]
    assert {r.id for r in await issuer.list_credentials("factory")} == {first.id, second.id}
    [audit] = await issuer.ledger.audit_records(event="credential-revoke")
    assert audit.detail == {"id": first.id, "bound_to": "SN-1"} and audit.requester == "operator:admin"


async def test_a_one_time_challenge_is_stored_by_digest_audited_and_bounded(issuer: Issuer) -> None:
    challenge = await issuer.create_one_time_challenge("mdm", 120, by="admin")
    rows = await issuer.ledger.run_read(lambda c: c.execute(sa.select(challenges.c.profile, challenges.c.digest,
                                                                      challenges.c.expires_at)).all())
    assert [(r.profile, r.digest) for r in rows] == [("mdm", challenge_digest(challenge))]
    assert 0 < rows[0].expires_at - time.time() <= 120
    [audit] = await issuer.ledger.audit_records(event="challenge-new")
    assert (audit.profile, audit.requester, audit.detail) == ("mdm", "operator:admin", {"ttl": 120})
    for ttl in (0, 30 * 86400 + 1):
        with pytest.raises(CAError, match="between 1 second and 30 days"):
            await issuer.create_one_time_challenge("mdm", ttl)
    with pytest.raises(NotFoundError):
        await issuer.create_one_time_challenge("no-such-profile")
    assert len(await issuer.ledger.audit_records(event="challenge-new")) == 1


# --- the credential's binding and what counts as a secret ---------------------------------

def _credential(bind: str, device: str) -> CredentialRecord:
    return CredentialRecord(id="c1", profile="factory", bind=bind, device=device, uses=1, uses_left=1,
                            created_at=0.0, expires_at=1.0)


def _name(*attrs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])


def test_a_credential_binds_the_subject_attribute_it_names() -> None:
    check_credential_binding(_credential("serialNumber", "SN-1"),
                             _name((NameOID.COMMON_NAME, "any"), (NameOID.SERIAL_NUMBER, "SN-1")))
    check_credential_binding(_credential("CN", "dev-1"), _name((NameOID.COMMON_NAME, "dev-1")))
    refused = [
        (_credential("serialNumber", "SN-1"), _name((NameOID.COMMON_NAME, "SN-1"))),  # attribute missing
        (_credential("serialNumber", "SN-1"), _name((NameOID.SERIAL_NUMBER, "SN-2"))),
        (_credential("CN", "dev-1"), _name((NameOID.COMMON_NAME, "dev-1"), (NameOID.COMMON_NAME, "dev-2"))),
    ]
    for cred, subject in refused:
        with pytest.raises(AuthorizationError, match="bound to the device"):
            check_credential_binding(cred, subject)


def test_only_offered_secrets_a_label_accepts_count_for_the_throttle() -> None:
    assert offers_secret(Claims(accept=BASIC, user="u", password="p"))
    assert offers_secret(Claims(accept=ONE_TIME, user="u", password="p"))
    assert offers_secret(Claims(accept=CHALLENGE, challenge="c"))
    assert offers_secret(Claims(accept=(frozenset({AuthMethod.ONE_TIME_CHALLENGE}),), challenge="c"))
    assert not offers_secret(Claims(accept=BASIC, user="u"))
    assert not offers_secret(Claims(accept=CHALLENGE, user="u", password="p"))
    assert not offers_secret(Claims(accept=BASIC, challenge="c"))
    assert offered_credential(Claims(accept=BASIC, user="u", password="p")) is None
    assert offered_credential(Claims(accept=ONE_TIME, user="u")) is None

