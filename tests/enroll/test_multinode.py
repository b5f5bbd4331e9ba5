"""Several `enroll serve` processes on different ports against ONE database behave
as one server (issue 7): serials unique under concurrent load, a one-time challenge consumed
once whichever node sees it, an EST re-POST and a SCEP CertPoll answered by a node other than
the one that took the request, and an approval made through a third node visible on all.

Real processes, real TLS on loopback, the private PostgreSQL cluster of ``pg_cluster`` (and,
for the single-host case, one SQLite file). The
invariants come from the database (constraints, transactions), never from a process lock:
nothing here shares memory between the nodes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca.ledger import Ledger, serial_hex
from enroll.pki import DevPKI
from enroll.setup import InitResult
from est.client import EnrollmentPending, EstClient, build_csr
from scep.asn1 import PkiStatus
from scep.client import ScepClient, self_signed_signer, simple_csr
from tests.harness import Node, start_nodes
from tests.support import missing_peer

NODES = 3


@dataclass
class Cluster:
    nodes: list[Node]
    init: InitResult
    ledger_url: str


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            dev_pki: DevPKI) -> Iterator[Cluster]:
    """Three nodes on one fresh database, started at once (they race to migrate): PostgreSQL
    (the scale-out deployment), and one SQLite file shared by processes on one host."""
    base = tmp_path_factory.mktemp(f"multinode-{request.param}")
    if request.param == "postgresql":
        pg = request.getfixturevalue("pg_cluster")
        if pg is None:
            missing_peer("PostgreSQL (Debian postgresql)")
        url = str(pg.new_database())
    else:
        url = f"sqlite:///{base / 'shared.db'}"
    with start_nodes(base, dev_pki, url, NODES) as (init, nodes):
        yield Cluster(nodes, init, url)
    # every certificate any node issued passes pkilint's RFC 5280 checks
    from tests.lint import pkix_errors

    async def issued() -> list[Any]:
        ledger = Ledger(url)
        try:
            return await ledger.list_certificates(limit=100_000)
        finally:
            await ledger.close()

    problems = [f"{r.serial:x}: {e}" for r in asyncio.run(issued()) if r.der for e in pkix_errors(r.der)]
    assert not problems, problems


def _subject(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


async def test_serials_unique_under_concurrent_load_across_nodes(cluster: Cluster) -> None:
    per_client, clients_per_node = 5, 4
    tag = os.urandom(3).hex()

    async def device(node: Node, k: int) -> list[x509.Certificate]:
        out = []
        async with EstClient(node.base_https, trust_anchor=node.certs / "root-ca.pem", label="gateway",
                             client_cert=node.certs / "example-client.pem",
                             client_key=node.certs / "example-client.key") as est:
            for j in range(per_client):
                key = ec.generate_private_key(ec.SECP256R1())
                out.append((await est.enroll(build_csr(key, _subject(f"mn-{tag}-{node.name}-{k}-{j}")))).certificate)
        return out

    results = await asyncio.gather(*(device(n, k) for n in cluster.nodes for k in range(clients_per_node)))
    certs = [c for batch in results for c in batch]
    total = NODES * clients_per_node * per_client
    serials = [c.serial_number for c in certs]
    assert len(serials) == total and len(set(serials)) == total
    ledger = Ledger(cluster.ledger_url)
    try:
        for cert in certs:  # every one recorded, as issued, with the very bytes the device got
            rows = await ledger.find_serial_any_issuer(cert.serial_number)
            assert [r.status for r in rows] == ["issued"], serial_hex(cert.serial_number)
            assert rows[0].der == cert.public_bytes(serialization.Encoding.DER)
    finally:
        await ledger.close()


async def test_one_time_challenge_is_consumed_once_across_nodes(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    challenge = c.cli("challenge", "new", "--profile", "mdm", "--ttl", "600").strip()
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(3)]

    async def attempt(node: Node, i: int) -> PkiStatus:
        csr = simple_csr(keys[i], f"otc-{i}", challenge=challenge)
        return (await ScepClient(node.scep_url("mdm")).enroll(csr, keys[i])).status

    first = await asyncio.gather(attempt(a, 0), attempt(b, 1))  # the same challenge at two nodes at once
    assert sorted(s.name for s in first) == ["FAILURE", "SUCCESS"], first
    assert await attempt(c, 2) is PkiStatus.FAILURE  # and never again on a third


async def test_pending_est_request_reposted_to_another_node_after_approval_on_a_third(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    cn = f"pending-est-{os.urandom(3).hex()}"
    key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(key, _subject(cn))

    def client(node: Node) -> EstClient:
        return EstClient(node.base_https, trust_anchor=node.certs / "root-ca.pem", label="manual",
                         username=cluster.init.est_user, password=cluster.init.est_password, max_polls=0)

    async with client(a) as est:
        with pytest.raises(EnrollmentPending):
            await est.enroll(csr)
    listing = c.cli("pending", "list")
    ids = [int(line.split()[0]) for line in listing.splitlines() if line.rstrip().endswith(f"CN={cn}")]
    assert len(ids) == 1, listing
    c.cli("pending", "approve", str(ids[0]))
    async with client(b) as est:  # the device comes back through another node
        cert = (await est.enroll(csr)).certificate
    assert cert.subject == _subject(cn)
    async with client(a) as est:  # and the first node gives the same certificate, not a second one
        again = (await est.enroll(csr)).certificate
    assert again.serial_number == cert.serial_number


async def test_scep_certpoll_answered_by_another_node(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    cn = f"pending-scep-{os.urandom(3).hex()}"
    key = rsa.generate_private_key(65537, 2048)
    csr = simple_csr(key, cn, challenge=cluster.init.scep_challenge)
    signer = self_signed_signer(key, csr.subject)
    first = await ScepClient(a.scep_url("manual")).enroll(csr, key, signer=signer)
    assert first.status is PkiStatus.PENDING
    still = await ScepClient(b.scep_url("manual")).poll(first.transaction_id, csr.subject, signer, key)
    assert still.status is PkiStatus.PENDING  # node b sees the same pending request
    listing = c.cli("pending", "list")
    ids = [int(line.split()[0]) for line in listing.splitlines() if line.rstrip().endswith(f"CN={cn}")]
    assert len(ids) == 1, listing
    c.cli("pending", "approve", str(ids[0]))
    deadline = time.monotonic() + 20
    while True:
        done = await ScepClient(b.scep_url("manual")).poll(first.transaction_id, csr.subject, signer, key)
        if done.status is not PkiStatus.PENDING or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert done.status is PkiStatus.SUCCESS, done
    assert done.certificates[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
