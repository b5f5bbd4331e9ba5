"""The SCEP conformance suite (RFC 8894): its checks, one module per group of RFC sections, in
the order they run and are reported. Context, judgments and plan: conformance.scep_common."""

from __future__ import annotations

from conformance import (
    scep_checks_ca,
    scep_checks_certrep,
    scep_checks_operations,
    scep_checks_reject,
    scep_checks_transport,
)
from conformance.model import Suite

suite = Suite.of("scep", scep_checks_ca.group, scep_checks_certrep.group, scep_checks_transport.group,
                 scep_checks_operations.group, scep_checks_reject.group)

