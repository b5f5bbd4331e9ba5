"""The ledger's schema and its versioned migrations (applied in order, each once; migration 1
creates the tables from the current metadata, the later ones bring an older database up to it).
Invariants live in constraints: ``UNIQUE(issuer, serial)`` (RFC 5280 §4.1.2.2 serials, never reused).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import sqlalchemy as sa

from ca.api import AuthMethod

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("issuer", sa.String(200), nullable=False),
    sa.Column("serial", sa.String(48), nullable=False),  # lower-case hex, no leading zeros
    sa.Column("status", sa.String(16), nullable=False),  # ca.records.RowStatus
    sa.Column("profile", sa.String(200), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    # The requester (ca.records.StoredRequester): principal, method, evidence (migration 6).
    sa.Column("requester", sa.Text, nullable=False),
    sa.Column("auth_method", sa.String(40), nullable=False),
    sa.Column("requester_evidence", sa.String(64)),
    sa.Column("csr_sha256", sa.String(64), nullable=False),
    sa.Column("spki_sha256", sa.String(64), nullable=False),
    sa.Column("transaction_id", sa.String(200)),
    sa.Column("renews_serial", sa.String(48)),
    sa.Column("subject", sa.Text),
    sa.Column("not_before", sa.Float),
    sa.Column("not_after", sa.Float),
    sa.Column("der", sa.LargeBinary),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("issued_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
    sa.Column("revocation_reason", sa.String(40)),
    sa.Column("retired_at", sa.Float),
    sa.Column("device", sa.String(64)),  # migration 2: ca.names.device_key of the certificate
    sa.UniqueConstraint("issuer", "serial", name="uq_certificates_issuer_serial"),
    sa.Index("ix_certificates_txn", "profile", "transaction_id"),
    sa.Index("ix_certificates_spki", "spki_sha256"),
)

#: Migration 2: the identity behind certificates (profile + subject + SAN set) and its state.
devices = sa.Table(
    "devices",
    metadata,
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("profile", sa.String(200), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("sans", sa.Text, nullable=False),  # JSON list of "dns:..." strings
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("retired_at", sa.Float),
    sa.Column("retired_by", sa.Text),
    sa.Column("retire_reason", sa.Text),
    sa.Index("ix_devices_profile", "profile"),
)

pending = sa.Table(
    "pending_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("profile", sa.String(200), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("requester", sa.Text, nullable=False),
    sa.Column("auth_method", sa.String(40)),  # migration 6; NULL: an older row's unknown method
    sa.Column("requester_evidence", sa.String(64)),
    sa.Column("renews_serial", sa.String(48)),  # migration 7: the certificate a held renewal renews
    sa.Column("csr_der", sa.LargeBinary, nullable=False),
    sa.Column("csr_sha256", sa.String(64), nullable=False),
    sa.Column("spki_sha256", sa.String(64), nullable=False),
    sa.Column("transaction_id", sa.String(200)),
    sa.Column("subject", sa.Text),
    sa.Column("status", sa.String(16), nullable=False),  # ca.records.PendingStatus
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("decided_at", sa.Float),
    sa.Column("decided_by", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("serial", sa.String(48)),
    sa.Column("issuer", sa.String(200)),
    sa.Index("ix_pending_csr", "profile", "csr_sha256"),
    sa.Index("ix_pending_txn", "profile", "transaction_id"),
)

challenges = sa.Table(
    "challenges",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("profile", sa.String(200), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),  # sha256 of the challenge
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("consumed_at", sa.Float),
)

#: A replayed senderNonce is refused for this long (RFC 8894 §3.2.1.5); older nonces are pruned.
NONCE_RETENTION_SECONDS = 7 * 86400
NONCE_PRUNE_INTERVAL_SECONDS = 3600.0

nonces = sa.Table(
    "nonces",
    metadata,
    sa.Column("scope", sa.String(40), nullable=False),
    sa.Column("nonce", sa.String(128), nullable=False),
    sa.Column("seen_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("scope", "nonce", name="pk_nonces"),
)

crl_state = sa.Table(
    "crl_state",
    metadata,
    sa.Column("issuer", sa.String(200), primary_key=True),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("this_update", sa.Float),
    sa.Column("next_update", sa.Float),
    sa.Column("der", sa.LargeBinary),
)

audit_log = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("event", sa.String(60), nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("channel", sa.String(16)),
    sa.Column("profile", sa.String(200)),
    sa.Column("requester", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("csr_sha256", sa.String(64)),
    sa.Column("serial", sa.String(48)),
    sa.Column("detail", sa.Text),
)

#: Migration 3: failed authentication attempts, for the throttle in ca/ratelimit.py. In the
#: ledger (not in process memory) so that every node of a scale-out deployment sees them.
auth_failures = sa.Table(
    "auth_failures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scope", sa.String(16), nullable=False),  # "client" (address) | "identity"
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("ix_auth_failures_key", "scope", "key", "at"),
)

#: Migration 5: per-device enrollment credentials (``enroll credentials new``), stored by digest
#: only; ``uses_left`` falls by one in the commit of each issuance it authorizes.
credentials = sa.Table(
    "enroll_credentials",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # the public user name
    sa.Column("digest", sa.String(64), nullable=False, unique=True),  # sha256("user:secret")
    sa.Column("profile", sa.String(200), nullable=False),
    sa.Column("bind", sa.String(16), nullable=False),  # subject attribute: "serialNumber" | "CN"
    sa.Column("device", sa.String(200), nullable=False),  # the value the CSR's subject must carry
    sa.Column("uses", sa.Integer, nullable=False),
    sa.Column("uses_left", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.Text),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("last_used_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
    sa.Index("ix_enroll_credentials_profile", "profile"),
)

_MIGRATION_2_INDEXES = (
    sa.Index("ix_certificates_device", certificates.c.device),
    sa.Index("ix_certificates_not_after", certificates.c.status, certificates.c.not_after),
    sa.Index("ix_audit_serial", audit_log.c.serial),
    sa.Index("ix_audit_at", audit_log.c.at),
)


def _migration_1(conn: sa.Connection) -> None:
    for table in (certificates, pending, challenges, nonces, crl_state, audit_log):
        table.create(conn, checkfirst=True)


def _migration_2(conn: sa.Connection) -> None:
    """Devices: ``certificates.device``, the ``devices`` table, lookup indexes; backfill.

    Migration 1 creates tables from the current metadata, so on a fresh database the column
    already exists; on a version-1 database it is added here.
    """
    from ca.names import device_key_of_certificate, sans_of  # cryptography only, no I/O

    columns = {c["name"] for c in sa.inspect(conn).get_columns("certificates")}
    if "device" not in columns:
        conn.execute(sa.text("ALTER TABLE certificates ADD COLUMN device VARCHAR(64)"))
    devices.create(conn, checkfirst=True)
    for index in _MIGRATION_2_INDEXES:
        index.create(conn, checkfirst=True)
    rows = conn.execute(sa.select(certificates.c.id, certificates.c.profile, certificates.c.der,
                                  certificates.c.issued_at)
                        .where(certificates.c.status == "issued", certificates.c.device.is_(None))).fetchall()
    from cryptography import x509

    for r in rows:
        cert = x509.load_der_x509_certificate(bytes(r.der))
        key = device_key_of_certificate(r.profile, cert)
        conn.execute(certificates.update().where(certificates.c.id == r.id).values(device=key))
        if conn.execute(sa.select(devices.c.device).where(devices.c.device == key)).first() is None:
            conn.execute(devices.insert().values(device=key, profile=r.profile, subject=cert.subject.rfc4514_string(),
                                                 sans=json.dumps(sans_of(cert.extensions)),
                                                 first_seen=r.issued_at or time.time()))


def _migration_3(conn: sa.Connection) -> None:
    """The ``auth_failures`` table (failed challenges and passwords, per client and identity)."""
    auth_failures.create(conn, checkfirst=True)


_REVOKED = certificates.c.revoked_at.is_not(None)
_MIGRATION_4_INDEXES = (
    sa.Index("ix_certificates_serial", certificates.c.serial),  # admin lookups name no CA
    sa.Index("ix_certificates_subject", certificates.c.subject),
    sa.Index("ix_certificates_revoked", certificates.c.issuer, certificates.c.revoked_at,
             sqlite_where=_REVOKED, postgresql_where=_REVOKED),  # what a CRL lists
)


def _migration_4(conn: sa.Connection) -> None:
    """Indexes for lookups by serial alone, by subject, and for CRL generation."""
    for index in _MIGRATION_4_INDEXES:
        index.create(conn, checkfirst=True)


def _migration_5(conn: sa.Connection) -> None:
    """The ``enroll_credentials`` table (one-time EST credentials, by digest)."""
    credentials.create(conn, checkfirst=True)


def _add_columns(conn: sa.Connection, table: sa.Table, *names: str) -> None:
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for name in names:
        if name not in present:
            column = table.c[name]
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {name} "
                                 f"{column.type.compile(dialect=conn.dialect)}"))


def _migration_6(conn: sa.Connection) -> None:
    """The requester as columns: versions 1-5 wrote ``method:principal`` into ``requester``; it is
    split into ``auth_method`` and the principal, and ``requester_evidence`` is added (unknown
    for older rows). A pending row whose prefix names no method keeps a NULL method."""
    _add_columns(conn, certificates, "requester_evidence")
    _add_columns(conn, pending, "auth_method", "requester_evidence")
    for method in AuthMethod:
        prefix = f"{method.value}:"
        for table, unset in ((certificates, certificates.c.auth_method == method.value),
                             (pending, pending.c.auth_method.is_(None))):
            conn.execute(table.update().where(unset, table.c.requester.startswith(prefix, autoescape=True))
                         .values(requester=sa.func.substr(table.c.requester, len(prefix) + 1),
                                 auth_method=method.value))


def _migration_7(conn: sa.Connection) -> None:
    """``pending_requests.renews_serial``: a renewal held for approval stays linked to the
    certificate it renews when it is issued later (on a poll)."""
    _add_columns(conn, pending, "renews_serial")


#: Versioned schema migrations, applied in order, each once (``schema_version`` records them).
MIGRATIONS: list[tuple[int, Callable[[sa.Connection], None]]] = [
    (1, _migration_1), (2, _migration_2), (3, _migration_3), (4, _migration_4), (5, _migration_5),
    (6, _migration_6), (7, _migration_7)]


