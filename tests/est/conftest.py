"""EST fixtures: `enroll serve` in a subprocess for the interop tests (tests/harness.py), with the
default EST profile ``gateway`` or ``manual`` (every request waits for approval). The in-process
``est_server`` fixture is shared (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enroll.pki import DevPKI
from enroll.setup import InitResult
from tests.harness import RunningServer, start_server


def _default_profile(name: str) -> Callable[[InitResult], None]:
    def edit(init: InitResult) -> None:
        text = init.config_path.read_text()
        text = text.replace('default_profile = "gateway"      # /.well-known/est/<op> without a label',
                            f'default_profile = "{name}"')
        init.config_path.write_text(text)
    return edit


@pytest.fixture
def serve(tmp_path: Path, dev_pki: DevPKI) -> Iterator[RunningServer]:
    with start_server(tmp_path, dev_pki, _default_profile("gateway")) as srv:
        yield srv


@pytest.fixture
def serve_manual(tmp_path: Path, dev_pki: DevPKI) -> Iterator[RunningServer]:
    with start_server(tmp_path, dev_pki, _default_profile("manual")) as srv:
        yield srv
