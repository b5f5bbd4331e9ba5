"""One-time EST credentials (issue 18): a per-device HTTP Basic credential (RFC 7030 §3.2.3) on a
label with ``auth = ["one-time"]`` enrolls exactly once, only for the device it names, only on its
profile; the core reads it in the one gate read and spends it in the one commit
(docs/ARCHITECTURE.md, "The unit of work"), so two nodes on one PostgreSQL still issue once."""

from __future__ import annotations

import asyncio
import base64
import dataclasses

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca.api import AuthMethod
from ca.records import StoredRequester
from ca.errors import ConfigError
from ca.issuer import Issuer
from enroll import est_mount
from enroll.app import build_issuer
from enroll.config import Config
from est.errors import EstError
from est.service import Credentials, EstService, TlsInfo
from tests.est.test_est_service import P, settings
from tests.support import make_csr, missing_peer

TLS = TlsInfo(version="TLSv1.3", remote="127.0.0.1")


def _body(cn: str, serial_number: str | None) -> bytes:
    extra = [x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number)] if serial_number else []
    csr, _ = make_csr(cn, extra_attrs=extra)
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


async def _issued(issuer: Issuer) -> int:
    return await issuer.ledger.count_certificates("issued")


async def _enroll(est: EstService, user: str, password: str, *, cn: str = "dev-1",
                  serial_number: str | None = "SN-0001", label: str = "factory") -> int:
    try:
        resp = await est.simpleenroll(label, _body(cn, serial_number), TLS, Credentials(user, password))
    except EstError as err:
        return err.status
    return resp.status


@pytest.fixture
def est(config: Config, issuer: Issuer) -> EstService:
    return EstService(est_mount.settings(config), issuer)


async def test_one_time_credential_enrolls_exactly_once(est: EstService, issuer: Issuer) -> None:
    [(cred, secret)] = await issuer.create_credentials("factory", ["SN-0001"], by="test")
    assert await _enroll(est, cred.id, secret) == 200
    before = await _issued(issuer)
    assert await _enroll(est, cred.id, secret, cn="dev-1b") == 401  # spent: RFC 7030 §3.2.3 challenge again
    assert await _issued(issuer) == before
    [row] = await issuer.list_credentials("factory")
    assert row.uses_left == 0 and row.last_used_at is not None
    assert await issuer.list_credentials("factory", unused=True) == []
    issued = await issuer.ledger.list_certificates(profile="factory")
    assert issued[0].requester == StoredRequester(AuthMethod.ONE_TIME_CREDENTIAL, cred.id, None)


async def test_one_time_credential_only_for_its_device(est: EstService, issuer: Issuer) -> None:
    [(cred, secret)] = await issuer.create_credentials("factory", ["SN-0001"], by="test")
    before = await _issued(issuer)
    assert await _enroll(est, cred.id, secret, serial_number="SN-0002") == 403
    assert await _enroll(est, cred.id, secret, serial_number=None) in (400, 403)  # factory requires serialNumber
    assert await _issued(issuer) == before
    [row] = await issuer.list_credentials("factory")
    assert row.uses_left == 1  # a refused request spends nothing
    assert await _enroll(est, cred.id, secret) == 200


async def test_one_time_credential_bound_by_cn(est: EstService, issuer: Issuer) -> None:
    [(cred, secret)] = await issuer.create_credentials("factory", ["dev-7"], bind="CN", by="test")
    before = await _issued(issuer)
    assert await _enroll(est, cred.id, secret, cn="dev-8") == 403
    assert await _issued(issuer) == before
    assert await _enroll(est, cred.id, secret, cn="dev-7") == 200


async def test_one_time_credential_only_on_its_profile(est: EstService, issuer: Issuer, embedded: object) -> None:
    [(sensor_cred, secret)] = await issuer.create_credentials("sensor", ["SN-0001"], by="test")
    [(factory_cred, factory_secret)] = await issuer.create_credentials("factory", ["SN-0001"], by="test")
    before = await _issued(issuer)
    assert await _enroll(est, sensor_cred.id, secret) == 401  # another profile's credential
    # ... and a factory credential is no password for a "basic" label.
    assert await _enroll(est, factory_cred.id, factory_secret, label="sensor") == 401
    assert await _enroll(est, factory_cred.id, "wrong" + factory_secret) == 401
    assert await _issued(issuer) == before


