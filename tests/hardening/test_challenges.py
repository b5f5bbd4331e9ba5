"""Challenges and passwords: a one-time challenge wins exactly once under concurrency; failed
attempts are throttled by backoff per client address (IPv6 by /64) and, for addresses that failed,
per identity (ledger-backed, ca/ratelimit.py); anonymous refusals are sampled into the audit trail;
secrets never reach the server log or an error body."""

from __future__ import annotations

import asyncio
import base64

from cryptography.hazmat.primitives import serialization

from ca.ratelimit import CLIENT_FREE, IDENTITY_FREE, Throttle
from est.errors import EstError
from est.service import Credentials, TlsInfo
from scep.asn1 import PkiStatus
from tests.hardening.helpers import est_post, http_raw
from tests.hardening.scepmsg import pkcsreq, reply
from tests.harness import RunningServer, ServiceHarness
from tests.support import cached_rsa_key, make_csr


def _scep(h: ServiceHarness, profile: str, der: bytes, remote: str = "127.0.0.1") -> PkiStatus:
    p = h.scep.profile(profile)
    return reply(h.run(h.scep.pki_operation(p, der, remote)).body).status


def test_one_time_challenge_used_concurrently_issues_exactly_once(harness: ServiceHarness) -> None:
    challenge = harness.run(harness.issuer.create_one_time_challenge("mdm", 600))
    ra = harness.scep.ra(harness.scep.profile("mdm")).cert
    messages = [pkcsreq(ra, cached_rsa_key(60 + i), f"phone-{i}", challenge) for i in range(6)]

    async def all_at_once() -> list[bytes]:
        p = harness.scep.profile("mdm")
        return [r.body for r in await asyncio.gather(*(harness.scep.pki_operation(p, m, f"10.0.0.{i}")
                                                       for i, m in enumerate(messages)))]

    statuses = [reply(b).status for b in harness.run(all_at_once())]
    assert statuses.count(PkiStatus.SUCCESS) == 1, statuses
    # The losers signed with a reserved serial before their commit found the challenge spent:
    # those stay reserved (the sweep abandons them, never reused) and no certificate left.
    rows = harness.rows()
    assert rows.get("issued") == 1 and set(rows) <= {"issued", "reserved"}, rows


def _fail_more(h: ServiceHarness, client: str | None, identity: str | None, namespace: str, n: int = 8) -> None:
    """Record ``n`` more failures directly, so the pause (2**n s and more) outlasts any test machine."""
    throttle = Throttle(h.issuer.ledger)
    for _ in range(n):
        h.run(throttle.failed(client, identity, namespace))


def _failures(h: ServiceHarness, scope: str, key: str) -> int:
    return h.run(h.issuer.ledger.auth_failure_stats(scope, key, 0))[0]


def test_scep_failures_for_a_subject_slow_only_addresses_that_failed(harness: ServiceHarness) -> None:
    ra = harness.scep.ra(harness.scep.profile("router")).cert
    key = cached_rsa_key(70)
    for i in range(IDENTITY_FREE):  # many addresses, one subject
        assert _scep(harness, "router", pkcsreq(ra, key, "victim", "wrong"), f"10.1.0.{i}") is PkiStatus.FAILURE
    assert _failures(harness, "identity", "scep:router:CN=victim") == IDENTITY_FREE
    _fail_more(harness, None, "CN=victim", "scep:router")
    good = pkcsreq(ra, key, "victim", harness.init.scep_challenge)
    rep = reply(harness.run(harness.scep.pki_operation(harness.scep.profile("router"), good, "10.1.0.1")).body)
    assert rep.status is PkiStatus.FAILURE and "too many" in (rep.fail_info_text or "")
    assert harness.rows() == {}
    # A clean address holding the challenge is never refused because of the strangers' guesses.
    assert _scep(harness, "router", pkcsreq(ra, key, "victim", harness.init.scep_challenge),
                 "10.9.9.9") is PkiStatus.SUCCESS
    assert harness.rows() == {"issued": 1}


def test_scep_failures_are_throttled_per_client_address(harness: ServiceHarness) -> None:
    ra = harness.scep.ra(harness.scep.profile("router")).cert
    key = cached_rsa_key(71)
    for i in range(CLIENT_FREE):  # one address, many subjects
        assert _scep(harness, "router", pkcsreq(ra, key, f"guess-{i}", f"wrong-{i}"), "10.2.0.1") \
            is PkiStatus.FAILURE
    assert _failures(harness, "client", "10.2.0.1") == CLIENT_FREE
    _fail_more(harness, "10.2.0.1", None, "scep:router")
    assert _scep(harness, "router", pkcsreq(ra, key, "fresh", harness.init.scep_challenge), "10.2.0.1") \
        is PkiStatus.FAILURE
    assert _failures(harness, "client", "10.2.0.1") == CLIENT_FREE + 8  # a refused attempt is not counted
    assert harness.rows() == {}
    assert _scep(harness, "router", pkcsreq(ra, key, "fresh", harness.init.scep_challenge), "10.2.0.2") \
        is PkiStatus.SUCCESS


