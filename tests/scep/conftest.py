"""Fixtures for the SCEP tests."""

from __future__ import annotations

import pytest
from tests.scep.scep_testpki import TestPki, build_pki


@pytest.fixture(scope="session")
def pki() -> TestPki:
    """CA, a client key with a self-signed signer, and an unrelated key/cert."""
    return build_pki()
