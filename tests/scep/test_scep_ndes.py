"""The Microsoft NDES RA layout (issue 12): a signing RA and an encryption RA, both issued by the CA.

PyScep 0.0.14 failed against the single RA with "RA is not issued by CA": it picks as encryption
recipient a non-CA certificate with keyEncipherment and *without* digitalSignature, as signer a
non-CA certificate with digitalSignature, and requires both to be issued by the CA whose subject
is the recipient's issuer. ``enroll init --ndes-ra`` writes that layout
(``[scep] ra_encryption_cert`` / ``ra_encryption_key``). The Debian clients (micromdm
scepclient, strongSwan pki, certmonger scep-submit) run against both layouts in
test_scep_interop.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.errors import ConfigError
from enroll.app import ISSUER, create_app
from enroll.cli import main
from enroll.config import load_config
from enroll.pki import DevPKI, with_ndes_ra
from enroll.setup import InitResult, init_directory
from scep import cms
from scep.asn1 import PkiStatus
from scep.client import ScepClient, self_signed_signer, simple_csr
from scep.message import CertRep, PkiMessage, new_nonce
from enroll.bench.server import free_port
from tests.support import add_scep_test_profiles, cached_rsa_key


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


class RaNotIssuedByCa(Exception):
    """PyScep's refusal."""


def pyscep_select(certs: list[x509.Certificate]) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    """PyScep 0.0.14's rule, from its described behaviour: (recipient, signer, CA)."""
    non_ca = [c for c in certs if not _is_ca(c)]
    recipients = [c for c in non_ca if (ku := _key_usage(c)) is not None and ku.key_encipherment
                  and not ku.digital_signature]
    signers = [c for c in non_ca if (ku := _key_usage(c)) is not None and ku.digital_signature]
    if not recipients or not signers:
        raise RaNotIssuedByCa("no encryption-only and signing RA certificates")
    recipient, signer = recipients[0], signers[0]
    cas = [c for c in certs if _is_ca(c) and c.subject == recipient.issuer]
    if not cas:
        raise RaNotIssuedByCa("RA is not issued by CA")
    for ra in (recipient, signer):
        try:
            ra.verify_directly_issued_by(cas[0])
        except Exception as exc:
            raise RaNotIssuedByCa("RA is not issued by CA") from exc
    return recipient, signer, cas[0]


@pytest.fixture(scope="session")
def ndes_pki(dev_pki: DevPKI) -> DevPKI:
    return with_ndes_ra(dev_pki)


@dataclass
class Ndes:
    base: str
    init: InitResult
    pki: DevPKI


@pytest.fixture
async def ndes(tmp_path: Path, ndes_pki: DevPKI, aiohttp_server) -> AsyncIterator[Ndes]:  # type: ignore[no-untyped-def]
    init = init_directory(tmp_path / "ndes", https_port=free_port(), http_port=free_port(), pki=ndes_pki)
    add_scep_test_profiles(init.config_path)
    server: TestServer = await aiohttp_server(create_app(load_config(init.config_path)), host="127.0.0.1")
    yield Ndes(f"http://127.0.0.1:{server.port}", init, ndes_pki)
    await server.app[ISSUER].ledger.close()


