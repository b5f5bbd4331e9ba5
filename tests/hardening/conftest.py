"""Fixtures for the hardening campaign: the real application's services driven synchronously
(so that Hypothesis can call them), and counts that prove nothing was issued."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings

from ca.issuer import Issuer
from enroll.app import ISSUER, create_app
from enroll.config import Config
from enroll.setup import InitResult
from est.http import EST_SERVICE
from est.service import Credentials, EstService, TlsInfo
from scep.http import SERVICE as SCEP_SERVICE
from scep.service import ScepService
from tests.conftest import assert_ledger_lints_clean

T = TypeVar("T")

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


class Harness:
    """One application (create_app) with its own event loop; services called directly."""

    def __init__(self, config: Config, init: InitResult) -> None:
        self.config = config
        self.init = init
        self.loop = asyncio.new_event_loop()
        self.app = create_app(config)
        self.issuer: Issuer = self.app[ISSUER]
        self.est: EstService = self.app[EST_SERVICE]
        self.scep: ScepService = self.app[SCEP_SERVICE]
        self.run(self.issuer.ledger.migrate())
        self.tls = TlsInfo(version="TLSv1.3", remote="127.0.0.1")
        self.creds = Credentials(init.est_user, init.est_password)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def rows(self) -> dict[str, int]:
        """Certificate rows by status (reserved, issued, abandoned...). Serials this process has
        reserved ahead in its pool (ca/serials.py) and not handed out are not counted as
        ``reserved``: they belong to no request."""
        async def count() -> dict[str, int]:
            import sqlalchemy as sa

            from ca.ledger import certificates
            async with self.issuer.ledger.engine.connect() as conn:
                res = await conn.execute(sa.select(certificates.c.status, sa.func.count()).group_by(
                    certificates.c.status))
                out = {s: n for s, n in res.fetchall()}
            pooled = sum(self.issuer.serials.held(ca) for ca in self.issuer.cas)
            if pooled:
                out["reserved"] -= pooled
                if not out["reserved"]:
                    del out["reserved"]
            return out
        return self.run(count())

    def audit_count(self) -> int:
        return len(self.run(self.issuer.ledger.audit_records(1_000_000)))

    def close(self) -> None:
        self.run(self.issuer.ledger.close())
        self.loop.close()


@pytest.fixture
def harness(config: Config, embedded: InitResult) -> Iterator[Harness]:
    h = Harness(config, embedded)
    try:
        yield h
    finally:
        h.close()
        assert_ledger_lints_clean(config)
