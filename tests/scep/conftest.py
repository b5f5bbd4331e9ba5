"""Fixtures for the SCEP tests: the test PKI, and the embedded default plus the SCEP test
profiles (``tests.support.add_scep_test_profiles``), loaded or served (tests/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enroll.config import Config, load_config
from enroll.pki import DevPKI
from enroll.setup import InitResult
from tests.harness import RunningServer, start_server
from tests.support import TestPki, add_scep_test_profiles, build_pki


@pytest.fixture(scope="session")
def pki() -> TestPki:
    """CA, a client key with a self-signed signer, and an unrelated key/cert."""
    return build_pki()


@pytest.fixture
def config(embedded: InitResult) -> Config:
    """The embedded default plus the SCEP test profiles (overrides the shared fixture)."""
    add_scep_test_profiles(embedded.config_path)
    return load_config(embedded.config_path)


@pytest.fixture
def scep_server(tmp_path: Path, dev_pki: DevPKI) -> Iterator[RunningServer]:
    """`enroll init` + the SCEP test profiles + `enroll serve` on free loopback ports."""
    with start_server(tmp_path, dev_pki, lambda init: add_scep_test_profiles(init.config_path)) as srv:
        yield srv
