"""``backend = "est"`` (enroll/backends/upstream_est.py): enroll as an RA in front of another EST
server (RFC 7030 §2.5, §3.7). The upstream is a second enroll instance started by the test with
its own PKI; its ``gateway`` and ``manual`` labels accept client certificates of profile
``est-ra``, and the RA certificate (id-kp-cmcRA + clientAuth, signed by the upstream's CA) is
recorded in the upstream's ledger with ``enroll certs import`` (certificates of a CA authenticate
only while its ledger knows them)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.api import AuthMethod, CertificateTemplate
from ca.backends import BackendPending
from ca.errors import CAError, ConfigError, RejectReason
from ca.issuer import Issuer
from ca.keys import write_private_key
from ca.profile import build_template, check_issued
from enroll.app import build_issuer
from enroll.backends.upstream_est import CMC_RA, UpstreamEstCA
from enroll.config import load_config
from enroll.pki import DevPKI, Pair, make_cert, make_dev_pki, pem
from enroll.setup import InitResult, init_directory
from est.client import EstClient
from tests.harness import InProc, serve_inproc
from tests.support import free_port, make_csr


@pytest.fixture(scope="module")
def upstream_pki() -> DevPKI:
    """The upstream CA's own PKI (not the front's)."""
    return make_dev_pki()


def _ra(pki: DevPKI, eku: list[x509.ObjectIdentifier]) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Front"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "enroll front RA")])
    return Pair(make_cert(name, key, pki.issuing, days=365, eku=eku), key)


def _upstream_dir(tmp_path: Path, pki: DevPKI, ra: Pair, *, record: bool = True) -> InitResult:
    """`enroll init` for the upstream, with an ``est-ra`` profile whose certificates the
    gateway and manual labels accept, and the RA certificate imported into its ledger."""
    init = init_directory(tmp_path / "upstream", https_port=free_port(), http_port=free_port(), pki=pki)
    text = init.config_path.read_text()
    text = text.replace('[profiles.gateway.est]\nlabels = ["gateway"]\n',
                        '[profiles.gateway.est]\nlabels = ["gateway"]\nclient_profiles = ["gateway", "est-ra"]\n')
    text = text.replace('[profiles.manual.est]\nlabels = ["manual"]\nauth = ["basic"]\n',
                        '[profiles.manual.est]\nlabels = ["manual"]\nauth = ["basic", "client-cert"]\n'
                        'client_trust = ["enroll"]\nclient_profiles = ["est-ra"]\n')
    assert text.count("est-ra") == 2
    text += ('\n[profiles.est-ra]\nca = "issuing"\nvalidity_days = 365\nkey_types = ["ec-p256"]\n'
             'key_usage = ["digital_signature"]\nextended_key_usage = ["client_auth", "cmc_ra"]\n'
             '[profiles.est-ra.subject]\nallow = ["CN", "O"]\nrequire = ["CN"]\n')
    init.config_path.write_text(text)
    ra_pem = tmp_path / "ra.pem"
    ra_pem.write_bytes(pem(ra.cert))
    write_private_key(tmp_path / "ra.key", ra.key)
    if record:
        subprocess.run([sys.executable, "-m", "enroll", "-c", str(init.config_path), "certs", "import", str(ra_pem),
                        "--profile", "est-ra"], check=True, capture_output=True, text=True, timeout=120)
    return init


def _front_config(front: InitResult, up: InitResult, up_port: int, tmp_path: Path) -> None:
    """``[cas.upstream]`` (gateway label) and ``[cas.upstream-manual]`` (manual label) on the
    upstream; the front's gateway and manual profiles issue from them."""
    certs = up.certs_dir
    text = front.config_path.read_text()
    tables = ""
    for name, label in (("upstream", "gateway"), ("upstream-manual", "manual")):
        tables += (f'[cas.{name}]\nbackend = "est"\ncert = "{certs / "issuing-ca.pem"}"\n'
                   f'chain = ["{certs / "root-ca.pem"}"]\nurl = "https://127.0.0.1:{up_port}"\nlabel = "{label}"\n'
                   f'ra_cert = "{tmp_path / "ra.pem"}"\nra_key = "{tmp_path / "ra.key"}"\n'
                   f'trust_anchor = "{certs / "root-ca.pem"}"\nmax_wait_seconds = 2\nmax_polls = 1\n\n')
    for profile, ca in (("gateway", "upstream"), ("manual", "upstream-manual")):
        old = f'[profiles.{profile}]\nca = "issuing"'
        assert old in text
        text = text.replace(old, f'[profiles.{profile}]\nca = "{ca}"')
    head, sep, tail = text.partition("\n[profiles.")
    front.config_path.write_text(head + "\n" + tables + sep + tail)


