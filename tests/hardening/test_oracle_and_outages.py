"""No decryption oracle, and safe degradation when the ledger is gone.

SCEP (README, Security model: no oracle): an envelope for another recipient, one whose CBC padding is
wrong, one whose encryptedKey is corrupt and one whose signature is broken all get the same
CertRep: same HTTP status, same failInfo and text, same length and the same attributes; only
the nonces and the signature differ.

Ledger outages: a full disk (SQLite max_page_count) or an unreachable PostgreSQL make
EST answer 503 with Retry-After and SCEP a FAILURE, the CA key signs nothing, and enrollments
work again once the fault clears.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from asn1crypto import cms as acms
from cryptography.hazmat.primitives import serialization

from enroll.config import Config
from enroll.setup import InitResult
from ca.errors import CAError
from est.errors import EstError, from_ca_error
from scep import cms
from scep.asn1 import FailInfo, PkiStatus
from scep.message import CertRep
from tests.hardening.scepmsg import pkcsreq
from tests.harness import ServiceHarness
from tests.support import build_pki, cached_rsa_key, free_port, make_csr


def _tampered_envelope(edit: Callable[[acms.EnvelopedData], None]) -> Callable[..., bytes]:
    original = cms.encrypt_enveloped

    def build(*args: Any, **kw: Any) -> bytes:
        info = acms.ContentInfo.load(original(*args, **kw))
        edit(info["content"])
        return info.dump(force=True)

    return build


def _corrupt_key(env: acms.EnvelopedData) -> None:
    ri = env["recipient_infos"][0].chosen
    key = bytearray(ri["encrypted_key"].native)
    key[len(key) // 2] ^= 0xFF
    ri["encrypted_key"] = bytes(key)


def _shape(body: bytes) -> tuple[Any, ...]:
    rep = CertRep.parse(body)
    info = acms.ContentInfo.load(body)
    si = info["content"]["signer_infos"][0]
    attrs = tuple(a["type"].dotted for a in si["signed_attrs"])
    return len(body), rep.status, rep.fail_info, rep.fail_info_text, attrs


def test_decrypt_and_verify_failures_have_one_shape(harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = harness.scep.profile("router")
    ra = harness.scep.ra(profile).cert
    key = cached_rsa_key(90)
    challenge = harness.init.scep_challenge
    variants: dict[str, bytes] = {}
    variants["wrong-recipient"] = pkcsreq(build_pki().other_cert, key, "oracle", challenge, txid="ORACLE-TXID-0001")
    for name, edit in (("corrupt-encrypted-key", _corrupt_key), ("bad-padding", _bad_padding_real)):
        with monkeypatch.context() as m:
            m.setattr(cms, "encrypt_enveloped", _tampered_envelope(edit))
            variants[name] = pkcsreq(ra, key, "oracle", challenge, txid="ORACLE-TXID-0001")
    signed = bytearray(pkcsreq(ra, key, "oracle", challenge, txid="ORACLE-TXID-0001"))
    signed[-3] ^= 0x40
    variants["broken-signature"] = bytes(signed)
    shapes = {}
    for name, der in variants.items():
        body = harness.run(harness.scep.pki_operation(profile, der, "127.0.0.1")).body
        shapes[name] = _shape(body)
    first = next(iter(shapes.values()))
    assert first[1] is PkiStatus.FAILURE and first[2] is FailInfo.BAD_MESSAGE_CHECK
    assert all(s == first for s in shapes.values()), shapes
    assert harness.rows() == {}


def _bad_padding_real(env: acms.EnvelopedData) -> None:
    eci = env["encrypted_content_info"]
    data = bytearray(eci["encrypted_content"].native)
    block = 16 if "aes" in eci["content_encryption_algorithm"]["algorithm"].native else 8
    # Garble the final block: its decryption is then random, and the chance that random bytes
    # end in valid PKCS#7 padding is below 1/200; XOR 0x80 into every byte so the result is
    # deterministic for this message and, as the assertion shows, fails the padding check.
    for i in range(1, block + 1):
        data[-i] ^= 0x80
    eci["encrypted_content"] = bytes(data)


# --- ledger outages --------------------------------------------------------------------------


class Signatures:
    """Counts CA signatures by wrapping the local backend's sign()."""

    def __init__(self, h: ServiceHarness) -> None:
        self.count = 0
        backend = h.issuer.cas["issuing"].backend
        original = backend.sign

        async def sign(*args: Any, **kw: Any) -> Any:
            self.count += 1
            return await original(*args, **kw)

        backend.sign = sign  # type: ignore[method-assign]


def _est(h: ServiceHarness, cn: str) -> EstError | int:
    csr, _ = make_csr(cn)
    body = base64.b64encode(csr.public_bytes(serialization.Encoding.DER))
    try:
        return h.run(h.est.simpleenroll("", body, h.tls, h.creds)).status
    except EstError as err:
        return err
    except CAError as err:  # what est/http.py renders for a core error
        return from_ca_error(err)


