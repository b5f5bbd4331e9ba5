"""pkilint (RFC 5280 profile) over certificates the suite issued: no ERROR or FATAL finding."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pkilint import loader
from pkilint.pkix import certificate, extension, name
from pkilint.validation import ValidationFindingSeverity

_validator = certificate.create_pkix_certificate_validator_container(
    certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS),
    [
        certificate.create_issuer_validator_container([]),
        certificate.create_validity_validator_container(),
        certificate.create_subject_validator_container([]),
        certificate.create_extensions_validator_container([]),
        certificate.create_spki_validator_container([]),
    ],
)


def pkix_errors(der: bytes) -> list[str]:
    """ERROR and FATAL findings of pkilint's RFC 5280 certificate linter."""
    doc = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "issued")
    out = []
    for result in _validator.validate(doc.root):
        for f in result.finding_descriptions:
            if f.finding.severity <= ValidationFindingSeverity.ERROR:
                out.append(f"{result.node.path}: {f.finding.code} {f.message or ''}")
    return out


def lint_sqlite_ledger(db: Path) -> tuple[int, list[str]]:
    """Lint every issued certificate in a SQLite ledger; (count, problems)."""
    if not db.exists():
        return 0, []
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT serial, der FROM certificates WHERE status = 'issued'").fetchall()
    except sqlite3.OperationalError:
        return 0, []
    finally:
        con.close()
    problems = [f"serial {s}: {e}" for s, der in rows for e in pkix_errors(der)]
    return len(rows), problems
