"""PoP linking on TLS 1.3 (RFC 7030 §3.5, RFC 9266): with ``[tls] engine = "pyopenssl"`` a real
`enroll serve` checks the CSR's challengePassword against the connection's tls-exporter on
TLS 1.3 and against tls-unique on TLS 1.2; the stdlib engine refuses TLS 1.3 PoP with a clear 400.
The client side is our EST client (``pop_binding="tls-exporter"``)."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.ledger import Ledger
from enroll.config import Config
from enroll.pki import DevPKI
from enroll.setup import InitResult, record_example_client
from est.client import EstClient, build_csr
from est.errors import EstError
from enroll.tls_openssl import OpenSSLTls, openssl_context
from tests.support import suite_result
from tests.harness import RunningServer, guarded_site, start_server


def _subject(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _configure(engine: str) -> Callable[[InitResult], None]:
    def edit(init: InitResult) -> None:
        text = init.config_path.read_text()
        assert "[tls]\n" in text and "[profiles.sensor.est]\n" in text
        text = text.replace("[tls]\n", f'[tls]\nengine = "{engine}"\n', 1)
        text = text.replace("[profiles.sensor.est]\n", '[profiles.sensor.est]\npop = "tls-unique"\n', 1)
        init.config_path.write_text(text)
        record_example_client(init.config_path)

    return edit


@pytest.fixture(scope="module")
def openssl_server(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPKI) -> Iterator[RunningServer]:
    with start_server(tmp_path_factory.mktemp("pyopenssl"), dev_pki, _configure("pyopenssl")) as srv:
        yield srv


@pytest.fixture
def stdlib_server(tmp_path: Path, dev_pki: DevPKI) -> Iterator[RunningServer]:
    with start_server(tmp_path, dev_pki, _configure("stdlib")) as srv:
        yield srv


async def issued(srv: RunningServer) -> int:
    ledger = Ledger(srv.config.ledger_url)
    try:
        return await ledger.count_certificates("issued", channels=("est",))
    finally:
        await ledger.close()


def pop_client(srv: RunningServer, binding: str) -> EstClient:
    return EstClient(srv.base_https, trust_anchor=srv.ca_bundle, label="sensor", pop=True, pop_binding=binding,
                     username=srv.init.est_user, password=srv.init.est_password, max_polls=0)


async def test_tls13_csr_carrying_its_connections_tls_exporter_is_issued(openssl_server: RunningServer) -> None:
    before = await issued(openssl_server)
    key = ec.generate_private_key(ec.SECP256R1())
    seen: list[bytes] = []

    def csr(challenge: bytes | None) -> x509.CertificateSigningRequest:
        assert challenge is not None
        seen.append(challenge)
        return build_csr(key, _subject("tls13-pop"), challenge=challenge)

    async with pop_client(openssl_server, "tls-exporter") as est:
        result = await est.enroll(csr)
    assert result.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "tls13-pop"
    assert len(seen) == 1 and len(base64.b64decode(seen[0])) == 32  # RFC 9266 §2: 32 bytes
    assert await issued(openssl_server) == before + 1


async def test_tls13_csr_bound_to_another_connections_tls_exporter_is_refused(openssl_server: RunningServer) -> None:
    before = await issued(openssl_server)
    key = ec.generate_private_key(ec.SECP256R1())
    exporters: list[bytes] = []

    def bound_to(value: bytes) -> Callable[[bytes | None], x509.CertificateSigningRequest]:
        def csr(challenge: bytes | None) -> x509.CertificateSigningRequest:
            assert challenge is not None
            exporters.append(challenge)  # this connection's own exporter, deliberately not used
            return build_csr(key, _subject("tls13-replay"), challenge=value)
        return csr

    async with pop_client(openssl_server, "tls-exporter") as est:
        with pytest.raises(EstError) as first:
            await est.enroll(bound_to(b"not-a-channel-binding"))
        assert first.value.status == 400
        # The first connection's exporter, replayed on a second connection, binds nothing there.
        with pytest.raises(EstError) as replay:
            await est.enroll(bound_to(exporters[0]))
    assert replay.value.status == 400
    assert "tls-exporter" in replay.value.detail and "PoP linking failed" in replay.value.detail
    assert len(exporters) == 2 and exporters[0] != exporters[1]
    assert await issued(openssl_server) == before


async def test_tls12_tls_unique_still_links_on_the_pyopenssl_engine(openssl_server: RunningServer) -> None:
    before = await issued(openssl_server)
    key = ec.generate_private_key(ec.SECP256R1())
    async with pop_client(openssl_server, "tls-unique") as est:
        result = await est.enroll(lambda ch: build_csr(key, _subject("tls12-pop"), challenge=ch))
        assert await issued(openssl_server) == before + 1
        with pytest.raises(EstError) as wrong:
            await est.enroll(lambda ch: build_csr(key, _subject("tls12-wrong"), challenge=b"A" * 16))
    assert wrong.value.status == 400 and "tls-unique" in wrong.value.detail
    assert result.certificate.public_key() == key.public_key()
    assert await issued(openssl_server) == before + 1


async def test_client_certificate_authenticates_on_the_pyopenssl_engine(openssl_server: RunningServer) -> None:
    """The handshake's optional client certificate reaches the EST service (RFC 7030 §3.3.2)."""
    certs = openssl_server.init.certs_dir
    before = await issued(openssl_server)
    async with EstClient(openssl_server.base_https, trust_anchor=openssl_server.ca_bundle, label="gateway",
                         client_cert=certs / "example-client.pem", client_key=certs / "example-client.key",
                         max_polls=0) as est:
        result = await est.enroll(build_csr(ec.generate_private_key(ec.SECP256R1()), _subject("mtls-openssl")))
    assert result.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mtls-openssl"
    async with EstClient(openssl_server.base_https, trust_anchor=openssl_server.ca_bundle, label="gateway",
                         max_polls=0) as anonymous:
        with pytest.raises(EstError) as refused:
            await anonymous.enroll(build_csr(ec.generate_private_key(ec.SECP256R1()), _subject("anon-openssl")))
    assert refused.value.status == 401
    assert await issued(openssl_server) == before + 1


