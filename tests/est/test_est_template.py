"""CSR attribute templates (RFC 9908): our client fills a CSR from a label's /csrattrs template
(`enroll est enroll --from-csrattrs`), and the conformance suite judges a template's
well-formedness against the RFC's ASN.1 (conformance/csrtemplate.py)."""

from __future__ import annotations

import asyncio
import base64
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from conformance import csrtemplate
from est import asn1, template
from tests.est.test_est_server import raw
from tests.harness import EstServer


async def est_cli(srv: EstServer, *args: str) -> tuple[int, str]:
    """`enroll est ...` as a child process while this event loop serves it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "enroll", "est", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, err.decode()


async def test_cli_enroll_from_csrattrs_fills_the_labels_template(est_server: EstServer, tmp_path) -> None:
    key_path, out = tmp_path / "t.key", tmp_path / "t.pem"
    code, err = await est_cli(est_server, "enroll", est_server.base_https, "--ca-file", str(est_server.ca_bundle),
                              "--label", "skg", "-u", est_server.init.est_user, "-p", est_server.init.est_password,
                              "--key", str(key_path), "--subject", "CN=tmpl-1", "--san", "dns:tmpl-1.example",
                              "--from-csrattrs", "-o", str(out))
    assert code == 0, err
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"  # the template's curve
    assert key_path.stat().st_mode & 0o077 == 0
    assert cert.subject.rfc4514_string() == "CN=tmpl-1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["tmpl-1.example"]
    assert await est_server.issued() == 1


async def test_cli_from_csrattrs_refuses_what_the_template_does_not_ask(est_server: EstServer, tmp_path) -> None:
    code, err = await est_cli(est_server, "enroll", est_server.base_https, "--ca-file", str(est_server.ca_bundle),
                              "--label", "skg", "-u", est_server.init.est_user, "-p", est_server.init.est_password,
                              "--key", str(tmp_path / "k.key"), "--subject", "CN=tmpl-2,O=Extra",
                              "--from-csrattrs", "-o", str(tmp_path / "x.pem"))
    assert code != 0 and "does not ask for subject attribute" in err
    code, err = await est_cli(est_server, "enroll", est_server.base_https, "--ca-file", str(est_server.ca_bundle),
                              "-u", est_server.init.est_user, "-p", est_server.init.est_password,
                              "--key", str(tmp_path / "k2.key"), "--subject", "CN=tmpl-3",
                              "--from-csrattrs", "-o", str(tmp_path / "y.pem"))
    assert code != 0 and "no CSR attribute template" in err  # the default label sends none
    assert await est_server.issued() == 0


def test_fill_copies_fixed_values_and_generates_the_templates_curve() -> None:
    bc = x509.BasicConstraints(ca=False, path_length=None).public_bytes()
    items = [asn1.AttrOrOid(asn1.Oid.CHALLENGE_PASSWORD), asn1.certification_request_template(
        subject=[asn1.TemplateRdn(NameOID.COMMON_NAME.dotted_string),
                 asn1.TemplateRdn(NameOID.ORGANIZATION_NAME.dotted_string, "Example Devices")],
        key_algorithm=asn1.Oid.EC_PUBLIC_KEY, key_parameters=asn1.oid_value("1.3.132.0.34"),
        extensions=[asn1.TemplateExtension(ExtensionOID.BASIC_CONSTRAINTS.dotted_string, True, bc)])]
    tmpl = template.find_template(asn1.decode_csrattrs(asn1.encode_csrattrs(items)))
    assert tmpl is not None
    key = template.key_for(tmpl)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    csr = template.fill(tmpl, key, subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-7")]))
    assert csr.subject.rfc4514_string() == "O=Example Devices,CN=dev-7"
    ext = csr.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
    assert ext.critical and ext.value.public_bytes() == bc  # copied verbatim (RFC 9908 §3.4)
    with pytest.raises(template.TemplateError):
        template.fill(tmpl, ec.generate_private_key(ec.SECP256R1()),
                      subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-7")]))  # wrong curve
    with pytest.raises(template.TemplateError):
        template.fill(tmpl, key)  # CN left open and not given


async def test_conformance_template_check_accepts_our_servers_template(est_server: EstServer) -> None:
    status, _, body = await raw(est_server, "GET", "/.well-known/est/skg/csrattrs")
    assert status == 200
    (found,) = csrtemplate.templates(base64.b64decode(body))
    assert csrtemplate.check_template(found).startswith("1 subject attribute(s), key 1.2.840.10045.2.1")


def _template(*, version: int = 0, both: bool = False) -> bytes:
    exts = [asn1.TemplateExtension("2.5.29.17")]
    der = asn1.certification_request_template(subject=[asn1.TemplateRdn("2.5.4.3")], extensions=exts).values[0]  # type: ignore[index]
    if version:
        der = der.replace(b"\x02\x01\x00", b"\x02\x01" + bytes([version]), 1)
    if both:
        from asn1crypto import core

        tmpl = asn1.CertificationRequestInfoTemplate.load(der)
        attrs = list(tmpl["attributes"])
        bc = x509.BasicConstraints(ca=False, path_length=None).public_bytes()
        ext_req = asn1.certification_request_template(
            extensions=[asn1.TemplateExtension("2.5.29.19", False, bc)]).values[0]  # type: ignore[index]
        attrs += list(asn1.CertificationRequestInfoTemplate.load(ext_req)["attributes"])
        tmpl = asn1.CertificationRequestInfoTemplate({"version": 0, "subject": tmpl["subject"],
                                                      "attributes": attrs})
        der = tmpl.dump(force=True)
        assert isinstance(core.Sequence.load(der), core.Sequence)
    return der


@pytest.mark.parametrize(("kw", "message"), [({"version": 1}, "version"),
                                            ({"both": True}, "both extensionRequest and extensionReqTemplate")])
def test_conformance_template_check_refuses_malformed_templates(kw: dict[str, object], message: str) -> None:
    assert csrtemplate.check_template(_template()).startswith("1 subject attribute(s)")
    with pytest.raises(csrtemplate.Malformed, match=message):
        csrtemplate.check_template(_template(**kw))  # type: ignore[arg-type]
