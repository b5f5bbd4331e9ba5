"""Fixtures for the SCEP tests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from enroll.config import Config, load_config
from enroll.pki import DevPKI
from enroll.setup import InitResult
from tests.conftest import RunningServer, start_server
from tests.scep.scep_testpki import TestPki, build_pki


@pytest.fixture(scope="session")
def pki() -> TestPki:
    """CA, a client key with a self-signed signer, and an unrelated key/cert."""
    return build_pki()


#: Profiles added to the embedded default for SCEP tests: renewal at any time (no window), legacy
#: algorithms, a profile with a renewal window, a strict modern profile and one that also allows MD5 (allow_md5).
#: All reuse the router's static challenge hash.
EXTRA_PROFILES = """
[profiles.anytime]
ca = "issuing"
validity_days = 30
key_types = ["rsa-2048", "rsa-3072", "rsa-4096"]
key_usage = ["digital_signature", "key_encipherment"]
extended_key_usage = ["client_auth"]
allow_legacy_digests = true
[profiles.anytime.subject]
allow = ["CN", "O", "OU", "C"]
require = ["CN"]
[profiles.anytime.scep]
auth = ["challenge"]
challenge_hash = "{hash}"
allow_legacy = true

[profiles.windowed]
ca = "issuing"
validity_days = 365
renewal_window_days = 60
key_types = ["rsa-2048", "rsa-3072", "rsa-4096"]
key_usage = ["digital_signature", "key_encipherment"]
extended_key_usage = ["client_auth"]
[profiles.windowed.subject]
allow = ["CN"]
[profiles.windowed.scep]
auth = ["challenge"]
challenge_hash = "{hash}"

[profiles.modern]
ca = "issuing"
validity_days = 30
key_types = ["rsa-2048", "rsa-3072", "rsa-4096"]
key_usage = ["digital_signature", "key_encipherment"]
extended_key_usage = ["client_auth"]
[profiles.modern.subject]
allow = ["CN", "O", "OU", "C"]
require = ["CN"]
[profiles.modern.scep]
auth = ["challenge"]
challenge_hash = "{hash}"

[profiles.md5ok]
ca = "issuing"
validity_days = 30
key_types = ["rsa-2048"]
key_usage = ["digital_signature", "key_encipherment"]
extended_key_usage = ["client_auth"]
[profiles.md5ok.subject]
allow = ["CN"]
require = ["CN"]
[profiles.md5ok.scep]
auth = ["challenge"]
challenge_hash = "{hash}"
allow_legacy = true
allow_md5 = true
"""


def add_scep_test_profiles(config_path: Path, extra: str = "") -> None:
    """Append the SCEP test profiles (and ``extra`` TOML) to an initialised enroll.toml."""
    text = config_path.read_text()
    m = re.search(r'challenge_hash = "([^"]+)"', text)
    assert m, "the embedded default has a SCEP challenge hash"
    config_path.write_text(text + EXTRA_PROFILES.format(hash=m.group(1)) + extra)


@pytest.fixture
def config(embedded: InitResult) -> Config:
    """The embedded default plus the SCEP test profiles (overrides the shared fixture)."""
    add_scep_test_profiles(embedded.config_path)
    return load_config(embedded.config_path)


@pytest.fixture
def scep_server(tmp_path: Path, dev_pki: DevPKI) -> Iterator[RunningServer]:
    """`enroll init` + the SCEP test profiles + `enroll serve` on free loopback ports."""
    yield from start_server(tmp_path, dev_pki, lambda init: add_scep_test_profiles(init.config_path))