async def test_stdlib_engine_refuses_tls13_pop_with_a_clear_400(stdlib_server: RunningServer) -> None:
    before = await issued(stdlib_server)
    key = ec.generate_private_key(ec.SECP256R1())
    async with pop_client(stdlib_server, "tls-exporter") as est:
        with pytest.raises(EstError) as refused:
            await est.enroll(lambda ch: build_csr(key, _subject("tls13-stdlib"), challenge=ch))
    assert refused.value.status == 400
    assert "TLSv1.3" in refused.value.detail and "reconnect with TLS 1.2" in refused.value.detail
    assert await issued(stdlib_server) == before


def test_conformance_pop_tls_exporter_passes_on_the_pyopenssl_engine(openssl_server: RunningServer) -> None:
    report, run = openssl_server.est_suite("--label", "sensor", "--only", r"^est\.pop\.")
    r = suite_result(report, "est.pop.tls-exporter")
    assert r["verdict"] == "pass", r
    assert "another connection's tls-exporter refused (400)" in r["detail"]
    assert suite_result(report, "est.pop.tls-unique")["verdict"] == "pass"
    assert run.returncode == 0


def test_conformance_pop_tls_exporter_is_skipped_when_the_server_cannot_export(stdlib_server: RunningServer) -> None:
    report, run = stdlib_server.est_suite("--label", "sensor", "--only", r"^est\.pop\.")
    r = suite_result(report, "est.pop.tls-exporter")
    assert r["verdict"] == "skip", r
    assert "does not offer PoP linking on TLS 1.3" in r["detail"]
    assert "cannot export RFC 9266 tls-exporter" in r["detail"]
    assert suite_result(report, "est.pop.tls-unique")["verdict"] == "pass"
    assert run.returncode == 0


# --- the engine keeps the listener's TLS policy and exposure limits (enroll/tls.py, enroll/server.py)

def test_pyopenssl_engine_offers_only_ecdhe_aead_on_tls12_and_tls13(openssl_server: RunningServer) -> None:
    for cipher in ("AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384",
                   "DHE-RSA-AES128-GCM-SHA256"):
        res = openssl_server.s_client("-tls1_2", "-cipher", cipher)
        assert b"Cipher is (NONE)" in res.stdout or res.returncode != 0, (cipher, res.stdout[-400:])
    for args in (["-tls1_2", "-cipher", "ECDHE+AESGCM"], ["-tls1_3"]):
        res = openssl_server.s_client(*args)
        assert res.returncode == 0 and b"Cipher is (NONE)" not in res.stdout, res.stdout[-400:]
    res = openssl_server.s_client("-tls1_1")
    assert res.returncode != 0 or b"Cipher is (NONE)" in res.stdout, res.stdout[-400:]


def test_pyopenssl_engine_refuses_tls12_renegotiation(openssl_server: RunningServer) -> None:
    """s_client's "R" asks for a renegotiation; the server (OP_NO_RENEGOTIATION) refuses it."""
    out = openssl_server.s_client_renegotiation()
    assert b"RENEGOTIATING" in out, out[-600:]
    assert b"no renegotiation" in out.lower() and b"200 OK" not in out, out[-600:]


@pytest.fixture
async def guarded_tls(config: Config) -> AsyncIterator[int]:
    """An in-process listener through GuardedSite on the pyopenssl engine, with tiny limits."""
    async with guarded_site(max_connections=3,
                            ssl_context=OpenSSLTls(openssl_context(config), handshake_timeout=1.0)) as port:
        yield port


def _tls_client(config: Config) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(config.base_dir / "certs" / "root-ca.pem"))


async def _closed_within(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drip: bytes | None) -> bool:
    for _ in range(40):  # 4 s at most
        try:
            if drip is not None:
                writer.write(drip)
                await writer.drain()
            if await asyncio.wait_for(reader.read(100), 0.1) == b"":
                return True
        except asyncio.TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError):
            return True
    return False


async def test_pyopenssl_engine_cuts_a_stalled_tls_handshake(guarded_tls: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded_tls)  # never sends a ClientHello
    started = time.monotonic()
    assert await _closed_within(reader, writer, None)
    assert time.monotonic() - started < 3.0
    writer.close()


async def test_pyopenssl_engine_cuts_a_slow_request_head(guarded_tls: int, config: Config) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded_tls, ssl=_tls_client(config),
                                                   server_hostname="localhost")
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    assert await _closed_within(reader, writer, b"X-Drip: 1\r\n")
    assert time.monotonic() - started < 3.0
    writer.close()


async def test_pyopenssl_engine_keeps_the_connection_cap(guarded_tls: int, config: Config) -> None:
    ctx = _tls_client(config)
    conns = [await asyncio.open_connection("127.0.0.1", guarded_tls, ssl=ctx, server_hostname="localhost")
             for _ in range(3)]
    for r, w in conns:  # each completed a request and stays open (keep-alive)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(r.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
    r, w = await asyncio.open_connection("127.0.0.1", guarded_tls, ssl=ctx, server_hostname="localhost")
    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        extra = await asyncio.wait_for(r.read(100), 5)
    except (ConnectionError, ssl.SSLError):
        extra = b""
    assert extra == b""  # dropped once its handshake is done: every slot is a real client
    w.close()
    for _, w in conns:
        w.close()
