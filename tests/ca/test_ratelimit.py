"""The authentication throttle (exponential backoff per client address, IPv6 by /64, identities
never locking out a clean address) and the sampling of unauthenticated refusals into the audit
trail, on a real ledger (ca/ratelimit.py)."""

from __future__ import annotations

from ca.api import AuthMethod, Channel, Requester
from ca.issuer import Issuer
from ca.ratelimit import (
    BASE_DELAY,
    CLIENT_FREE,
    IDENTITY_FREE,
    MAX_DELAY,
    SAMPLED_PER_PERIOD,
    WINDOW_SECONDS,
    RefusalSampler,
    Throttle,
    backoff,
    client_key,
)


class Clock:
    """A settable clock, so that backoff can be tested without sleeping."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_client_key_is_the_ipv4_address_or_the_ipv6_64() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb:cccc:dddd:eeee") \
        == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key(None) is None and client_key("") is None
    assert client_key("not-an-address") == "not-an-address"


async def test_ipv6_addresses_in_one_64_share_a_bucket(issuer: Issuer) -> None:
    clock = Clock()
    throttle = Throttle(issuer.ledger, clock=clock)
    for i in range(CLIENT_FREE):  # rotating the interface identifier inside one /64
        assert await throttle.blocked(f"2001:db8:1:2::{i + 1:x}", f"user-{i}", "est") == 0
        await throttle.failed(f"2001:db8:1:2::{i + 1:x}", f"user-{i}", "est")
    assert await throttle.blocked("2001:db8:1:2:ffff:ffff:ffff:fffe", "someone-else", "est") == BASE_DELAY
    assert await throttle.blocked("2001:db8:1:3::1", "someone-else", "est") == 0  # the next /64


async def test_strangers_failures_for_a_shared_user_never_block_a_clean_address(issuer: Issuer) -> None:
    clock = Clock()
    throttle = Throttle(issuer.ledger, clock=clock)
    for i in range(100):  # a stranger guesses estuser's password, from one address and from many
        remote = "203.0.113.9" if i % 2 else f"198.51.100.{i}"
        await throttle.failed(remote, "estuser", "est")
        clock.now += 1
    assert await throttle.blocked("203.0.113.9", "estuser", "est") > 0  # the guesser must pause
    assert await throttle.blocked("198.51.100.2", "estuser", "est") > 0  # any address that failed
    assert await throttle.blocked("192.0.2.50", "estuser", "est") == 0  # a device with the secret
    assert await throttle.blocked("2001:db8:9::1", "estuser", "est") == 0
    assert await throttle.blocked("198.51.100.2", "estuser", "scep:router") == 0  # another namespace


async def test_identity_backoff_slows_only_addresses_with_failures(issuer: Issuer) -> None:
    clock = Clock()
    throttle = Throttle(issuer.ledger, clock=clock)
    for i in range(IDENTITY_FREE):  # one failure each: no address reaches its own limit
        await throttle.failed(f"10.7.0.{i}", "victim", "est")
    assert await throttle.blocked("10.7.0.1", "victim", "est") == BASE_DELAY
    assert await throttle.blocked("10.7.0.1", "bystander", "est") == 0  # the address alone is fine
    assert await throttle.blocked("10.7.9.9", "victim", "est") == 0
    assert await throttle.blocked(None, "victim", "est") == BASE_DELAY  # unknown address: no exemption


async def test_backoff_grows_with_failures_then_expires(issuer: Issuer) -> None:
    clock = Clock()
    throttle = Throttle(issuer.ledger, clock=clock)
    remote = "192.0.2.99"
    for _ in range(CLIENT_FREE - 1):
        await throttle.failed(remote, None, "est")
    assert await throttle.blocked(remote, None, "est") == 0
    waits = []
    for _ in range(11):  # 1 + 2 + ... + 512 + 900 seconds: all inside the window
        await throttle.failed(remote, None, "est")
        wait = await throttle.blocked(remote, None, "est")
        waits.append(wait)
        clock.now += wait  # the client waits exactly as long as told, then fails again
        assert await throttle.blocked(remote, None, "est") == 0
    assert waits[:4] == [BASE_DELAY, 2 * BASE_DELAY, 4 * BASE_DELAY, 8 * BASE_DELAY]
    assert waits == sorted(waits) and waits[-1] == MAX_DELAY  # grows, then capped
    await throttle.failed(remote, None, "est")
    assert await throttle.blocked(remote, None, "est") == MAX_DELAY
    clock.now += MAX_DELAY / 2
    assert await throttle.blocked(remote, None, "est") == MAX_DELAY / 2
    clock.now += WINDOW_SECONDS  # every failure has left the window: a fresh start
    await throttle.failed(remote, None, "est")
    assert await throttle.blocked(remote, None, "est") == 0


def test_backoff_formula() -> None:
    assert [backoff(n, 3, 1.0, 10.0) for n in range(9)] == [0, 0, 0, 1, 2, 4, 8, 10, 10]
    assert backoff(10_000, 3, 1.0, 10.0) == 10.0


def _bare_401() -> dict[str, object]:
    return dict(ok=False, channel=Channel.EST, profile="gateway", requester=None,
                reason="401: HTTP Basic authentication required")


async def test_anonymous_refusal_flood_writes_a_bounded_number_of_audit_rows(issuer: Issuer) -> None:
    clock = Clock()
    issuer.refusals = RefusalSampler(clock=clock)
    before = len(await issuer.ledger.audit_records(1_000_000))
    for _ in range(1000):
        await issuer.audit("est-enroll", **_bare_401())  # type: ignore[arg-type]
    assert len(await issuer.ledger.audit_records(1_000_000)) == before + 1
    scep = Requester(AuthMethod.NONE, "CN=self-signed")
    for i in range(1000):  # from a thousand addresses: still capped per minute
        await issuer.audit("scep-pkioperation", ok=False, channel=Channel.SCEP, profile="router",
                           requester=scep, reason="BAD_REQUEST: challenge missing or wrong",
                           remote=f"10.{i // 250}.{i % 250}.1")
    rows = await issuer.ledger.audit_records(1_000_000)
    assert len(rows) == before + 1 + SAMPLED_PER_PERIOD - 1
    assert issuer.refusal_counts[("est-enroll", "401")] == 1000
    assert issuer.refusal_counts[("scep-pkioperation", "BAD_REQUEST")] == 1000
    clock.now += 60  # the next minute: the summary of the last one is written once
    await issuer.flush_refusal_summaries()
    await issuer.flush_refusal_summaries()
    assert len(await issuer.ledger.audit_records(1_000_000)) == before + SAMPLED_PER_PERIOD + 2
    await issuer.audit("est-enroll", **_bare_401())  # type: ignore[arg-type]  # a new minute's sample
    rows = await issuer.ledger.audit_records(1_000_000)
    summaries = {r.channel: r for r in rows if r.event == "refusals-suppressed"}
    assert set(summaries) == {"est", "scep"}
    est, scep_summary = summaries["est"].detail, summaries["scep"].detail
    assert est is not None and scep_summary is not None
    assert est["suppressed"] == {"est-enroll 401": 999} and est["total"] == 999
    assert scep_summary["total"] == 1000 - (SAMPLED_PER_PERIOD - 1)
    assert len(rows) == before + SAMPLED_PER_PERIOD + 2 + 1


async def test_authenticated_refusals_and_acceptances_are_always_written(issuer: Issuer) -> None:
    issuer.refusals = RefusalSampler(clock=Clock())
    before = len(await issuer.ledger.audit_records(1_000_000))
    user = Requester(AuthMethod.BASIC, "estuser", remote="192.0.2.1")
    for _ in range(50):
        await issuer.audit("est-enroll", ok=False, channel=Channel.EST, profile="gateway", requester=user,
                           reason="403: profile does not allow this name")
        await issuer.audit("challenge-new", ok=True, channel=Channel.ADMIN, profile="router", requester=None)
    rows = await issuer.ledger.audit_records(1_000_000)
    assert len(rows) == before + 100
    assert sum(1 for r in rows if r.event == "est-enroll" and r.requester == "basic:estuser") == 50
    assert issuer.refusal_counts == {}
