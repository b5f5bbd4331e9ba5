"""Hashed secrets: scrypt at rest, constant-time checks, successes remembered, failures never."""

from __future__ import annotations

from ca.authz import hash_secret, verify_secret


def test_verify_secret_accepts_only_the_secret() -> None:
    stored = hash_secret("correct horse")
    assert verify_secret("correct horse", stored)
    assert verify_secret("correct horse", stored)  # remembered: same answer
    assert not verify_secret("correct hors", stored)
    assert not verify_secret("correct horse", hash_secret("other"))  # a success is bound to its hash
    assert not verify_secret("correct horse", "scrypt$not$a$hash")


def test_hashes_are_salted() -> None:
    assert hash_secret("x") != hash_secret("x")
