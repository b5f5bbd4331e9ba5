"""docs/ARCHITECTURE.md's package rules, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ca", "est", "scep", "enroll", "conformance")
CODECS = ("est/asn1.py", "est/wire.py", "est/serverkeygen_cms.py", "est/signerinfo.py", "scep/asn1.py",
          "scep/cms.py", "scep/message.py")
#: The HTTP clients besides */http.py and enroll/: our EST client and the conformance transport.
AIOHTTP_CLIENTS = ("est/client.py", "conformance/transport.py")
SERVER_SIDE = ("ca", "enroll", "est.service", "est.http", "scep.service", "scep.http")


def imports_of(path: Path) -> set[str]:
    """Every module name an ``import`` or ``from ... import`` in ``path`` names, relative imports
    resolved against the file's package."""
    out: set[str] = set()
    package = path.relative_to(ROOT).parent.parts
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = resolve(package, node.level, node.module)
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)
    return out


def resolve(package: tuple[str, ...], level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` inside ``package``."""
    if not level:
        return module or ""
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def test_relative_imports_are_resolved() -> None:
    """A relative import cannot slip past the rules below."""
    assert resolve(("est",), 2, "scep") == "scep"
    assert resolve(("est",), 1, None) == "est"
    assert resolve(("ca", "backends"), 2, "ledger") == "ca.ledger"
    assert resolve(("ca",), 0, "ca.ledger") == "ca.ledger"


def sources(pkg: str) -> list[Path]:
    return sorted((ROOT / pkg).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", sources("ca"), ids=lambda p: str(p.relative_to(ROOT)))
def test_ca_imports_no_protocol_and_no_wiring(path: Path) -> None:
    bad = {m for m in imports_of(path) if top(m) in ("est", "scep", "enroll", "conformance", "aiohttp")}
    assert not bad, f"{path}: ca/ must stay protocol-neutral, imports {bad}"


@pytest.mark.parametrize("pair", [("est", "scep"), ("scep", "est")], ids=lambda p: f"{p[0]}-not-{p[1]}")
def test_protocols_never_import_each_other(pair: tuple[str, str]) -> None:
    src, other = pair
    for path in sources(src):
        bad = {m for m in imports_of(path) if top(m) in (other, "enroll", "conformance")}
        assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_aiohttp_only_in_http_modules_clients_and_enroll(pkg: str) -> None:
    for path in sources(pkg):
        rel = path.relative_to(ROOT).as_posix()
        if pkg == "enroll" or path.name == "http.py" or rel in AIOHTTP_CLIENTS:
            continue
        bad = {m for m in imports_of(path) if top(m) == "aiohttp"}
        assert not bad, f"{rel} imports aiohttp; keep it in */http.py, clients and enroll/"


@pytest.mark.parametrize("codec", CODECS)
def test_codecs_do_no_io(codec: str) -> None:
    path = ROOT / codec
    bad = {m for m in imports_of(path) if top(m) in ("aiohttp", "asyncio", "socket", "sqlalchemy")}
    assert not bad, f"{codec} is a codec: bytes in, objects out; it imports {bad}"


def test_conformance_imports_nothing_from_the_server_side() -> None:
    for path in sources("conformance"):
        bad = {m for m in imports_of(path) if any(m == s or m.startswith(s + ".") for s in SERVER_SIDE)}
        assert not bad, f"{path} imports server code {bad}: the suite must judge bytes on its own"


#: The issuance core's storage: only ca/ (and enroll/ wiring, the admin API, the CLI) may use it.
LEDGER_MODULES = ("ca.ledger", "ca.unit_of_work", "ca.sqlite_writer", "ca.serials", "ca.ratelimit", "sqlalchemy")


@pytest.mark.parametrize("pkg", ["est", "scep"])
def test_protocol_services_never_touch_the_ledger(pkg: str) -> None:
    """The core owns the unit of work (docs/ARCHITECTURE.md): EST and SCEP call one core method
    per protocol action and neither import the ledger nor reach it through the issuer."""
    for path in sources(pkg):
        tree = ast.parse(path.read_text(), str(path))
        bad = {m for m in imports_of(path) if any(m == s or m.startswith(s + ".") for s in LEDGER_MODULES)}
        assert not bad, f"{path} imports {bad}"
        touched = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "ledger"]
        assert not touched, f"{path}: lines {touched} reach the ledger"


@pytest.mark.parametrize("pkg", [*PACKAGES, "tests"])
def test_comments_cite_only_what_is_in_the_repository(pkg: str) -> None:
    """Code comments cite RFCs and the repository's own documents (docs/ARCHITECTURE.md,
    README), never design notes or research kept outside it."""
    # Spelled in parts so that this file does not itself cite what it forbids.
    outside = ("DESIGN" + ".md", "research" + "/", "../" + "shared", "/work/" + "shared")
    for path in sources(pkg):
        text = path.read_text()
        bad = [w for w in outside if w in text]
        assert not bad, f"{path} cites {bad}"


@pytest.mark.parametrize("service", ["est/service.py", "est/pop.py", "est/csrattrs.py", "est/serverkeygen.py",
                                     "scep/service.py"])
def test_protocol_services_leave_asn1_to_the_codecs(service: str) -> None:
    """The rules modules decide; parsing untrusted ASN.1 stays in the codecs (*/asn1.py, est/wire.py,
    est/cmc.py, scep/cms.py, scep/message.py)."""
    bad = {m for m in imports_of(ROOT / service) if top(m) == "asn1crypto"}
    assert not bad, f"{service} imports {bad}"


TEST_PACKAGES = sorted(p.name for p in (ROOT / "tests").iterdir() if (p / "__init__.py").exists())


@pytest.mark.parametrize("pkg", TEST_PACKAGES)
def test_test_packages_share_helpers_only_through_the_shared_modules(pkg: str) -> None:
    """docs/ARCHITECTURE.md, "Tests": a helper two test packages need lives in tests/support.py
    or tests/harness.py, never in another package's test modules."""
    bad = {f"{p.relative_to(ROOT)}: {m}" for p in sources(f"tests/{pkg}") for m in imports_of(p)
           if m.startswith("tests.") and m.split(".")[1] in TEST_PACKAGES and m.split(".")[1] != pkg}
    assert not bad, sorted(bad)
