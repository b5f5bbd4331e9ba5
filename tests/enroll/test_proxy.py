"""Behind a load balancer (issue 17): nginx from Debian in front of `enroll serve`, with the
configuration files shipped under packaging/nginx/.

1. TLS passthrough (nginx ``stream``): enroll terminates TLS itself; EST with a client
   certificate, EST with PoP linking (tls-unique survives) and SCEP work unchanged.
2. TLS terminated at nginx, which forwards ``$ssl_client_escaped_cert`` in ``X-Client-Cert``:
   honoured only from ``[server] trusted_proxies`` (nginx connects from 127.0.0.2; the tests'
   direct clients come from 127.0.0.1), the forwarded certificate still meets the trust store and
   the lifecycle rule, PoP labels refuse, and X-Forwarded-For becomes the throttle's address.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca.errors import ConfigError
from ca.ledger import Ledger
from enroll.config import ServerConfig, load_config
from enroll.pki import DevPKI
from enroll.proxy import (
    BadForwardedCertificate,
    ProxyPolicy,
    client_address,
    decode_forwarded_certificate,
)
from enroll.setup import InitResult, record_example_client
from est.client import EstClient, build_csr
from est.errors import EstError
from scep.asn1 import PkiStatus
from scep.client import ScepClient, simple_csr
from tests.enroll.nginx import PROXY_SOURCE, Nginx, nginx
from tests.harness import RunningServer, start_nodes, start_server
from tests.support import missing_peer


def _subject(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


async def issued_serials(srv: RunningServer) -> set[int]:
    ledger = Ledger(srv.config.ledger_url)
    try:
        return {r.serial for r in await ledger.list_certificates(limit=100_000) if r.status == "issued"}
    finally:
        await ledger.close()


def _set_pop(init: InitResult, profile: str = "sensor") -> None:
    text = init.config_path.read_text()
    marker = f"[profiles.{profile}.est]\n"
    assert marker in text
    init.config_path.write_text(text.replace(marker, marker + 'pop = "tls-unique"\n', 1))


# --- pure rules ------------------------------------------------------------------------------

POLICY = ProxyPolicy.from_config(ServerConfig(https=(), http=(), trusted_proxies=("10.0.0.0/24", "::1/128")))


def test_forwarded_for_rightmost_untrusted_hop_is_the_client() -> None:
    # the client wrote "6.6.6.6" itself; the edge proxy 10.0.0.7 appended the real peer 203.0.113.9
    assert client_address(["6.6.6.6, 203.0.113.9, 10.0.0.7"], "10.0.0.5", POLICY) == "203.0.113.9"
    assert client_address(["203.0.113.9"], "::1", POLICY) == "203.0.113.9"
    assert client_address(["198.51.100.1", "203.0.113.9"], "10.0.0.5", POLICY) == "203.0.113.9"  # two headers


def test_forwarded_for_ignored_from_untrusted_peer_and_unparsable_hop() -> None:
    assert client_address(["203.0.113.9"], "192.0.2.1", POLICY) == "192.0.2.1"
    assert client_address(["203.0.113.9, garbage"], "10.0.0.5", POLICY) == "10.0.0.5"
    assert client_address([], "10.0.0.5", POLICY) == "10.0.0.5"


def test_forwarded_certificate_encodings(dev_pki: DevPKI) -> None:
    cert = dev_pki.client.cert
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    import base64

    der_b64 = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    for value in (urllib.parse.quote(pem, safe=""), pem, der_b64):
        assert decode_forwarded_certificate(value) == cert
    assert decode_forwarded_certificate("") is None
    with pytest.raises(BadForwardedCertificate):
        decode_forwarded_certificate(urllib.parse.quote("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"))


def test_config_trusted_proxies_and_header_are_validated(embedded: InitResult) -> None:
    path = embedded.config_path
    text = path.read_text()
    for extra, key in (('trusted_proxies = ["10.0.0.1/8"]', "server.trusted_proxies"),
                       ('trusted_proxies = ["nginx"]', "server.trusted_proxies"),
                       ('client_cert_header = "X-Client-Cert"', "server.client_cert_header"),
                       ('trusted_proxies = ["10.0.0.0/8"]\nclient_cert_header = "Authorization"',
                        "server.client_cert_header")):
        path.write_text(text.replace("[server]\n", f"[server]\n{extra}\n", 1))
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert err.value.key == key
    path.write_text(text.replace("[server]\n", '[server]\ntrusted_proxies = ["10.0.0.0/8", "::1"]\n'
                                 'client_cert_header = "X-Client-Cert"\n', 1))
    server = load_config(path).server
    assert server.trusted_proxies == ("10.0.0.0/8", "::1") and server.client_cert_header == "X-Client-Cert"


# --- 1. TLS passthrough ------------------------------------------------------------------------

@pytest.fixture
def passthrough(tmp_path: Path, dev_pki: DevPKI) -> Iterator[tuple[RunningServer, Nginx]]:
    with start_server(tmp_path, dev_pki, _set_pop) as srv:
        certs = srv.init.certs_dir
        record_example_client(srv.init.config_path)
        with nginx(tmp_path / "nginx", "enroll-passthrough.conf", tls_nodes=[srv.https_port],
                   plain_nodes=[srv.http_port], cert=certs / "tls-server.pem", key=certs / "tls-server.key") as px:
            yield srv, px


async def test_passthrough_est_client_certificate_pop_and_scep(passthrough: tuple[RunningServer, Nginx]) -> None:
    srv, px = passthrough
    certs = srv.init.certs_dir
    before = await issued_serials(srv)
    async with EstClient(px.base_https, trust_anchor=srv.ca_bundle, label="gateway",
                         client_cert=certs / "example-client.pem", client_key=certs / "example-client.key") as est:
        mtls = (await est.enroll(build_csr(ec.generate_private_key(ec.SECP256R1()), _subject("pt-mtls")))).certificate
    # PoP linking needs the client's own TLS session: passthrough keeps it end to end
    async with EstClient(px.base_https, trust_anchor=srv.ca_bundle, label="sensor", pop=True,
                         username=srv.init.est_user, password=srv.init.est_password) as est:
        pop_key = ec.generate_private_key(ec.SECP256R1())
        pop = (await est.enroll(lambda ch: build_csr(pop_key, _subject("pt-pop"), challenge=ch))).certificate
    key = rsa.generate_private_key(65537, 2048)
    reply = await ScepClient(px.base_http + "/scep/router").enroll(simple_csr(key, "pt-scep",
                                                                             challenge=srv.init.scep_challenge), key)
    assert reply.status is PkiStatus.SUCCESS, reply
    after = await issued_serials(srv)
    assert after - before == {mtls.serial_number, pop.serial_number, reply.certificates[0].serial_number}


# --- 2. TLS terminated at nginx ----------------------------------------------------------------

def _trust_nginx(init: InitResult) -> None:
    text = init.config_path.read_text()
    init.config_path.write_text(text.replace("[server]\n", f'[server]\ntrusted_proxies = ["{PROXY_SOURCE}/32"]\n'
                                             'client_cert_header = "X-Client-Cert"\n', 1))
    _set_pop(init)


@pytest.fixture
def terminating(tmp_path: Path, dev_pki: DevPKI) -> Iterator[tuple[RunningServer, Nginx]]:
    with start_server(tmp_path, dev_pki, _trust_nginx) as srv:
        certs = srv.init.certs_dir
        record_example_client(srv.init.config_path)
        with nginx(tmp_path / "nginx", "enroll-terminate.conf", tls_nodes=[srv.https_port],
                   plain_nodes=[srv.http_port], cert=certs / "tls-server.pem", key=certs / "tls-server.key") as px:
            yield srv, px


def _client(srv: RunningServer, px: Nginx, label: str, **kw: object) -> EstClient:
    certs = srv.init.certs_dir
    kw.setdefault("client_cert", certs / "example-client.pem")
    kw.setdefault("client_key", certs / "example-client.key")
    return EstClient(px.base_https, trust_anchor=srv.ca_bundle, label=label, **kw)  # type: ignore[arg-type]


async def test_terminated_forwarded_client_certificate_authenticates_est_and_scep_works(
        terminating: tuple[RunningServer, Nginx]) -> None:
    srv, px = terminating
    before = await issued_serials(srv)
    # no password: only the certificate nginx forwarded can authenticate this request
    async with _client(srv, px, "gateway") as est:
        cert = (await est.enroll(build_csr(ec.generate_private_key(ec.SECP256R1()), _subject("tp-mtls")))).certificate
    key = rsa.generate_private_key(65537, 2048)
    reply = await ScepClient(px.base_https + "/scep/router",
                             ssl_context=ssl.create_default_context(cafile=str(srv.ca_bundle))).enroll(
        simple_csr(key, "tp-scep", challenge=srv.init.scep_challenge), key)
    assert reply.status is PkiStatus.SUCCESS, reply
    key2 = rsa.generate_private_key(65537, 2048)
    plain = await ScepClient(px.base_http + "/scep/router").enroll(
        simple_csr(key2, "tp-scep-http", challenge=srv.init.scep_challenge), key2)
    assert plain.status is PkiStatus.SUCCESS, plain
    assert await issued_serials(srv) - before == {cert.serial_number, reply.certificates[0].serial_number,
                                                   plain.certificates[0].serial_number}


async def test_terminated_revoked_forwarded_certificate_is_refused(terminating: tuple[RunningServer, Nginx],
                                                                   tmp_path: Path) -> None:
    srv, px = terminating
    key = ec.generate_private_key(ec.SECP256R1())
    async with _client(srv, px, "gateway") as est:
        mine = (await est.enroll(build_csr(key, _subject("tp-revoked")))).certificate
    (tmp_path / "mine.pem").write_bytes(mine.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "mine.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    async with _client(srv, px, "gateway", client_cert=tmp_path / "mine.pem", client_key=tmp_path / "mine.key") as est:
        again = (await est.enroll(build_csr(ec.generate_private_key(ec.SECP256R1()), _subject("tp-ok")))).certificate
    srv.enroll("revoke", f"{mine.serial_number:x}", "--reason", "key_compromise")
    before = await issued_serials(srv)
    async with _client(srv, px, "gateway", client_cert=tmp_path / "mine.pem", client_key=tmp_path / "mine.key") as est:
        with pytest.raises(EstError) as err:
            await est.enroll(build_csr(ec.generate_private_key(ec.SECP256R1()), _subject("tp-after-revoke")))
    assert err.value.status in (401, 403), err.value
    assert again.serial_number in before and await issued_serials(srv) == before


async def test_terminated_certificate_outside_the_trust_store_is_refused(terminating: tuple[RunningServer, Nginx],
                                                                         tmp_path: Path) -> None:
    srv, px = terminating
    import datetime as dt

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    rogue = (x509.CertificateBuilder().subject_name(_subject("tp-mtls")).issuer_name(_subject("Rogue CA"))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
             .sign(key, hashes.SHA256()))
    (tmp_path / "rogue.pem").write_bytes(rogue.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "rogue.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    before = await issued_serials(srv)
    async with _client(srv, px, "gateway", client_cert=tmp_path / "rogue.pem", client_key=tmp_path / "rogue.key") as est:
        with pytest.raises(EstError) as err:
            await est.enroll(build_csr(ec.generate_private_key(ec.SECP256R1()), _subject("tp-rogue")))
    assert err.value.status == 401, err.value
    assert await issued_serials(srv) == before


async def test_terminated_pop_label_refuses_with_a_clear_message(terminating: tuple[RunningServer, Nginx]) -> None:
    srv, px = terminating
    before = await issued_serials(srv)
    key = ec.generate_private_key(ec.SECP256R1())
    async with EstClient(px.base_https, trust_anchor=srv.ca_bundle, label="sensor", pop=True,
                         username=srv.init.est_user, password=srv.init.est_password) as est:
        # the client binds its session with nginx, which enroll never sees
        with pytest.raises(EstError) as err:
            await est.enroll(lambda ch: build_csr(key, _subject("tp-pop"), challenge=ch))
    assert err.value.status == 400
    assert "TLS-terminating proxy" in str(err.value) and "passthrough" in str(err.value)
    assert await issued_serials(srv) == before


async def _post_direct(url: str, csr: x509.CertificateSigningRequest, headers: dict[str, str],
                       ctx: ssl.SSLContext | None) -> tuple[int, str]:
    import base64

    body = base64.b64encode(csr.public_bytes(serialization.Encoding.DER))
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, ssl=ctx if ctx is not None else False,
                                headers={"Content-Type": "application/pkcs10", **headers}) as resp:
            return resp.status, await resp.text()


async def test_untrusted_client_sending_the_header_gets_no_authentication_from_it(
        terminating: tuple[RunningServer, Nginx]) -> None:
    srv, _ = terminating
    pem = srv.init.certs_dir.joinpath("example-client.pem").read_text()
    forged = {"X-Client-Cert": urllib.parse.quote(pem, safe=""), "X-Forwarded-Proto": "https",
              "X-Forwarded-For": PROXY_SOURCE}
    csr = build_csr(ec.generate_private_key(ec.SECP256R1()), _subject("forged"))
    before = await issued_serials(srv)
    # straight to the node's plain-HTTP listener from 127.0.0.1 (not a trusted proxy)
    status, text = await _post_direct(f"{srv.base_http}/.well-known/est/gateway/simpleenroll", csr, forged, None)
    assert status == 403 and "HTTPS" in text, (status, text)
    # straight to the node's HTTPS listener without a TLS client certificate
    ctx = ssl.create_default_context(cafile=str(srv.ca_bundle))
    status, text = await _post_direct(f"{srv.base_https}/.well-known/est/gateway/simpleenroll", csr, forged, ctx)
    assert status == 401, (status, text)
    assert await issued_serials(srv) == before


async def test_forwarded_for_feeds_the_throttle_address(terminating: tuple[RunningServer, Nginx]) -> None:
    srv, px = terminating
    csr = build_csr(ec.generate_private_key(ec.SECP256R1()), _subject("tp-badpw"))
    before = await issued_serials(srv)
    async with EstClient(px.base_https, trust_anchor=srv.ca_bundle, label="gateway", username=srv.init.est_user,
                         password="wrong-password") as est:
        with pytest.raises(EstError) as err:
            await est.enroll(csr)
    assert err.value.status == 401
    assert await issued_serials(srv) == before
    db = srv.config.ledger_url.removeprefix("sqlite:///")
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            keys = {row[0] for row in conn.execute(sa.text("SELECT key FROM auth_failures WHERE scope = 'client'"))}
    finally:
        engine.dispose()
    # the client as nginx saw it (127.0.0.1), not nginx itself (127.0.0.2)
    assert "127.0.0.1" in keys and PROXY_SOURCE not in keys, keys


def test_nginx_rendering_keeps_every_directive_but_addresses() -> None:
    from tests.enroll.nginx import PACKAGING, render

    for name in ("enroll-terminate.conf", "enroll-passthrough.conf"):
        text = (PACKAGING / name).read_text()
        out = render(text, https_port=1443, http_port=1080, tls_nodes=[1], plain_nodes=[2], cert=Path("/c"),
                     key=Path("/k"))
        directives = "\n".join(line.split("#", 1)[0] for line in out.splitlines())
        assert "10.0.0." not in directives and "listen 443" not in directives and "listen 80" not in directives
        if "ssl_verify_client" in text:
            assert "ssl_verify_client optional_no_ca;" in out and "$ssl_client_escaped_cert" in out




# --- several nodes on one PostgreSQL behind the terminating proxy ------------------------------

NODES = 3


@pytest.fixture
def pg_nodes_behind_nginx(tmp_path: Path, dev_pki: DevPKI,
                          request: pytest.FixtureRequest) -> Iterator[tuple[list[Path], InitResult, Nginx, str]]:
    """Three `enroll serve` nodes sharing one PostgreSQL database, nginx terminating TLS in front."""
    pg = request.getfixturevalue("pg_cluster")
    if pg is None:
        missing_peer("PostgreSQL (Debian postgresql)")
    url = str(pg.new_database())
    with start_nodes(tmp_path, dev_pki, url, NODES, edit=_trust_nginx) as (init, nodes):
        certs = init.certs_dir
        with nginx(tmp_path / "nginx", "enroll-terminate.conf", tls_nodes=[n.https_port for n in nodes],
                   plain_nodes=[n.http_port for n in nodes], cert=certs / "tls-server.pem",
                   key=certs / "tls-server.key") as px:
            yield [n.log for n in nodes], init, px, url


async def test_est_and_scep_through_the_proxy_to_three_nodes_on_postgresql(
        pg_nodes_behind_nginx: tuple[list[Path], InitResult, Nginx, str]) -> None:
    logs, init, px, url = pg_nodes_behind_nginx
    certs = init.certs_dir
    got: list[x509.Certificate] = []
    for i in range(2 * NODES):  # nginx round-robins every request over the three nodes
        async with EstClient(px.base_https, trust_anchor=certs / "root-ca.pem", label="gateway",
                             client_cert=certs / "example-client.pem", client_key=certs / "example-client.key") as est:
            got.append((await est.enroll(build_csr(ec.generate_private_key(ec.SECP256R1()),
                                                   _subject(f"lb-est-{i}")))).certificate)
    for i in range(NODES):
        key = rsa.generate_private_key(65537, 2048)
        reply = await ScepClient(px.base_http + "/scep/router").enroll(
            simple_csr(key, f"lb-scep-{i}", challenge=init.scep_challenge), key)
        assert reply.status is PkiStatus.SUCCESS, reply
        got.append(reply.certificates[0])
    serials = {c.serial_number for c in got}
    assert len(serials) == 3 * NODES
    ledger = Ledger(url)
    try:
        stored = {r.serial for r in await ledger.list_certificates(limit=100_000) if r.status == "issued"}
    finally:
        await ledger.close()
    assert serials <= stored
    # every node took part: each one's audit log shows issuance
    for log in logs:
        assert '"event": "issue", "ok": true' in log.read_text(), log.name