async def test_revoked_and_expired_credentials_authenticate_nothing(est: EstService, issuer: Issuer) -> None:
    [(revoked, s1)] = await issuer.create_credentials("factory", ["SN-0001"], by="test")
    [(expired, s2)] = await issuer.create_credentials("factory", ["SN-0002"], ttl_seconds=1, by="test")
    await issuer.revoke_credential(revoked.id, by="test")
    await issuer.ledger.run_write(lambda conn: conn.exec_driver_sql(
        "UPDATE enroll_credentials SET expires_at = 0 WHERE id = '%s'" % expired.id))
    before = await _issued(issuer)
    assert await _enroll(est, revoked.id, s1) == 401
    assert await _enroll(est, expired.id, s2, serial_number="SN-0002") == 401
    assert await _issued(issuer) == before
    assert {a.event for a in await issuer.ledger.audit_records(50)} >= {"credential-new", "credential-revoke"}


async def test_one_time_credential_is_one_read_and_one_write(est: EstService, issuer: Issuer) -> None:
    [(warm, warm_secret)] = await issuer.create_credentials("factory", ["SN-0000"], by="test")
    assert await _enroll(est, warm.id, warm_secret, serial_number="SN-0000") == 200  # reserves serials
    [(cred, secret)] = await issuer.create_credentials("factory", ["SN-0001"], by="test")
    with issuer.ledger.counting() as counts:
        assert await _enroll(est, cred.id, secret) == 200
    assert counts == {"read": 1, "write": 1}


async def test_n_use_credential_allows_exactly_n(est: EstService, issuer: Issuer) -> None:
    [(cred, secret)] = await issuer.create_credentials("factory", ["SN-0001"], uses=3, by="test")
    before = await _issued(issuer)
    statuses = await asyncio.gather(*(_enroll(est, cred.id, secret, cn=f"d{i}") for i in range(6)))
    assert sorted(statuses) == [200, 200, 200, 401, 401, 401]
    assert await _issued(issuer) == before + 3


async def test_one_time_credential_enrolls_once_from_two_nodes_on_postgresql(
        config: Config, pg_cluster: object) -> None:
    """Two issuers (two nodes) on one PostgreSQL database race with the same credential: the
    commit's conditional UPDATE lets exactly one of them issue."""
    if pg_cluster is None:
        missing_peer("PostgreSQL (Debian postgresql)")
    url = str(pg_cluster.new_database())  # type: ignore[attr-defined]
    nodes = [build_issuer(dataclasses.replace(config, ledger_url=url)) for _ in range(2)]
    await nodes[0].ledger.migrate()
    try:
        services = [EstService(est_mount.settings(config), n) for n in nodes]
        for rounds in range(5):
            [(cred, secret)] = await nodes[0].create_credentials("factory", [f"SN-{rounds}"], by="test")
            before = await _issued(nodes[0])
            statuses = await asyncio.gather(*(
                _enroll(services[i % 2], cred.id, secret, cn=f"race-{i}", serial_number=f"SN-{rounds}")
                for i in range(4)))
            assert sorted(statuses) == [200, 401, 401, 401], statuses
            assert await _issued(nodes[1]) == before + 1
    finally:
        for n in nodes:
            await n.ledger.close()


def test_one_time_label_config() -> None:
    s = settings(P("f", {"labels": ["f"], "auth": ["one-time"]}))
    assert s.rules["f"].auth == (frozenset({AuthMethod.ONE_TIME_CREDENTIAL}),)
    with pytest.raises(ConfigError) as err:
        settings(P("f", {"labels": ["f"], "auth": ["basic+one-time"]}))
    assert err.value.key == "profiles.f.est.auth"


def test_a_one_time_label_offers_no_server_side_keys() -> None:
    """A one-time credential is spent by the enrollment of a key the device holds (RFC 7030 §4.2);
    /serverkeygen (§4.4) on such a label would refuse it every time, so the label has none, and
    asking for it is a config error naming the key."""
    assert settings(P("f", {"labels": ["f"], "auth": ["one-time"]})).rules["f"].serverkeygen is False
    assert settings(P("f", {"labels": ["f"], "auth": ["one-time", "basic"]})).rules["f"].serverkeygen is True
    with pytest.raises(ConfigError) as err:
        settings(P("f", {"labels": ["f"], "auth": ["one-time"], "serverkeygen": True}))
    assert err.value.key == "profiles.f.est.serverkeygen"


async def test_create_credentials_refuses_bad_input(issuer: Issuer) -> None:
    for kw in ({"bind": "O"}, {"uses": 0}, {"ttl_seconds": 0}):
        with pytest.raises(Exception):
            await issuer.create_credentials("factory", ["SN-1"], **kw)
    with pytest.raises(Exception):
        await issuer.create_credentials("factory", ["SN-1", "SN-1"])
    with pytest.raises(Exception):
        await issuer.create_credentials("factory", ["bad\nname"])
    assert await issuer.list_credentials() == []
