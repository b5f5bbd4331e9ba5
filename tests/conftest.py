"""Shared fixtures: a development PKI, an initialised embedded-default directory, an issuer, a
running server on free loopback ports. Everything is real: keys, SQLite files, TLS on 127.0.0.1.
Helpers live in tests/support.py, the server harness in tests/harness.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ca.issuer import Issuer
from enroll.app import build_issuer
from enroll.config import Config, load_config
from enroll.pki import DevPKI, make_dev_pki
from enroll.setup import InitResult, init_directory
from tests.harness import EstServer, RunningServer, serve_inproc, start_server
from tests.support import add_est_test_profiles, free_port, missing_peer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run campaigns marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow campaign: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def dev_pki() -> DevPKI:
    """One development PKI for the whole session (key generation is the slow part)."""
    return make_dev_pki()


@pytest.fixture
def embedded(tmp_path: Path, dev_pki: DevPKI) -> InitResult:
    """A directory initialised like `enroll init` (session PKI, fresh secrets and SQLite file)."""
    return init_directory(tmp_path / "enroll", https_port=free_port(), http_port=free_port(), pki=dev_pki)


@pytest.fixture
def config(embedded: InitResult) -> Config:
    """The embedded default's validated config."""
    return load_config(embedded.config_path)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A private PostgreSQL cluster on 127.0.0.1 for the whole session (None if not installed)."""
    from tests.pg import cluster

    yield from cluster()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, embedded: InitResult) -> str:
    """Each ledger test runs on SQLite (a fresh file) and on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return load_config(embedded.config_path).ledger_url
    pg = request.getfixturevalue("pg_cluster")
    if pg is None:
        missing_peer("PostgreSQL (Debian postgresql)")
    return str(pg.new_database())


@pytest.fixture
async def issuer(config: Config, ledger_url: str) -> AsyncIterator[Issuer]:
    """A migrated issuer over the embedded default's config, on SQLite and on PostgreSQL."""
    import dataclasses

    config = dataclasses.replace(config, ledger_url=ledger_url)
    iss = build_issuer(config)
    await iss.ledger.migrate()
    yield iss
    from tests.lint import pkix_errors

    issued = await iss.ledger.list_certificates(limit=1_000_000)
    await iss.ledger.close()
    problems = [f"{r.serial:x}: {e}" for r in issued if r.der for e in pkix_errors(r.der)]
    assert not problems, problems


@pytest.fixture
def running_server(tmp_path: Path, dev_pki: DevPKI) -> Iterator[RunningServer]:
    """`enroll init` + `enroll serve` in a temp dir on free ports; stopped after the test."""
    with start_server(tmp_path, dev_pki) as srv:
        yield srv


@pytest.fixture
async def est_server(embedded: InitResult) -> AsyncIterator[EstServer]:
    """The whole application with the EST test profiles, over TLS on free loopback ports, in this
    event loop."""
    async with serve_inproc(add_est_test_profiles(embedded)) as app:
        yield EstServer(app.app, app.config, app.https_port, app.http_port, embedded)