@dataclass
class RAPair:
    up: InProc
    front: Issuer
    front_init: InitResult


@pytest.fixture
async def ra_pair(tmp_path: Path, dev_pki: DevPKI, upstream_pki: DevPKI) -> AsyncIterator[RAPair]:
    """A running upstream and a front issuer whose gateway/manual profiles forward to it."""
    ra = _ra(upstream_pki, [ExtendedKeyUsageOID.CLIENT_AUTH, CMC_RA])
    up_init = _upstream_dir(tmp_path, upstream_pki, ra)
    async with serve_inproc(load_config(up_init.config_path)) as up:
        front_init = init_directory(tmp_path / "front", https_port=free_port(), http_port=free_port(), pki=dev_pki)
        _front_config(front_init, up_init, up.https_port, tmp_path)
        front = build_issuer(load_config(front_init.config_path))
        await front.ledger.migrate()
        try:
            yield RAPair(up, front, front_init)
        finally:
            await front.ledger.close()


async def _template(front: Issuer, profile: str, csr: x509.CertificateSigningRequest) -> CertificateTemplate:
    ca = front.cas[front.profile(profile).ca]
    chain = await ca.backend.ca_chain()
    return build_template(csr, front.profile(profile), chain.issuer, 2**70 + 1,
                          dt.datetime.now(dt.timezone.utc), **ca.template_urls())


async def test_ra_forwards_the_device_csr_unchanged_over_mtls_with_cmc_ra(ra_pair: RAPair) -> None:
    csr, key = make_csr("gw-ra-1.example.net", sans=[x509.DNSName("gw-ra-1.example.net")])
    template = await _template(ra_pair.front, "gateway", csr)
    backend = ra_pair.front.cas["upstream"].backend
    assert isinstance(backend, UpstreamEstCA) and backend.issues_own_serial()
    up_before = await ra_pair.up.issuer.ledger.count_certificates("issued")
    cert = await backend.sign(template)
    assert cert.public_key() == key.public_key()
    # The upstream chose the serial; everything else matches the front's template.
    check_issued(cert, dataclasses.replace(template, serial=cert.serial_number),
                 (await backend.ca_chain()).issuer)
    rec = await ra_pair.up.issuer.ledger.find_by_serial("issuing", cert.serial_number)
    assert rec is not None and rec.status == "issued"
    assert await ra_pair.up.issuer.ledger.count_certificates("issued") == up_before + 1
    # The upstream received the device's CSR byte for byte, from the RA's TLS client certificate.
    assert rec.csr_sha256 == hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert rec.requester.method is AuthMethod.TLS_CLIENT_CERT and "enroll front RA" in rec.requester.principal
    # The evidence is the RA's own certificate, as the upstream saw it on the TLS session.
    assert rec.requester.evidence is not None and len(rec.requester.evidence) == 64


async def test_ra_follows_202_and_reports_pending_then_gets_the_approved_certificate(ra_pair: RAPair) -> None:
    csr, key = make_csr("manual-device-1")
    template = await _template(ra_pair.front, "manual", csr)
    backend = ra_pair.front.cas["upstream-manual"].backend
    with pytest.raises(BackendPending) as exc:
        await backend.sign(template)
    assert exc.value.reason is RejectReason.UNAVAILABLE and exc.value.retry_after >= 1
    waiting = await ra_pair.up.issuer.list_pending()
    assert len(waiting) == 1 and waiting[0].subject == "CN=manual-device-1"
    assert await ra_pair.up.issuer.ledger.count_certificates("issued") == 1  # only the imported RA
    assert await ra_pair.up.issuer.approve(waiting[0].id, "operator")
    cert = await backend.sign(template)  # the retry re-POSTs the same CSR (RFC 7030 §4.2.3)
    assert cert.public_key() == key.public_key()


