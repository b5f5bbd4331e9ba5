"""Prometheus metrics: requests, issuance by profile/protocol/outcome, latency."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ca.records import CertState


RefusalCounts = Callable[[], Mapping[tuple[str, str], int]]


class _Refusals(Collector):
    """The issuer's count of refusals that authenticated nobody (:attr:`ca.issuer.Issuer.refusal_counts`),
    read at scrape time: the audit trail holds only a sample of them."""

    def __init__(self) -> None:
        self.source: RefusalCounts = dict

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("enroll_unauthenticated_refusals",
                                     "Refusals that authenticated nobody, by audit event and reason class "
                                     "(counted since start; the audit trail keeps a sample)",
                                     labels=["event", "reason"])
        for (event, reason), n in sorted(self.source().items()):
            family.add_metric([event, reason], n)
        yield family


class Metrics:
    """One registry per app, so several apps (tests) never collide."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("enroll_http_requests", "HTTP requests by route group and status",
                                ["group", "method", "status"], registry=self.registry)
        self.latency = Histogram("enroll_http_request_seconds", "HTTP request latency", ["group"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.issuance = Counter("enroll_issuance", "Issuance decisions by profile, protocol and outcome",
                                ["profile", "protocol", "outcome"], registry=self.registry)
        self.issuance_latency = Histogram("enroll_issuance_seconds", "Time spent in the issuance core",
                                          ["protocol"], registry=self.registry)

        self.ocsp = Counter("enroll_ocsp_responses", "OCSP answers by outcome (good, revoked, unknown, "
                            "malformed, unauthorized, internal)", ["outcome"], registry=self.registry)
        self.certificates = Gauge("enroll_certificates", "Issued certificates per profile by state "
                                  "(ca.records.CertState: valid, on_hold, revoked, expired, retired)",
                                  ["profile", "state"], registry=self.registry)
        self.expiring = Gauge("enroll_certificates_expiring", "Valid certificates per profile whose notAfter is "
                              "within the window (7d, 30d)", ["profile", "within"], registry=self.registry)
        self._refusals = _Refusals()
        self.registry.register(self._refusals)

    def watch_refusals(self, source: RefusalCounts) -> None:
        """Export ``source()`` (the issuer's unauthenticated refusal counts) at every scrape."""
        self._refusals.source = source

    def set_fleet(self, counts: Mapping[str, Mapping[str, int]], profiles: Iterable[str] = ()) -> None:
        """Fleet gauges from :meth:`ca.ledger.Ledger.counts_by_profile` with horizons (7d, 30d);
        every profile in ``profiles`` is present, with zeros when it has no certificates."""
        self.certificates.clear()
        self.expiring.clear()
        for profile in sorted(set(profiles) | set(counts)):
            c = counts.get(profile, {})
            for state in CertState:
                self.certificates.labels(profile, state.value).set(c.get(state.value, 0))
            self.expiring.labels(profile, "7d").set(c.get("expiring_0", 0))
            self.expiring.labels(profile, "30d").set(c.get("expiring_1", 0))

    def observe_issuance(self, profile: str, protocol: str, outcome: str, seconds: float) -> None:
        """The issuer's observer callback."""
        self.issuance.labels(profile, protocol, outcome).inc()
        self.issuance_latency.labels(protocol).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format."""
        return bytes(generate_latest(self.registry))
