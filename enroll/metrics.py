"""Prometheus metrics: requests, issuance by profile/protocol/outcome, latency."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


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

    def observe_issuance(self, profile: str, protocol: str, outcome: str, seconds: float) -> None:
        """The issuer's observer callback."""
        self.issuance.labels(profile, protocol, outcome).inc()
        self.issuance_latency.labels(protocol).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format."""
        return bytes(generate_latest(self.registry))
