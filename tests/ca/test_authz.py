"""Hashed secrets: scrypt at rest, constant-time checks, successes remembered, failures never."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any

import pytest

from ca.authz import SCRYPT_THREADS, hash_secret, verify_secret, verify_secret_async
from ca.issuer import Issuer


def test_verify_secret_accepts_only_the_secret() -> None:
    stored = hash_secret("correct horse")
    assert verify_secret("correct horse", stored)
    assert verify_secret("correct horse", stored)  # remembered: same answer
    assert not verify_secret("correct hors", stored)
    assert not verify_secret("correct horse", hash_secret("other"))  # a success is bound to its hash
    assert not verify_secret("correct horse", "scrypt$not$a$hash")


def test_hashes_are_salted() -> None:
    assert hash_secret("x") != hash_secret("x")


async def test_verify_secret_async_runs_scrypt_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = hash_secret("async secret")
    real_scrypt = hashlib.scrypt
    threads: list[int] = []

    def recording_scrypt(*args: Any, **kwargs: Any) -> bytes:
        threads.append(threading.get_ident())
        return real_scrypt(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", recording_scrypt)
    checks = [asyncio.create_task(verify_secret_async(f"wrong {i}", stored)) for i in range(4)]
    await asyncio.sleep(0)  # every check has started and handed scrypt to the pool
    ticks = 0
    for _ in range(600_000):  # the loop keeps running other coroutines meanwhile
        if all(c.done() for c in checks):
            break
        ticks += 1
        await asyncio.sleep(0.0001)
    assert ticks > 0
    assert [c.result() for c in checks] == [False] * 4
    assert len(threads) == 4 and threading.get_ident() not in threads
    assert len(set(threads)) <= SCRYPT_THREADS  # bounded concurrency
    assert await verify_secret_async("async secret", stored)
    assert await verify_secret_async("async secret", stored)  # remembered: no second scrypt
    assert len(threads) == 5


async def test_issuer_checks_passwords_and_challenges_off_the_event_loop(
        issuer: Issuer, monkeypatch: pytest.MonkeyPatch) -> None:
    real_scrypt = hashlib.scrypt
    threads: list[int] = []

    def recording_scrypt(*args: Any, **kwargs: Any) -> bytes:
        threads.append(threading.get_ident())
        return real_scrypt(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", recording_scrypt)
    assert not await issuer.verify_password("nobody", "guess")  # the dummy hash is checked too
    user = next(iter(issuer.users))
    assert not await issuer.verify_password(user, "wrong")
    assert not await issuer.check_static_challenge("router", "wrong")
    assert len(threads) == 3 and threading.get_ident() not in threads
