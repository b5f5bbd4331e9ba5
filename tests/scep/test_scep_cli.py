"""`enroll scep ...` against `enroll serve` (subprocesses, loopback)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509

from tests.harness import RunningServer


def test_cli_caps_cacert_enroll_renew_getcrl(scep_server: RunningServer, tmp_path: Path) -> None:
    url = f"{scep_server.base_http}/scep/anytime"
    caps = scep_server.enroll("scep", "caps", url).stdout.split()
    assert "SCEPStandard" in caps and "AES" in caps
    assert scep_server.enroll("scep", "cacert", url).stdout.count("BEGIN CERTIFICATE") == 3
    os.environ["SCEP_CHALLENGE"] = scep_server.init.scep_challenge
    try:
        scep_server.enroll("scep", "enroll", "-k", str(tmp_path / "k.pem"), "--cn", "cli-1",
                           "-o", str(tmp_path / "c.pem"), url)
    finally:
        del os.environ["SCEP_CHALLENGE"]
    assert oct((tmp_path / "k.pem").stat().st_mode & 0o777) == "0o600"
    first = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    assert first.subject.rfc4514_string() == "CN=cli-1"
    scep_server.enroll("scep", "renew", "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem"),
                       "--new-key", str(tmp_path / "k2.pem"), "-o", str(tmp_path / "c2.pem"), url)
    second = x509.load_pem_x509_certificate((tmp_path / "c2.pem").read_bytes())
    assert second.serial_number != first.serial_number and second.subject == first.subject
    crl = scep_server.enroll("scep", "getcrl", "--cert", str(tmp_path / "c2.pem"), "--key",
                             str(tmp_path / "k2.pem"), url).stdout
    assert crl.startswith("-----BEGIN X509 CRL-----")


def test_cli_wrong_challenge_fails(scep_server: RunningServer, tmp_path: Path) -> None:
    out = scep_server.enroll("scep", "enroll", "-k", str(tmp_path / "k.pem"), "--cn", "x", "--challenge", "bad",
                             f"{scep_server.base_http}/scep/anytime", check=False)
    assert out.returncode != 0 and "FAILURE" in out.stderr


def test_scep_is_served_over_https_too(scep_server: RunningServer, tmp_path: Path) -> None:
    url = f"{scep_server.base_https}/scep/anytime"
    out = scep_server.enroll("scep", "caps", "--ca-file", str(scep_server.ca_bundle), url)
    assert "POSTPKIOperation" in out.stdout.split()
    scep_server.enroll("scep", "enroll", "--ca-file", str(scep_server.ca_bundle), "-k", str(tmp_path / "k.pem"),
                       "--cn", "over-tls", "--challenge", scep_server.init.scep_challenge,
                       "-o", str(tmp_path / "c.pem"), url)
    assert x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes()).subject.rfc4514_string() == "CN=over-tls"


def test_long_get_pkioperation_is_accepted(scep_server: RunningServer) -> None:
    """RFC 8894 §4.1: GET URLs can be long (certmonger ~3.7 KB; RSA-4096 + chains ~10 KB)."""
    import asyncio

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from scep import cms
    from scep.client import ScepClient, http_request, self_signed_signer
    from scep.message import CertRep, PkiMessage, new_nonce
    from scep.quirks import encode_get_message

    url = f"{scep_server.base_http}/scep/anytime"
    ra = asyncio.run(ScepClient(url).get_ca_cert())[0]
    key = rsa.generate_private_key(65537, 4096)
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name.from_rfc4514_string("CN=long-get"))
    b = b.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, scep_server.init.scep_challenge.encode())
    from cryptography.hazmat.primitives import hashes

    csr = b.sign(key, hashes.SHA256())
    signer = self_signed_signer(key, csr.subject)
    der = PkiMessage(19, "LONG-GET", new_nonce()).build(
        csr.public_bytes(serialization.Encoding.DER) + b"", signer_cert=signer, sign=cms.rsa_signer(key),
        recipient=ra, cipher="aes256", digest="sha256")
    query = encode_get_message(der)
    assert len(query) > 4000
    resp = asyncio.run(http_request(f"{url}?operation=PKIOperation&message={query}"))
    assert resp.status == 200, resp.body
    assert CertRep.parse(resp.body).status.name == "SUCCESS"


def test_very_long_get_url_reaches_the_scep_handler(scep_server: RunningServer) -> None:
    """A 12 KB request line must reach SCEP (then 400 for the junk), not aiohttp's 8190-byte limit.

    enroll/server.py raises aiohttp's max_line_size (MAX_REQUEST_LINE) for this.
    """
    import asyncio
    import base64

    from scep.client import http_request

    junk = base64.b64encode(os.urandom(9000)).decode().replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    resp = asyncio.run(http_request(f"{scep_server.base_http}/scep?operation=PKIOperation&message={junk}"))
    # aiohttp's own limit would answer 400 "Got more than 8190 bytes"; SCEP's answer names the message.
    assert resp.status == 400 and b"malformed" in resp.body.lower(), resp.body
