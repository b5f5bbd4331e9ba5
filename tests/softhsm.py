"""A private SoftHSM2 (Debian ``softhsm2``) for the PKCS#11 tests: its tool, its module and a
token directory of the test's own, named by a ``SOFTHSM2_CONF`` file."""

from __future__ import annotations

from pathlib import Path

from tests.support import require_tool

#: Where Debian installs the PKCS#11 module.
MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")


def softhsm_setup(base: Path) -> tuple[str, str, Path]:
    """``(softhsm2-util, module path, SOFTHSM2_CONF file)`` for an empty token directory under
    ``base``; a missing tool or module skips the test, or fails it under CI (``require_tool``)."""
    util = require_tool("softhsm2-util")
    module = next((m for m in MODULES if Path(m).is_file()), None)
    if module is None:
        require_tool(MODULES[0])
    assert module is not None
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    return util, module, conf