def _scep_status(h: ServiceHarness, cn: str, key_index: int) -> tuple[PkiStatus, FailInfo | None]:
    profile = h.scep.profile("router")
    der = pkcsreq(h.scep.ra(profile).cert, cached_rsa_key(key_index), cn, h.init.scep_challenge)
    rep = CertRep.parse(h.run(h.scep.pki_operation(profile, der, "127.0.0.1")).body)
    return rep.status, rep.fail_info


def _fill_to_the_limit(h: ServiceHarness) -> None:
    """Cap the SQLite file at its current size (PRAGMA max_page_count on every new connection),
    then use up the free space left in its last pages."""
    ledger = h.issuer.ledger
    h.run(ledger.reconnect())

    def cap(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA page_count")
        pages = cur.fetchone()[0]
        cur.execute(f"PRAGMA max_page_count = {pages}")
        cur.close()

    for engine in ledger.sync_engines:  # the readers' and the group-commit writer's connections
        sa.event.listen(engine, "connect", cap)
    h._cap = cap  # type: ignore[attr-defined]
    import sqlite3
    import time

    path = h.config.ledger_url[len("sqlite:///"):]
    db = sqlite3.connect(path, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    fillers = {  # every table an enrollment writes: fill the free space of its pages
        "certificates": "INSERT INTO certificates (issuer, serial, status, profile, channel, requester, auth_method,"
                        " csr_sha256, spki_sha256, created_at) VALUES ('filler', ?, 'filler', 'x', 'x', 'x', 'x',"
                        " 'x', 'x', 0)",
        "audit": "INSERT INTO audit (at, event, ok, reason) VALUES (0, 'filler', 0, ?)",
        "devices": "INSERT INTO devices (device, profile, subject, sans, first_seen) VALUES (?, 'x', 'x', '[]', 0)",
        "nonces": "INSERT INTO nonces (scope, nonce, seen_at) VALUES ('filler', ?, 0)",
        "auth_failures": "INSERT INTO auth_failures (scope, key, at) VALUES ('filler', ?, 0)",
    }
    for table, sql in fillers.items():
        for i in range(100_000):
            try:
                db.execute(sql, (f"{table}-{i}-{time.time()}",))
                db.commit()
            except sqlite3.OperationalError as exc:
                assert "full" in str(exc), exc
                db.rollback()
                break
        else:
            raise AssertionError(f"{table}: the disk never filled")
    db.close()


def _lift_the_limit(h: ServiceHarness) -> None:
    ledger = h.issuer.ledger
    for engine in ledger.sync_engines:
        sa.event.remove(engine, "connect", h._cap)  # type: ignore[attr-defined]
    h.run(ledger.reconnect())


def test_disk_full_mid_request_then_recovery(harness: ServiceHarness) -> None:
    assert _est(harness, "before-full") == 200
    sigs = Signatures(harness)
    _fill_to_the_limit(harness)
    err = _est(harness, "while-full")
    assert isinstance(err, EstError) and err.status == 503
    assert int(err.headers["Retry-After"]) > 0
    assert "disk" not in err.detail.lower() and "sqlite" not in err.detail.lower()
    assert _scep_status(harness, "scep-while-full", 91)[0] is PkiStatus.FAILURE
    # Serials are reserved in blocks (committed before any of them signs), so the key may sign
    # with one while the disk is full; that certificate's commit fails and it never leaves.
    during = sigs.count
    _lift_the_limit(harness)
    assert _est(harness, "after-full") == 200
    assert _scep_status(harness, "scep-after-full", 92)[0] is PkiStatus.SUCCESS
    assert sigs.count == during + 2
    rows = harness.rows()
    assert rows.get("issued") == 3, rows
    assert rows.get("reserved", 0) == during, rows  # signed but never stored: the sweep abandons them


@pytest.fixture
def unreachable(config: Config, embedded: InitResult) -> Iterator[ServiceHarness]:
    """The application over a PostgreSQL URL where nothing listens (a database that is down)."""
    down = dataclasses.replace(config, ledger_url=f"postgresql://enroll:x@127.0.0.1:{free_port()}/enroll")

    h = ServiceHarness(down, embedded, migrate=False)  # nothing to migrate: nothing listens
    try:
        yield h
    finally:
        h.close()


def test_database_unreachable_is_503_and_failure_with_nothing_signed(unreachable: ServiceHarness) -> None:
    sigs = Signatures(unreachable)
    err = _est(unreachable, "db-down")
    assert isinstance(err, EstError) and err.status == 503 and int(err.headers["Retry-After"]) > 0
    status, _ = _scep_status(unreachable, "scep-db-down", 93)
    assert status is PkiStatus.FAILURE
    assert sigs.count == 0
