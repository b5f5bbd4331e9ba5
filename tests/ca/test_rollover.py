"""CA key rollover (ca/rollover.py, `enroll ca rollover` / `enroll ca activate`): the next CA and
the RFC 4210 §4.4 link certificates, what EST /cacerts (RFC 7030 §4.1.3) and SCEP GetCACaps /
GetNextCACert (RFC 8894 §3.5.2, §4.7) publish before the switch, and issuance after it while
the old CA keeps signing CRLs and answering renewals for its certificates."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from click.testing import CliRunner
from cryptography import x509

from ca.api import Issued
from ca.errors import ConfigError
from ca.keys import FileKey
from ca.rollover import is_root, next_issuing, next_root
from enroll.app import build_issuer
from enroll.cli import main
from enroll.config import load_config
from enroll.pki import DevPKI
from enroll.setup import InitResult
from est.wire import decode_certs_only
from scep import cms
from scep.client import ScepClient
from tests.harness import serve_inproc
from tests.support import make_csr, request


def _cli(init: InitResult, *args: str) -> str:
    res = CliRunner().invoke(main, ["-c", str(init.config_path), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _root_as_ca(init: InitResult) -> None:
    """The embedded config with the dev root itself as [cas.issuing] (a root rollover)."""
    text = init.config_path.read_text()
    head, sep, tail = text.partition('[cas.issuing]\nbackend = "local"\ncert = "certs/issuing-ca.pem"\n')
    assert sep and tail.startswith("key = ") and tail.split("\n")[1].startswith("chain = ")
    head += '[cas.issuing]\nbackend = "local"\n'
    tail = tail.split("\n", 2)[2]  # drop the key and chain lines
    init.config_path.write_text(head + 'cert = "certs/root-ca.pem"\nkey = "certs/root-ca.key"\n' + tail)


def test_root_rollover_link_certificates_certify_each_key(dev_pki: DevPKI) -> None:
    old = dev_pki.root.cert
    nxt = next_root(old, FileKey(dev_pki.root.key), key_type="ec-p256")
    assert is_root(nxt.cert) and nxt.cert.subject == old.subject and nxt.cert.public_key() != old.public_key()
    assert nxt.new_with_old is not None and nxt.old_with_new is not None
    # NewWithOld: the new public key under the old key; OldWithNew: the old public key under the new.
    nxt.new_with_old.verify_directly_issued_by(old)
    assert nxt.new_with_old.public_key() == nxt.cert.public_key()
    nxt.old_with_new.verify_directly_issued_by(nxt.cert)
    assert nxt.old_with_new.public_key() == old.public_key()
    for link in nxt.links:
        assert link.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert link.not_valid_after_utc <= old.not_valid_after_utc


def test_issuing_ca_rollover_stays_inside_the_parent(dev_pki: DevPKI) -> None:
    old = dev_pki.issuing.cert
    nxt = next_issuing(old, dev_pki.root.cert, FileKey(dev_pki.root.key), days=36500)
    nxt.cert.verify_directly_issued_by(dev_pki.root.cert)
    assert nxt.cert.not_valid_after_utc <= dev_pki.root.cert.not_valid_after_utc
    assert nxt.links == () and nxt.chain == (dev_pki.root.cert,)
    with pytest.raises(Exception, match="parent"):
        next_issuing(old, dev_pki.issuing.cert, FileKey(dev_pki.issuing.key))


async def test_issuing_ca_rollover_publishes_next_ca_then_switches_issuance(embedded: InitResult) -> None:
    certs = embedded.certs_dir
    out = _cli(embedded, "ca", "rollover", "issuing", "--parent-cert", str(certs / "root-ca.pem"),
               "--parent-key", str(certs / "root-ca.key"))
    assert "issuing-2" in out
    new_ca = x509.load_pem_x509_certificate((certs / "issuing-2.pem").read_bytes())
    old_ca = x509.load_pem_x509_certificate((certs / "issuing-ca.pem").read_bytes())
    assert (certs / "issuing-2.key").stat().st_mode & 0o077 == 0

    config = load_config(embedded.config_path)
    assert config.cas["issuing"].next_ca == "issuing-2" and config.profiles["router"].ca == "issuing"
    async with serve_inproc(config) as srv:
        old_cert = (await srv.issuer.issue(request(make_csr("gw-old.example.net")[0], "gateway")))
        assert isinstance(old_cert, Issued)
        old_cert.certificate.verify_directly_issued_by(old_ca)
        scep = ScepClient(f"http://127.0.0.1:{srv.http_port}/scep")
        assert "GetNextCACert" in await scep.get_ca_caps()
        assert await scep.get_next_ca_cert() == [new_ca]
        resp = await scep._get("GetNextCACert")
        signed = cms.parse_signed(resp.body)
        assert signed.signer == x509.load_pem_x509_certificate((certs / "scep-ra.pem").read_bytes())
        status, _, body = await srv.get("/.well-known/est/gateway/cacerts")
        assert status == 200 and old_ca in decode_certs_only(base64.b64decode(body))

    _cli(embedded, "ca", "activate", "issuing")
    config = load_config(embedded.config_path)
    assert config.cas["issuing"].activate_at is not None
    assert config.profiles["gateway"].ca == "issuing-2" and config.profiles["router"].ca == "issuing-2"
    iss = build_issuer(config)
    await iss.ledger.migrate()
    try:
        new = await iss.issue(request(make_csr("gw-new.example.net")[0], "gateway"))
        assert isinstance(new, Issued)
        new.certificate.verify_directly_issued_by(new_ca)
        assert (await iss.ledger.find_by_serial("issuing-2", new.serial)) is not None
        assert (await iss.ca_chain("gateway")).next_issuer is None
        assert old_ca in (await iss.ca_chain("gateway")).rollover  # its certificates chain through it
        # The old CA still answers for what it signed: renewal, revocation, its own CRL.
        assert await iss.renewable(old_cert.certificate, "gateway") is not None
        await iss.revoke(old_cert.serial, "superseded", "issuing", by="test")
        crl = await iss.crl_for_ca("issuing")
        assert crl.is_signature_valid(old_ca.public_key())  # type: ignore[arg-type]
        assert crl.get_revoked_certificate_by_serial_number(old_cert.serial) is not None
    finally:
        await iss.ledger.close()
    async with serve_inproc(config) as srv:
        scep = ScepClient(f"http://127.0.0.1:{srv.http_port}/scep")
        assert "GetNextCACert" not in await scep.get_ca_caps()


async def test_root_rollover_cacerts_carries_the_link_certificates(embedded: InitResult) -> None:
    _root_as_ca(embedded)
    out = _cli(embedded, "ca", "rollover", "issuing", "--key-type", "ec-p384")
    assert "OldWithNew" in out
    certs = embedded.certs_dir
    old_root = x509.load_pem_x509_certificate((certs / "root-ca.pem").read_bytes())
    new_root = x509.load_pem_x509_certificate((certs / "issuing-2.pem").read_bytes())
    links = x509.load_pem_x509_certificates((certs / "issuing-2-links.pem").read_bytes())
    assert len(links) == 2
    config = load_config(embedded.config_path)
    async with serve_inproc(config) as srv:
        status, headers, body = await srv.get("/.well-known/est/gateway/cacerts")
        assert status == 200
        published = decode_certs_only(base64.b64decode(body))
        # OldWithOld, OldWithNew, NewWithOld and NewWithNew (RFC 7030 §4.1.3).
        assert set(published) == {old_root, new_root, *links}
        # GetNextCACert: the new root first, then the links (RFC 8894 §4.7).
        nxt = await ScepClient(f"http://127.0.0.1:{srv.http_port}/scep").get_next_ca_cert()
        assert nxt[0] == new_root and set(nxt[1:]) == set(links)

    _cli(embedded, "ca", "activate", "issuing")
    config = load_config(embedded.config_path)
    async with serve_inproc(config) as srv:
        status, _, body = await srv.get("/.well-known/est/gateway/cacerts")
        published = decode_certs_only(base64.b64decode(body))
        assert set(published) == {new_root, old_root, *links}  # a certs-only SET: no order
        issued = await srv.issuer.issue(request(make_csr("gw-after.example.net")[0], "gateway"))
        assert isinstance(issued, Issued)
        issued.certificate.verify_directly_issued_by(new_root)


def test_activation_in_the_future_keeps_the_current_ca(embedded: InitResult) -> None:
    certs = embedded.certs_dir
    _cli(embedded, "ca", "rollover", "issuing", "--parent-cert", str(certs / "root-ca.pem"),
         "--parent-key", str(certs / "root-ca.key"), "--name", "issuing-next")
    later = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    _cli(embedded, "ca", "activate", "issuing", "--at", later)
    config = load_config(embedded.config_path)
    assert config.cas["issuing"].activate_at == dt.datetime.fromisoformat(later.replace("Z", "+00:00"))
    assert config.profiles["gateway"].ca == "issuing"
    text = embedded.config_path.read_text()
    assert text.count("activate_at") == 1 and text.count("next_ca") == 1


def test_config_refuses_an_unknown_successor_and_activation_without_one(embedded: InitResult) -> None:
    text = embedded.config_path.read_text()
    embedded.config_path.write_text(text.replace("[cas.issuing]\n", '[cas.issuing]\nnext_ca = "nowhere"\n'))
    with pytest.raises(ConfigError) as exc:
        load_config(embedded.config_path)
    assert exc.value.key == "cas.issuing.next_ca"
    embedded.config_path.write_text(text.replace("[cas.issuing]\n", '[cas.issuing]\nactivate_at = "2020-01-01T00:00:00Z"\n'))
    with pytest.raises(ConfigError) as exc:
        load_config(embedded.config_path)
    assert exc.value.key == "cas.issuing.next_ca"
    res = CliRunner().invoke(main, ["-c", str(embedded.config_path), "ca", "activate", "issuing"])
    assert res.exit_code != 0

