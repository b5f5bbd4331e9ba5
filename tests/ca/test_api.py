"""ca/api.py: the vocabulary the ledger stores. ``AuthMethod`` and ``Channel`` values are written
into every certificate, pending request and audit row (docs/ARCHITECTURE.md, "Storage"); a
renamed value would turn stored rows into unknown ones, so the spellings are fixed here."""

from __future__ import annotations

from cryptography import x509

from ca.api import REASONS, AuthMethod, BindIdentity, Channel, Requester


def test_stored_auth_method_spellings_never_change() -> None:
    assert {m.value for m in AuthMethod} == {
        "none", "tls-client-cert", "basic", "challenge", "one-time-challenge", "one-time-credential",
        "webhook", "renewal-signer", "operator"}


def test_stored_channel_spellings_never_change() -> None:
    assert {c.value for c in Channel} == {"est", "scep", "admin", "offline", "import"}


def test_bind_identity_spellings_are_the_config_values() -> None:
    assert {b.value for b in BindIdentity} == {"none", "serialNumber", "subject"}


def test_revocation_reasons_are_rfc_5280_reason_codes() -> None:
    """RFC 5280 §5.3.1: every name an operator may give maps to a CRLReason; none is removeFromCRL
    (a hold is released, never listed with that reason)."""
    assert set(REASONS.values()) <= set(x509.ReasonFlags)
    assert x509.ReasonFlags.remove_from_crl not in REASONS.values()
    assert REASONS["certificate_hold"] is x509.ReasonFlags.certificate_hold
    assert REASONS["key_compromise"] is x509.ReasonFlags.key_compromise


def test_a_requester_binds_nothing_unless_told() -> None:
    r = Requester(AuthMethod.BASIC, "estuser")
    assert r.binding is BindIdentity.NONE and r.certificate is None and r.remote is None
