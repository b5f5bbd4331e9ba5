"""Challenges and passwords: a one-time challenge wins exactly once under concurrency; failed
attempts are throttled per client address and per identity (ledger-backed, ca/ratelimit.py);
secrets never reach the server log or an error body."""

from __future__ import annotations

import asyncio
import base64

from cryptography.hazmat.primitives import serialization

from ca.ratelimit import CLIENT_LIMIT, IDENTITY_LIMIT
from est.errors import EstError
from est.service import Credentials, TlsInfo
from scep.asn1 import PkiStatus
from tests.conftest import RunningServer, make_csr
from tests.hardening.conftest import Harness
from tests.hardening.helpers import est_post, http_raw
from tests.hardening.scepmsg import pkcsreq, reply
from tests.scep.scep_testpki import rsa_key


def _scep(h: Harness, profile: str, der: bytes, remote: str = "127.0.0.1") -> PkiStatus:
    p = h.scep.profile(profile)
    return reply(h.run(h.scep.pki_operation(p, der, remote)).body).status


def test_one_time_challenge_used_concurrently_issues_exactly_once(harness: Harness) -> None:
    challenge = harness.run(harness.issuer.create_one_time_challenge("mdm", 600))
    ra = harness.scep.ra(harness.scep.profile("mdm")).cert
    messages = [pkcsreq(ra, rsa_key(60 + i), f"phone-{i}", challenge) for i in range(6)]

    async def all_at_once() -> list[bytes]:
        p = harness.scep.profile("mdm")
        return [r.body for r in await asyncio.gather(*(harness.scep.pki_operation(p, m, f"10.0.0.{i}")
                                                       for i, m in enumerate(messages)))]

    statuses = [reply(b).status for b in harness.run(all_at_once())]
    assert statuses.count(PkiStatus.SUCCESS) == 1, statuses
    assert harness.rows() == {"issued": 1}


def test_scep_failures_are_throttled_per_identity(harness: Harness) -> None:
    ra = harness.scep.ra(harness.scep.profile("router")).cert
    key = rsa_key(70)
    for i in range(IDENTITY_LIMIT):  # many addresses, one subject
        assert _scep(harness, "router", pkcsreq(ra, key, "victim", "wrong"), f"10.1.0.{i}") is PkiStatus.FAILURE
    good = pkcsreq(ra, key, "victim", harness.init.scep_challenge)
    rep = reply(harness.run(harness.scep.pki_operation(harness.scep.profile("router"), good, "10.9.9.9")).body)
    assert rep.status is PkiStatus.FAILURE and "too many" in (rep.fail_info_text or "")
    assert _scep(harness, "router", pkcsreq(ra, key, "bystander", harness.init.scep_challenge),
                 "10.9.9.9") is PkiStatus.SUCCESS
    assert harness.rows() == {"issued": 1}


def test_scep_failures_are_throttled_per_client_address(harness: Harness) -> None:
    ra = harness.scep.ra(harness.scep.profile("router")).cert
    key = rsa_key(71)
    for i in range(CLIENT_LIMIT):  # one address, many subjects
        _scep(harness, "router", pkcsreq(ra, key, f"guess-{i}", f"wrong-{i}"), "10.2.0.1")
    assert _scep(harness, "router", pkcsreq(ra, key, "fresh", harness.init.scep_challenge), "10.2.0.1") \
        is PkiStatus.FAILURE
    assert _scep(harness, "router", pkcsreq(ra, key, "fresh", harness.init.scep_challenge), "10.2.0.2") \
        is PkiStatus.SUCCESS


def _est(h: Harness, user: str, password: str, remote: str) -> int:
    csr, _ = make_csr("est-throttle")
    body = base64.b64encode(csr.public_bytes(serialization.Encoding.DER))
    try:
        return h.run(h.est.simpleenroll("", body, TlsInfo(version="TLSv1.3", remote=remote),
                                        Credentials(user, password))).status
    except EstError as err:
        if err.status == 429:
            assert int(err.headers["Retry-After"]) > 0
        return err.status


def test_est_basic_failures_are_throttled_per_user_and_per_client(harness: Harness) -> None:
    user, pw = harness.init.est_user, harness.init.est_password
    for i in range(IDENTITY_LIMIT):
        assert _est(harness, user, f"wrong-{i}", f"10.3.0.{i}") == 401
    assert _est(harness, user, pw, "10.3.1.1") == 429  # the right password, too late
    for i in range(CLIENT_LIMIT):
        _est(harness, f"nobody-{i}", "x", "10.4.0.1")
    assert _est(harness, f"nobody-{CLIENT_LIMIT}", "x", "10.4.0.1") == 429
    assert harness.rows().get("issued", 0) == 0


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