async def test_pyscep_rule_fails_on_the_single_ra_layout(embedded: InitResult, aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    """The reproduction: our default RA has digitalSignature and keyEncipherment."""
    add_scep_test_profiles(embedded.config_path)
    server = await aiohttp_server(create_app(load_config(embedded.config_path)), host="127.0.0.1")
    with pytest.raises(RaNotIssuedByCa):
        pyscep_select(await ScepClient(f"http://127.0.0.1:{server.port}/scep").get_ca_cert())


async def test_pyscep_rule_picks_both_ras_issued_by_the_ca(ndes: Ndes) -> None:
    certs = await ScepClient(ndes.base + "/scep").get_ca_cert()
    recipient, signer, ca = pyscep_select(certs)
    assert ndes.pki.ra_enc is not None
    assert recipient == ndes.pki.ra_enc.cert and signer == ndes.pki.ra.cert and ca == ndes.pki.issuing.cert
    assert certs[0] == signer, "the signing RA stays first (sscep names it in GetCert)"


async def test_pyscep_style_enrollment_with_two_ras(ndes: Ndes) -> None:
    """Encrypted to the encryption RA, the CertRep verified with the signing RA, as PyScep does."""
    certs = await ScepClient(ndes.base + "/scep").get_ca_cert()
    recipient, signer_ra, _ = pyscep_select(certs)
    key = cached_rsa_key(70)
    csr = simple_csr(key, "pyscep-ndes", ndes.init.scep_challenge)
    signer = self_signed_signer(key, csr.subject)
    nonce = new_nonce()
    der = PkiMessage(message_type=19, transaction_id="PYSCEP-NDES", sender_nonce=nonce).build(
        csr.public_bytes(serialization.Encoding.DER), signer_cert=signer, sign=cms.rsa_signer(key),
        recipient=recipient, cipher="aes256", digest="sha256")
    assert cms.addressed_to(PkiMessage.parse(der).signed.content or b"", recipient)  # type: ignore[union-attr]
    client = ScepClient(ndes.base + "/scep")
    rep = CertRep.parse(await client.pki_operation(der))
    rep.verify([signer_ra])
    assert rep.status is PkiStatus.SUCCESS, rep.fail_info_text
    assert rep.recipient_nonce == nonce
    issued = rep.open(key.decrypt, signer)[0][0]
    assert issued.public_key() == key.public_key()


async def test_our_client_enrolls_with_two_ras_and_either_recipient(ndes: Ndes) -> None:
    client = ScepClient(ndes.base + "/scep")
    assert ndes.pki.ra_enc is not None
    assert await client.recipient() == ndes.pki.ra_enc.cert
    key = cached_rsa_key(71)
    res = await client.enroll(simple_csr(key, "ours-ndes", ndes.init.scep_challenge), key)
    assert res.status is PkiStatus.SUCCESS, res.fail_info_text
    # A client that encrypts to the signing RA (the first certificate) is still understood.
    key2 = cached_rsa_key(72)
    csr = simple_csr(key2, "first-cert", ndes.init.scep_challenge)
    signer = self_signed_signer(key2, csr.subject)
    der = PkiMessage(message_type=19, transaction_id="TO-SIGNING-RA", sender_nonce=new_nonce()).build(
        csr.public_bytes(serialization.Encoding.DER), signer_cert=signer, sign=cms.rsa_signer(key2),
        recipient=ndes.pki.ra.cert, cipher="aes128", digest="sha256")
    rep = CertRep.parse(await client.pki_operation(der))
    assert rep.status is PkiStatus.SUCCESS


def test_init_ndes_ra_writes_the_layout(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["init", "--dir", str(tmp_path / "i"), "--ndes-ra",
                                    "--https-port", str(free_port()), "--http-port", str(free_port())])
    assert out.exit_code == 0, out.output
    cfg = load_config(tmp_path / "i" / "enroll.toml")
    assert cfg.scep["ra_encryption_cert"] == "certs/scep-ra-enc.pem"
    assert cfg.scep["ra_encryption_key"] == "certs/scep-ra-enc.key"
    enc = x509.load_pem_x509_certificate((tmp_path / "i" / "certs" / "scep-ra-enc.pem").read_bytes())
    sign = x509.load_pem_x509_certificate((tmp_path / "i" / "certs" / "scep-ra.pem").read_bytes())
    ku_enc, ku_sign = _key_usage(enc), _key_usage(sign)
    assert ku_enc is not None and ku_enc.key_encipherment and not ku_enc.digital_signature
    assert ku_sign is not None and ku_sign.digital_signature and not ku_sign.key_encipherment
    assert (tmp_path / "i" / "certs" / "scep-ra-enc.key").stat().st_mode & 0o077 == 0


def test_encryption_ra_config_errors_name_the_key(tmp_path: Path, ndes_pki: DevPKI) -> None:
    from enroll import scep_mount

    init = init_directory(tmp_path / "e", https_port=free_port(), http_port=free_port(), pki=ndes_pki)
    text = init.config_path.read_text()
    init.config_path.write_text(text.replace('ra_encryption_key = "certs/scep-ra-enc.key"',
                                             'ra_encryption_key = "certs/scep-ra.key"'))
    with pytest.raises(ConfigError) as err:
        scep_mount.validate(load_config(init.config_path))
    assert err.value.key == "scep.ra_encryption_key"
    init.config_path.write_text(text.replace('ra_encryption_key = "certs/scep-ra-enc.key"\n', ""))
    with pytest.raises(ConfigError) as err:
        scep_mount.validate(load_config(init.config_path))
    assert err.value.key == "scep.ra_encryption_key"