async def test_enroll_in_front_issues_from_the_upstream_and_records_its_serial(ra_pair: RAPair) -> None:
    """The whole path: a device enrolls at the front (its own Basic auth and policy), the front
    forwards, re-checks and stores the upstream's certificate under the upstream's serial."""
    async with serve_inproc(load_config(ra_pair.front_init.config_path)) as front:
        init = ra_pair.front_init
        csr, key = make_csr("gw-ra-2.example.net", sans=[x509.DNSName("gw-ra-2.example.net")])
        async with EstClient(f"https://127.0.0.1:{front.https_port}", label="gateway",
                             trust_anchor=init.certs_dir / "root-ca.pem", username=init.est_user,
                             password=init.est_password) as est:
            result = await est.enroll(csr)
        cert = result.certificate
        assert cert.public_key() == key.public_key()
        rec = await front.issuer.ledger.find_by_serial("upstream", cert.serial_number)
        assert rec is not None and rec.status == "issued"
        assert rec.der == cert.public_bytes(serialization.Encoding.DER)
        assert await ra_pair.up.issuer.ledger.find_by_serial("issuing", cert.serial_number) is not None
        # The front's policy still decides: a SAN the gateway profile refuses never reaches the upstream.
        up_before = await ra_pair.up.issuer.ledger.count_certificates("issued")
        bad, _ = make_csr("gw-ra-3.example.net", sans=[x509.RFC822Name("a@example.net")])
        async with EstClient(f"https://127.0.0.1:{front.https_port}", label="gateway",
                             trust_anchor=init.certs_dir / "root-ca.pem", username=init.est_user,
                             password=init.est_password) as est:
            with pytest.raises(Exception) as refused:
                await est.enroll(bad)
        assert getattr(refused.value, "status", None) in (400, 403)
        assert await ra_pair.up.issuer.ledger.count_certificates("issued") == up_before


async def test_ra_unknown_to_the_upstream_ledger_is_refused(tmp_path: Path, dev_pki: DevPKI,
                                                           upstream_pki: DevPKI) -> None:
    ra = _ra(upstream_pki, [ExtendedKeyUsageOID.CLIENT_AUTH, CMC_RA])
    up_init = _upstream_dir(tmp_path, upstream_pki, ra, record=False)
    async with serve_inproc(load_config(up_init.config_path)) as up:
        front_init = init_directory(tmp_path / "front", https_port=free_port(), http_port=free_port(), pki=dev_pki)
        _front_config(front_init, up_init, up.https_port, tmp_path)
        front = build_issuer(load_config(front_init.config_path))
        await front.ledger.migrate()
        try:
            csr, _ = make_csr("gw-ra-4.example.net")
            with pytest.raises(CAError) as exc:
                await front.cas["upstream"].backend.sign(await _template(front, "gateway", csr))
            assert exc.value.reason is RejectReason.REJECTED
            assert await up.issuer.ledger.count_certificates("issued") == 0
            anomalies = [a for a in await up.issuer.ledger.audit_records(50) if a.event == "client-cert-anomaly"]
            assert anomalies
        finally:
            await front.ledger.close()


def test_config_refuses_an_ra_certificate_without_cmc_ra(tmp_path: Path, dev_pki: DevPKI,
                                                         upstream_pki: DevPKI) -> None:
    ra = _ra(upstream_pki, [ExtendedKeyUsageOID.CLIENT_AUTH])
    up_init = _upstream_dir(tmp_path, upstream_pki, ra, record=False)
    front_init = init_directory(tmp_path / "front", https_port=free_port(), http_port=free_port(), pki=dev_pki)
    _front_config(front_init, up_init, free_port(), tmp_path)
    with pytest.raises(ConfigError) as exc:
        build_issuer(load_config(front_init.config_path))
    assert exc.value.key == "cas.upstream.ra_cert" and "cmcRA" in exc.value.problem
    text = front_init.config_path.read_text().replace('url = "https://', 'url = "http://', 1)
    front_init.config_path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(front_init.config_path)
    assert exc.value.key == "cas.upstream.url"
