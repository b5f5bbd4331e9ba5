"""``backend = "command"`` (ca/backends/command.py): the CSR and the profile's template on stdin,
the certificate on stdout, exit codes 0 / 75 / 77, a timeout, and the core's re-check of what
the command returns. The signing command is the shipped ``examples/command-ca/openssl-sign.py``
(``openssl x509 -req -set_serial``); the refusal cases use small scripts written by the test."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from ca.api import Issued, Rejected
from ca.backends import kinds
from ca.backends.command import EXIT_PENDING, EXIT_REJECTED
from ca.errors import ConfigError, RejectReason
from ca.issuer import Issuer
from ca.ledger import serial_hex
from enroll.app import build_issuer
from enroll.config import load_config
from enroll.setup import InitResult
from tests.support import make_csr, request, require_tool

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "command-ca" / "openssl-sign.py"


def _use_command_ca(init: InitResult, command: list[str], extra: str = "") -> None:
    """Add ``[cas.external]`` (backend = "command", publishing the dev issuing CA) and point the
    gateway profile at it."""
    certs = init.certs_dir
    text = init.config_path.read_text()
    head, sep, tail = text.partition("[profiles.gateway]\nca = \"issuing\"")
    assert sep, "the embedded config changed: no gateway profile on the issuing CA"
    table = (f'[cas.external]\nbackend = "command"\ncert = "{certs / "issuing-ca.pem"}"\n'
             f'chain = ["{certs / "root-ca.pem"}"]\ncommand = {json.dumps(command)}\n{extra}\n')
    init.config_path.write_text(head + table + "[profiles.gateway]\nca = \"external\"" + tail)


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def _issuer(init: InitResult) -> Issuer:
    iss = build_issuer(load_config(init.config_path))
    await iss.ledger.migrate()
    return iss


async def _issued(iss: Issuer) -> int:
    return await iss.ledger.count_certificates("issued")


async def test_command_backend_issues_the_template_with_the_reserved_serial(embedded: InitResult) -> None:
    require_tool("openssl")
    certs = embedded.certs_dir
    _use_command_ca(embedded, [sys.executable, str(EXAMPLE), str(certs / "issuing-ca.pem"),
                               str(certs / "issuing-ca.key")])
    iss = await _issuer(embedded)
    try:
        csr, _ = make_csr("gw-1.example.net", sans=[x509.DNSName("gw-1.example.net")],
                          extensions=[(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"),
                                                                  b"\x05\x00"), False)])
        before = await _issued(iss)
        out = await iss.issue(request(csr, "gateway"))
        assert isinstance(out, Issued), out
        cert = out.certificate
        rec = await iss.ledger.find_by_serial("external", cert.serial_number)
        assert rec is not None and rec.status == "issued" and rec.serial == out.serial
        assert await _issued(iss) == before + 1
        issuing = (await iss.ca_chain("gateway")).issuer
        cert.verify_directly_issued_by(issuing)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-1.example.net"
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["gw-1.example.net"]
        # The template's extensions, not the CSR's (its private extension is not copied).
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        assert all(e.oid.dotted_string != "1.3.6.1.4.1.55555.1" for e in cert.extensions)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH}
        audit = [a for a in await iss.ledger.audit_records(20) if a.event == "issue" and a.ok]
        assert audit and audit[0].serial == serial_hex(cert.serial_number)
    finally:
        await iss.ledger.close()


async def test_command_receives_the_csr_and_the_decided_template(embedded: InitResult, tmp_path: Path) -> None:
    seen = tmp_path / "stdin.txt"
    _use_command_ca(embedded, [_script(tmp_path, "capture.sh", f'cat > "{seen}"\nexit {EXIT_REJECTED}')])
    iss = await _issuer(embedded)
    try:
        csr, _ = make_csr("gw-2.example.net", sans=[x509.DNSName("gw-2.example.net")])
        out = await iss.issue(request(csr, "gateway"))
        assert isinstance(out, Rejected) and out.reason is RejectReason.REJECTED
        pem, end, rest = seen.read_text().partition("-----END CERTIFICATE REQUEST-----")
        assert x509.load_pem_x509_csr((pem + end + "\n").encode()) == csr
        t = json.loads(rest)
        assert t["profile"] == "gateway" and t["ca"] == "external"
        assert int(t["serial"]) >= 2**64 and int(t["serial_hex"], 16) == int(t["serial"])
        assert t["sans"] == [{"type": "dns", "value": "gw-2.example.net"}]
        assert ["CN", "gw-2.example.net"] in t["subject_rdns"]
        assert t["key_usage"] == ["digital_signature"]  # an EC key: no keyEncipherment (RFC 5480 §3)
        assert t["not_before"].endswith("Z") and t["not_after"] > t["not_before"]
        assert await _issued(iss) == 0
    finally:
        await iss.ledger.close()


@pytest.mark.parametrize(("body", "reason"), [
    (f"cat >/dev/null\nexit {EXIT_PENDING}", RejectReason.UNAVAILABLE),  # pending: retry later (503)
    (f"cat >/dev/null\nexit {EXIT_REJECTED}", RejectReason.REJECTED),
    ("cat >/dev/null\necho broken >&2\nexit 3", RejectReason.UNAVAILABLE),
    ("cat >/dev/null\necho 'not a certificate'", RejectReason.UNAVAILABLE),
    ("exec sleep 60", RejectReason.UNAVAILABLE),  # killed at timeout_seconds
])
async def test_command_exit_codes_and_timeout_issue_nothing(embedded: InitResult, tmp_path: Path, body: str,
                                                            reason: RejectReason) -> None:
    _use_command_ca(embedded, [_script(tmp_path, "ca.sh", body)], "timeout_seconds = 1")
    iss = await _issuer(embedded)
    try:
        csr, _ = make_csr("gw-3.example.net")
        out = await iss.issue(request(csr, "gateway"))
        assert isinstance(out, Rejected) and out.reason is reason, out
        assert await _issued(iss) == 0
        refusals = [a for a in await iss.ledger.audit_records(20) if a.event == "issue" and not a.ok]
        assert refusals and refusals[0].reason.startswith(reason.value)
    finally:
        await iss.ledger.close()


async def test_core_refuses_a_command_certificate_with_another_serial(embedded: InitResult, tmp_path: Path) -> None:
    """The command must honour the reserved serial: a certificate with its own serial (here:
    the same openssl call without ``-set_serial``) is refused by the core's re-check."""
    require_tool("openssl")
    certs = embedded.certs_dir
    body = (f'd=$(mktemp -d)\nsed -n "1,/END CERTIFICATE REQUEST/p" > "$d/req.pem"\n'
            f'openssl x509 -req -in "$d/req.pem" -CA "{certs / "issuing-ca.pem"}" '
            f'-CAkey "{certs / "issuing-ca.key"}" -days 30 2>/dev/null\nrm -rf "$d"')
    _use_command_ca(embedded, [_script(tmp_path, "own-serial.sh", body)])
    iss = await _issuer(embedded)
    try:
        csr, _ = make_csr("gw-4.example.net")
        out = await iss.issue(request(csr, "gateway"))
        assert isinstance(out, Rejected) and out.reason is RejectReason.UNAVAILABLE
        assert "serial" in out.detail
        assert await _issued(iss) == 0
    finally:
        await iss.ledger.close()


def test_config_refuses_unknown_backend_and_missing_command(embedded: InitResult) -> None:
    text = embedded.config_path.read_text()
    embedded.config_path.write_text(text.replace('[cas.issuing]\nbackend = "local"',
                                                 '[cas.issuing]\nbackend = "vault"'))
    with pytest.raises(ConfigError) as exc:
        load_config(embedded.config_path)
    assert exc.value.key == "cas.issuing.backend" and "command" in exc.value.problem and "est" in exc.value.problem
    embedded.config_path.write_text(text.replace('[cas.issuing]\nbackend = "local"',
                                                 '[cas.issuing]\nbackend = "command"'))
    with pytest.raises(ConfigError) as exc:
        load_config(embedded.config_path)
    assert exc.value.key == "cas.issuing.command"
    assert {"command", "est"} <= set(kinds())
