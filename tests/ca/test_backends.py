"""``backend = "command"`` (ca/backends/command.py): the CSR and the profile's template on stdin,
the certificate on stdout, exit codes 0 / 75 / 77, a timeout, and the core's re-check of what
the command returns. The signing command is the shipped ``examples/command-ca/openssl-sign.py``
(``openssl x509 -req -set_serial``); the refusal cases use small scripts written by the test.
The last section drives ``CommandCA``, ``template_json`` and ``validate`` directly."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import ipaddress
import json
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca.api import CAChain, CertificateTemplate, Issued, Rejected
from ca.backends import kinds
from ca.backends import BackendPending
from ca.backends.command import EXIT_PENDING, EXIT_REJECTED, CommandCA, template_json, validate
from ca.errors import CAError, ConfigError, RejectReason
from ca.issuer import Issuer
from ca.ledger import serial_hex
from enroll.app import build_issuer
from enroll.config import load_config
from enroll.pki import DevPKI
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
        assert refusals and (refusals[0].reason or "").startswith(reason.value)
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


# --- CommandCA, template_json and validate, directly --------------------------------------

def _template(dev_pki: DevPKI, *, csr: bool = True) -> CertificateTemplate:
    req, key = make_csr("gw-5.example.net")
    start = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    aia = x509.AuthorityInformationAccess([
        x509.AccessDescription(x509.oid.AuthorityInformationAccessOID.OCSP,
                               x509.UniformResourceIdentifier("http://o/")),
        x509.AccessDescription(x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                               x509.UniformResourceIdentifier("http://c/ca.cer"))])
    cdp = x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier("http://c/ca.crl")],
                                                             None, None, None)])
    sans = x509.SubjectAlternativeName([x509.DNSName("gw-5.example.net"),
                                        x509.IPAddress(ipaddress.ip_address("192.0.2.5")),
                                        x509.RFC822Name("ops@example.net"), x509.UniformResourceIdentifier("urn:gw:5")])
    ku = x509.KeyUsage(True, False, True, False, False, False, False, False, False)
    eku = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
    return CertificateTemplate(subject=req.subject, public_key=key.public_key(), not_before=start,
                               not_after=start + dt.timedelta(days=30), serial=2**70 + 5,
                               extensions=((sans, False), (ku, True), (eku, False), (cdp, False), (aia, False)),
                               profile="gateway", csr=req if csr else None)


def _command_ca(dev_pki: DevPKI, argv: list[str]) -> CommandCA:
    chain = CAChain(issuer=dev_pki.issuing.cert, chain=(dev_pki.issuing.cert, dev_pki.root.cert))
    return CommandCA("external", chain, argv, timeout=10, retry_after=42)


def test_template_json_spells_every_field_the_command_reads(dev_pki: DevPKI) -> None:
    template = _template(dev_pki)
    t = template_json(template, "external")
    assert (t["version"], t["ca"], t["profile"]) == (1, "external", "gateway")
    assert t["serial"] == str(2**70 + 5) and t["serial_hex"] == hex(2**70 + 5)
    assert t["subject"] == "CN=gw-5.example.net" and t["subject_rdns"] == [["CN", "gw-5.example.net"]]
    assert x509.Name.from_rfc4514_string(t["subject"]) == template.subject
    assert base64.b64decode(t["subject_der"]) == template.subject.public_bytes()
    assert (t["not_before"], t["not_after"]) == ("2030-01-02T03:04:05Z", "2030-02-01T03:04:05Z")
    assert t["sans"] == [{"type": "dns", "value": "gw-5.example.net"}, {"type": "ip", "value": "192.0.2.5"},
                         {"type": "email", "value": "ops@example.net"}, {"type": "uri", "value": "urn:gw:5"}]
    assert t["key_usage"] == ["digital_signature", "key_encipherment"]
    assert t["extended_key_usage"] == ["1.3.6.1.5.5.7.3.2"]
    assert (t["crl_urls"], t["ocsp_urls"], t["ca_issuers_urls"]) == (["http://c/ca.crl"], ["http://o/"],
                                                                      ["http://c/ca.cer"])
    assert [(e["oid"], e["critical"]) for e in t["extensions"]] == [
        (ext.oid.dotted_string, critical) for ext, critical in template.extensions]
    assert [base64.b64decode(e["der"]) for e in t["extensions"]] == [ext.public_bytes()
                                                                     for ext, _ in template.extensions]
    json.dumps(t)  # all of it is JSON


def test_template_json_reads_naive_times_as_utc(dev_pki: DevPKI) -> None:
    template = _template(dev_pki)
    naive = dataclasses.replace(template, not_before=template.not_before.replace(tzinfo=None),
                                not_after=template.not_after.replace(tzinfo=None))
    assert template_json(naive, "external") == template_json(template, "external")


async def test_command_ca_passes_ca_profile_and_serial_and_returns_the_printed_certificate(
        dev_pki: DevPKI, tmp_path: Path) -> None:
    printed = tmp_path / "out.pem"
    printed.write_bytes(dev_pki.client.cert.public_bytes(serialization.Encoding.PEM))
    env = tmp_path / "env.txt"
    script = _script(tmp_path, "env.sh", f'cat >/dev/null\necho "$ENROLL_CA $ENROLL_PROFILE $ENROLL_SERIAL" > "{env}"\n'
                                         f'cat "{printed}"')
    cert = await _command_ca(dev_pki, [script]).sign(_template(dev_pki))
    assert cert == dev_pki.client.cert  # returned as printed: the core re-checks it (above)
    assert env.read_text().split() == ["external", "gateway", hex(2**70 + 5)]
    assert (await _command_ca(dev_pki, [script]).ca_chain()).issuer == dev_pki.issuing.cert


async def test_command_ca_refuses_without_a_csr_or_a_program(dev_pki: DevPKI, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = _script(tmp_path, "never.sh", f'touch "{marker}"')
    with pytest.raises(CAError, match="needs the request's CSR") as exc:
        await _command_ca(dev_pki, [script]).sign(_template(dev_pki, csr=False))
    assert exc.value.reason is RejectReason.UNAVAILABLE and not marker.exists()
    with pytest.raises(CAError, match="cannot start") as exc:
        await _command_ca(dev_pki, [str(tmp_path / "missing")]).sign(_template(dev_pki))
    assert exc.value.reason is RejectReason.UNAVAILABLE


async def test_command_ca_pending_carries_the_configured_retry_after(dev_pki: DevPKI, tmp_path: Path) -> None:
    script = _script(tmp_path, "later.sh", f"cat >/dev/null\nexit {EXIT_PENDING}")
    with pytest.raises(BackendPending) as exc:
        await _command_ca(dev_pki, [script]).sign(_template(dev_pki))
    assert exc.value.retry_after == 42 and exc.value.reason is RejectReason.UNAVAILABLE


def test_validate_resolves_a_relative_program_and_bounds_the_numbers(tmp_path: Path) -> None:
    path = "cas.external"
    assert validate({"command": ["bin/sign", "-v"]}, path, tmp_path) == {
        "command": (str(tmp_path / "bin/sign"), "-v"), "timeout_seconds": 30, "retry_after": 60}
    assert validate({"command": ["/usr/bin/sign"], "timeout_seconds": 5, "retry_after": 7}, path, tmp_path) == {
        "command": ("/usr/bin/sign",), "timeout_seconds": 5, "retry_after": 7}
    assert validate({"command": ["sign"]}, path, tmp_path)["command"] == ("sign",)  # found on PATH
    bad_tables: list[tuple[dict[str, object], str]] = [
        ({"command": []}, "command"), ({"command": "sign"}, "command"), ({"command": ["", "x"]}, "command"),
        ({"command": ["s"], "timeout_seconds": 0}, "timeout_seconds"),
        ({"command": ["s"], "timeout_seconds": 601}, "timeout_seconds"),
        ({"command": ["s"], "retry_after": 0}, "retry_after")]
    for bad, key in bad_tables:
        with pytest.raises(ConfigError) as exc:
            validate(bad, path, tmp_path)
        assert exc.value.key == f"{path}.{key}", bad
