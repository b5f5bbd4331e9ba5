"""Throttling failed authentication, and sampling unauthenticated refusals into the audit trail.

Shared by EST and SCEP (RFC 7030 §3.2.3 Basic passwords, RFC 8894 §2.2 challengePassword).

**The throttle rule** (:class:`Throttle`). Failures are recorded in the ledger (``auth_failures``,
migration 3), not in process memory, so that every node and worker of a scale-out deployment
throttles alike. Each failure is recorded under two keys:

- the *client*: the peer address, an IPv4 address as is (/32) and an IPv6 address by its /64
  prefix (an IPv4-mapped IPv6 address counts as the IPv4 address), since an IPv6 host can rotate
  addresses inside its /64 at will;
- the *identity*: the user name (EST) or requested subject (SCEP), per namespace.

Only failures of the last ``window`` seconds (default 1 hour) count; older ones are forgotten.
With ``n`` counted failures, a key demands a pause of ``min(max_delay, base_delay * 2**(n - free))``
seconds after its latest failure once ``n >= free`` (defaults: 5 free failures per client, 10 per
identity, a base of 1 s, capped at 15 minutes). An attempt made during the pause is refused (EST
429 + Retry-After, SCEP FAILURE) *before* the secret is checked, and is not itself counted.

- The client pause applies to every attempt from that client (one source guessing many names).
- The identity pause applies only to attempts from a client that has failures of its own inside
  the window, or whose address is unknown. A client with no recent failures is never refused
  because of an identity, so strangers guessing a shared account (``estuser``) from elsewhere
  cannot lock out the devices that hold its secret; they can only slow themselves.

Nothing blocks for ever: every pause is capped and ends ``max_delay`` seconds after the latest
counted failure at the latest, and failures leave the count after ``window`` seconds.

**Refusal sampling** (:class:`RefusalSampler`). A refusal of a request that authenticated nobody
is counted in process memory and written to the audit trail only as a sample: the first per
(event, reason class, client) per minute, at most ``per_period`` per minute in all, and one summary
row per channel and minute with the number left out. Authenticated refusals and every acceptance
are always written.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ca.errors import LedgerError
from ca.ledger import Ledger

#: Failures older than this are forgotten (seconds).
WINDOW_SECONDS = 3600.0
#: Failures a client address may have inside the window before it must pause.
CLIENT_FREE = 5
#: Failures an identity may have inside the window before clients with failures must pause.
IDENTITY_FREE = 10
#: The first pause, doubled at every further failure (seconds).
BASE_DELAY = 1.0
#: The longest pause (seconds).
MAX_DELAY = 900.0
#: IPv6 clients are keyed by this prefix length.
IPV6_PREFIX = 64

Clock = Callable[[], float]


def client_key(address: str | None) -> str | None:
    """The throttle key of a peer address: IPv4 as is, IPv6 as its /64 (``2001:db8:1:2::/64``).

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) is its IPv4 address; a zone index is
    dropped. Text that is not an address is kept (truncated) so that it still throttles."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


def backoff(failures: int, free: int, base: float = BASE_DELAY, cap: float = MAX_DELAY) -> float:
    """The pause demanded after ``failures`` counted failures: 0 below ``free``, then doubling."""
    if failures < free:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - free, 64))


