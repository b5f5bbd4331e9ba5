"""`enroll config check` warns, without failing, when a CA key itself decrypts SCEP requests
(no separate RA, RFC 8894 §2.1), and says nothing of the kind when an RA is configured."""

from __future__ import annotations

import subprocess
import sys

from enroll.app import config_warnings
from enroll.config import Config, load_config
from enroll.setup import InitResult

WARNING = "warning: cas.issuing: the CA key itself decrypts SCEP requests"


def _without_ra(embedded: InitResult) -> Config:
    text = embedded.config_path.read_text()
    lines = [line for line in text.splitlines() if not line.startswith(("ra_cert =", "ra_key ="))]
    assert len(lines) == len(text.splitlines()) - 2
    embedded.config_path.write_text("\n".join(lines) + "\n")
    return load_config(embedded.config_path)


def _check(embedded: InitResult) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "enroll", "-c", str(embedded.config_path), "config", "check"],
                          capture_output=True, text=True, timeout=120, cwd=embedded.config_path.parent)


def test_config_check_warns_when_the_ca_key_decrypts_scep(embedded: InitResult) -> None:
    config = _without_ra(embedded)
    [warning] = config_warnings(config)
    assert "profiles manual, mdm, router" in warning and "RA certificate" in warning
    res = _check(embedded)
    assert res.returncode == 0, res.stderr
    assert WARNING in res.stderr and "ok (" in res.stdout
    assert "warning" not in res.stdout


def test_config_check_is_quiet_with_a_scep_ra(embedded: InitResult, config: Config) -> None:
    assert config_warnings(config) == []
    res = _check(embedded)
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr
