"""Fixtures for the hardening campaign: the real application's services driven synchronously
(so that Hypothesis can call them), and counts that prove nothing was issued."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from enroll.config import Config
from enroll.setup import InitResult
from tests.harness import ServiceHarness
from tests.support import assert_ledger_lints_clean

#: CI profile: bounded, reproducible (derandomized, no example database), no deadline (the
#: first call of a code path pays for imports and key loading).
settings.register_profile("hardening-ci", max_examples=60, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
#: The long run (scripts/fuzz-long.sh): many more random examples.
settings.register_profile("hardening-long", max_examples=int(os.environ.get("ENROLL_FUZZ_EXAMPLES", "20000")), deadline=None, derandomize=False, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])


#: The settings every fuzz test in this folder uses (a decorator): the CI profile unless
#: ENROLL_FUZZ_PROFILE names another (scripts/fuzz-long.sh sets "hardening-long"). Applied per
#: test, never loaded globally, so other folders' Hypothesis tests keep their own settings.
FUZZ = settings(settings.get_profile(os.environ.get("ENROLL_FUZZ_PROFILE", "hardening-ci")))


@pytest.fixture
def harness(config: Config, embedded: InitResult) -> Iterator[ServiceHarness]:
    """The EST and SCEP services of one application, called synchronously (tests/harness.py)."""
    h = ServiceHarness(config, embedded)
    try:
        yield h
    finally:
        h.close()
        assert_ledger_lints_clean(config)
