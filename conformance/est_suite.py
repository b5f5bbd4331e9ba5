"""The EST conformance suite (RFC 7030, RFC 8951): its checks, one module per group of RFC
sections, in the order they run and are reported. Options, context and plan: conformance.est_common."""

from __future__ import annotations

from conformance import (
    est_checks_enroll,
    est_checks_optional,
    est_checks_pop,
    est_checks_reenroll,
    est_checks_transport,
)
from conformance.model import Suite

suite = Suite.of("est", est_checks_transport.group, est_checks_enroll.group, est_checks_pop.group,
                 est_checks_reenroll.group, est_checks_optional.group)