@dataclass(frozen=True)
class Throttle:
    """Exponential backoff per client address (/64 for IPv6) and per identity, in the ledger.

    ``blocked`` answers how long an attempt must still wait (0: go ahead and check the secret);
    ``failed`` records a failed check. See the module docstring for the rule."""

    ledger: Ledger
    window: float = WINDOW_SECONDS
    client_free: int = CLIENT_FREE
    identity_free: int = IDENTITY_FREE
    base_delay: float = BASE_DELAY
    max_delay: float = MAX_DELAY
    clock: Clock = time.time

    @staticmethod
    def _identity(identity: str, namespace: str) -> str:
        return f"{namespace}:{identity}"

    def keys(self, client: str | None, identity: str | None, namespace: str) -> list[tuple[str, str]]:
        """The (scope, key) pairs an attempt is counted under: client (/64 for IPv6), identity."""
        out: list[tuple[str, str]] = []
        ckey = client_key(client)
        if ckey is not None:
            out.append(("client", ckey))
        if identity:
            out.append(("identity", self._identity(identity, namespace)))
        return out

    def wait(self, stats: Mapping[tuple[str, str], tuple[int, float | None]], client: str | None,
             identity: str | None, namespace: str) -> float:
        """:meth:`blocked`'s answer from failure statistics already read (the unit of work's gate
        reads them with everything else: (count, latest) per key since ``now - window``)."""
        now = self.clock()

        def pause(key: tuple[str, str], free: int) -> tuple[int, float]:
            count, last = stats.get(key, (0, None))
            if last is None:
                return 0, 0.0
            return count, max(0.0, last + backoff(count, free, self.base_delay, self.max_delay) - now)

        ckey = client_key(client)
        client_failures, wait = 0, 0.0
        if ckey is not None:
            client_failures, wait = pause(("client", ckey), self.client_free)
        if identity and (ckey is None or client_failures > 0):
            wait = max(wait, pause(("identity", self._identity(identity, namespace)), self.identity_free)[1])
        return wait

    async def _pause(self, scope: str, key: str, free: int, now: float) -> tuple[int, float]:
        """(failures in the window, seconds still to wait) for one key."""
        count, last = await self.ledger.auth_failure_stats(scope, key, now - self.window)
        if last is None:
            return 0, 0.0
        return count, max(0.0, last + backoff(count, free, self.base_delay, self.max_delay) - now)

    async def blocked(self, client: str | None, identity: str | None, namespace: str) -> float:
        """Seconds this attempt must still wait, else 0. A ledger error propagates (LedgerError):
        the request is refused as unavailable, never let through."""
        now = self.clock()
        ckey = client_key(client)
        client_failures, wait = 0, 0.0
        if ckey is not None:
            client_failures, wait = await self._pause("client", ckey, self.client_free, now)
        if identity and (ckey is None or client_failures > 0):
            _, identity_wait = await self._pause("identity", self._identity(identity, namespace),
                                                 self.identity_free, now)
            wait = max(wait, identity_wait)
        return wait

    async def failed(self, client: str | None, identity: str | None, namespace: str) -> None:
        """Record one failed attempt (never the secret that was tried)."""
        keys = self.keys(client, identity, namespace)
        try:
            await self.ledger.record_auth_failure(keys, self.clock())
        except LedgerError:
            pass  # the refusal stands; a ledger outage is reported by the request itself


#: Unauthenticated refusals written per minute at most (all keys together), besides summaries.
SAMPLED_PER_PERIOD = 60
SAMPLE_PERIOD = 60.0

_REASON_CLASS = re.compile(r"[A-Za-z0-9_.-]{1,40}")


def reason_class(reason: str) -> str:
    """The part of an audit reason before ``:`` (an HTTP status, failInfo or RejectReason), or
    ``other``: a bounded label for counting, free of anything a peer sent."""
    head = reason.split(":", 1)[0].strip()
    return head if _REASON_CLASS.fullmatch(head) else "other"


@dataclass
class RefusalSampler:
    """Counts unauthenticated refusals and decides which reach the audit trail (module docstring).

    ``counts`` is cumulative per (event, reason class) for metrics. Single event-loop use."""

    per_period: int = SAMPLED_PER_PERIOD
    period: float = SAMPLE_PERIOD
    clock: Clock = time.time
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    _period: int | None = None
    _seen: set[tuple[str, str, str | None]] = field(default_factory=set)
    _suppressed: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def due_summaries(self) -> list[dict[str, Any]]:
        """Summary rows of a finished period (one per channel with refusals left out), once."""
        current = int(self.clock() // self.period)
        if self._period == current:
            return []
        rows = self._summaries()
        self._period, self._seen, self._suppressed = current, set(), Counter()
        return rows

    def _summaries(self) -> list[dict[str, Any]]:
        by_channel: dict[str, dict[str, int]] = {}
        for (channel, event, cls), n in sorted(self._suppressed.items()):
            by_channel.setdefault(channel, {})[f"{event} {cls}"] = n
        start = None if self._period is None else self._period * self.period
        return [{"channel": channel, "suppressed": counts, "total": sum(counts.values()),
                 "period_start": start, "period_seconds": self.period}
                for channel, counts in by_channel.items()]

    def admit(self, channel: str, event: str, reason: str, remote: str | None) -> bool:
        """Count one unauthenticated refusal; True when it should be written. Call
        :meth:`due_summaries` first so that the period is current."""
        cls = reason_class(reason)
        self.counts[(event, cls)] += 1
        key = (event, cls, client_key(remote))
        if key not in self._seen and len(self._seen) < self.per_period:
            self._seen.add(key)
            return True
        self._suppressed[(channel, event, cls)] += 1
        return False