def _est(h: ServiceHarness, user: str, password: str, remote: str) -> int:
    csr, _ = make_csr("est-throttle")
    body = base64.b64encode(csr.public_bytes(serialization.Encoding.DER))
    try:
        return h.run(h.est.simpleenroll("", body, TlsInfo(version="TLSv1.3", remote=remote),
                                        Credentials(user, password))).status
    except EstError as err:
        if err.status == 429:
            assert int(err.headers["Retry-After"]) > 0
        return err.status


def test_strangers_guessing_the_shared_est_user_never_lock_out_a_clean_address(harness: ServiceHarness) -> None:
    user, pw = harness.init.est_user, harness.init.est_password
    for i in range(100):  # half from one address (soon refused before scrypt), half from many
        remote = "10.3.9.9" if i % 2 else f"10.3.0.{i}"
        assert _est(harness, user, f"wrong-{i}", remote) in (401, 429)
    assert _failures(harness, "identity", f"est:{user}") >= 50
    assert _est(harness, user, pw, "10.3.0.2") == 429  # an address that guessed must pause
    assert harness.rows().get("issued", 0) == 0
    assert _est(harness, user, pw, "10.3.1.1") == 200  # the device holding the password
    assert _est(harness, user, pw, "2001:db8:3::1") == 200
    assert harness.rows() == {"issued": 2}


def test_est_basic_failures_are_throttled_per_client_ipv6_64(harness: ServiceHarness) -> None:
    for i in range(CLIENT_FREE):  # one /64, rotating addresses
        assert _est(harness, f"nobody-{i}", "x", f"2001:db8:4::{i + 1}") == 401
    _fail_more(harness, "2001:db8:4::ffff", None, "est")
    assert _est(harness, "nobody-else", "x", "2001:db8:4:0:1:2:3:4") == 429
    assert _est(harness, harness.init.est_user, harness.init.est_password, "2001:db8:4:1::1") == 200
    assert harness.rows() == {"issued": 1}


def test_a_flood_of_bare_unauthenticated_requests_writes_few_audit_rows(harness: ServiceHarness) -> None:
    csr, _ = make_csr("anonymous-flood")
    body = base64.b64encode(csr.public_bytes(serialization.Encoding.DER))
    before = harness.audit_count()
    for _ in range(1000):
        try:
            harness.run(harness.est.simpleenroll("", body, harness.tls, None))
            raise AssertionError("an unauthenticated request was served")
        except EstError as err:
            assert err.status == 401
    assert harness.audit_count() - before <= 3  # one sample, a minute boundary: a summary and one more
    assert harness.issuer.refusal_counts[("est-enroll", "401")] == 1000
    # A refusal of an authenticated requester is always written.
    traversal, _ = make_csr("../../x")
    bad = base64.b64encode(traversal.public_bytes(serialization.Encoding.DER))
    for _ in range(5):
        try:
            harness.run(harness.est.simpleenroll("", bad, harness.tls, harness.creds))
            raise AssertionError("a path-traversal CN was issued")
        except EstError as err:
            assert err.status == 403
    records = harness.run(harness.issuer.ledger.audit_records(1_000_000))
    assert sum(1 for r in records if r.event == "issue" and not r.ok
               and r.requester == f"basic:{harness.init.est_user}") == 5
    assert harness.rows() == {}


def test_secrets_never_in_logs_or_error_bodies(running_server: RunningServer) -> None:
    from tests.hardening.helpers import scep_enroll

    server = running_server
    wrong_pw, wrong_challenge = "Wr0ngPassw0rdXYZ", "Wr0ngChallengeQRS"
    one_time = server.enroll("challenge", "new", "--profile", "router", "--ttl", "600").stdout.strip()
    bodies = []
    csr, _ = make_csr("secret-check")
    b64 = base64.b64encode(csr.public_bytes(serialization.Encoding.DER))
    bodies.append(est_post(server, "/.well-known/est/simpleenroll", b64,
                           auth=base64.b64encode(f"{server.init.est_user}:{wrong_pw}".encode()).decode()).body)
    bodies.append(est_post(server, "/.well-known/est/simpleenroll", b64).body)
    assert not scep_enroll(server, "secret-scep-wrong", wrong_challenge)
    assert scep_enroll(server, "secret-scep-ok")
    assert scep_enroll(server, "secret-scep-once", one_time)
    assert not scep_enroll(server, "secret-scep-twice", one_time)
    bodies.append(http_raw(server.http_port, b"GET /scep?operation=PKIOperation&message=%%%% HTTP/1.1\r\nHost: x\r\n\r\n"))
    log = server.log_path.read_bytes()
    for secret in (server.init.est_password, wrong_pw, server.init.scep_challenge, wrong_challenge, one_time):
        assert secret.encode() not in log, "a secret reached the server log"
        for body in bodies:
            assert secret.encode() not in body
    assert b"Traceback" not in log
