"""Authentication helpers: hashed passwords and challenges, and client-certificate chains.

Secrets are stored as scrypt hashes and compared in constant time. Client certificates are
checked here, per trust store, by an explicit chain build: the TLS handshake only proves the
peer holds the key of *some* certificate under the union of all anchors (docs/ARCHITECTURE.md, "Authentication").
"""

from __future__ import annotations

import asyncio
import base64
import functools
import datetime as dt
import hashlib
import hmac
import os
import secrets
import string
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cryptography import x509

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1

#: Dynamic challenges use only letters and digits (PrintableString-safe; Windows needs it).
CHALLENGE_ALPHABET = string.ascii_letters + string.digits


def hash_secret(secret: str) -> str:
    """``scrypt$N$r$p$salt$hash`` for a password or static challenge."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    salt_b64, digest_b64 = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt_b64}${digest_b64}"


def is_secret_hash(text: str) -> bool:
    """True when ``text`` has the form :func:`hash_secret` writes."""
    parts = text.split("$")
    return len(parts) == 6 and parts[0] == "scrypt" and all(p.isdigit() for p in parts[1:4])


#: Successful checks remembered per process, so a device's repeated enrollments do not pay
#: scrypt (40-70 ms of CPU) each time. Keyed by an HMAC under a per-process random key: the
#: cache holds nothing from which a secret could be recovered. Failures are never cached.
_VERIFIED: OrderedDict[bytes, None] = OrderedDict()
_VERIFIED_MAX = 10_000
_CACHE_KEY = secrets.token_bytes(32)


def verify_secret(secret: str, stored: str) -> bool:
    """Constant-time check of ``secret`` against a :func:`hash_secret` value (blocking: scrypt
    runs on the calling thread; from a coroutine use :func:`verify_secret_async`)."""
    mark = _mark(secret, stored)
    if _remembered(mark):
        return True
    if not _scrypt_matches(secret, stored):
        return False
    _remember(mark)
    return True


#: scrypt checks running at once per process: each holds 128*r*N bytes (16 MiB) and a core; more
#: wait their turn in the queue, so a flood of guesses costs bounded memory and CPU.
SCRYPT_THREADS = max(1, min(2, os.cpu_count() or 1))
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _executor() -> ThreadPoolExecutor:
    """The scrypt thread pool of this process (a new one after fork: threads do not survive it)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=SCRYPT_THREADS, thread_name_prefix="scrypt"))
    return _pool[1]


async def verify_secret_async(secret: str, stored: str) -> bool:
    """:func:`verify_secret` without blocking the event loop: a remembered success answers at
    once, otherwise scrypt runs on the bounded pool (hashlib.scrypt releases the GIL)."""
    mark = _mark(secret, stored)
    if _remembered(mark):
        return True
    ok = await asyncio.get_running_loop().run_in_executor(_executor(), _scrypt_matches, secret, stored)
    if ok:
        _remember(mark)
    return ok


def _mark(secret: str, stored: str) -> bytes:
    return hmac.new(_CACHE_KEY, secret.encode() + b"\0" + stored.encode(), hashlib.sha256).digest()


def _remembered(mark: bytes) -> bool:
    if mark not in _VERIFIED:
        return False
    try:
        _VERIFIED.move_to_end(mark)
    except KeyError:  # evicted by another thread (the admin API verifies in an executor)
        pass
    return True


def _remember(mark: bytes) -> None:
    _VERIFIED[mark] = None
    if len(_VERIFIED) > _VERIFIED_MAX:
        try:
            _VERIFIED.popitem(last=False)
        except KeyError:  # emptied by another thread meanwhile
            pass


def _scrypt_matches(secret: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        want = base64.b64decode(digest)
        got = hashlib.scrypt(secret.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def new_challenge(length: int = 24) -> str:
    """A one-time challenge from ``[A-Za-z0-9]`` (about 142 bits at the default length)."""
    return "".join(secrets.choice(CHALLENGE_ALPHABET) for _ in range(length))


def challenge_digest(challenge: str) -> str:
    """How one-time challenges are stored: SHA-256 (they carry enough entropy not to need scrypt)."""
    return hashlib.sha256(challenge.encode()).hexdigest()


def credential_digest(user: str, secret: str) -> str:
    """How one-time enrollment credentials are stored: SHA-256 of ``user:secret`` (both random
    from ``[A-Za-z0-9]``, high entropy, so no slow hash is needed)."""
    return hashlib.sha256(f"{user}:{secret}".encode()).hexdigest()


@dataclass(frozen=True)
class TrustStore:
    """A named set of trust anchors for client certificates (``[trust.NAME]``).

    ``revocation``: the CRL source of an external store (``[trust.NAME] crl``), consulted by
    :meth:`ca.issuer.Issuer.authenticate_certificate` (fail closed once configured).
    """

    name: str
    anchors: tuple[x509.Certificate, ...]
    revocation: Any = None  # ca.identity.RevocationSource; Any keeps authz free of that import

    def path(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate] = (),
        now: dt.datetime | None = None,
        max_depth: int = 6,
    ) -> list[x509.Certificate] | None:
        """The chain from ``leaf`` to one of the anchors (leaf first, anchor last), or None.

        RFC 5280 §6.1 in the small: names chain, signatures verify, validity holds, every issuer
        above the leaf is a CA (basicConstraints cA when present).
        """
        now = now or dt.datetime.now(dt.timezone.utc)
        pool = list(intermediates)
        cert = leaf
        path = [leaf]
        for _ in range(max_depth):
            if not _valid_at(cert, now):
                return None
            for anchor in self.anchors:
                if anchor.subject == cert.issuer and signed_by(cert, anchor) and _valid_at(anchor, now):
                    return path if anchor == cert else [*path, anchor]
            nxt = next((c for c in pool if c.subject == cert.issuer and _is_ca(c) and signed_by(cert, c)), None)
            if nxt is None:
                return None
            pool.remove(nxt)
            path.append(nxt)
            cert = nxt
        return None

    def verify(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate] = (),
        now: dt.datetime | None = None,
        max_depth: int = 6,
    ) -> bool:
        """True when ``leaf`` chains to one of the anchors (:meth:`path`)."""
        return self.path(leaf, intermediates, now, max_depth) is not None


def _valid_at(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` (RFC 5280 §6.1.3 (a)(1)); remembered per process
    (the same two certificates always give the same answer), so a device's certificate is
    verified once, not on every request."""
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:
        return False


def has_eku(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bool:
    """True when the certificate's EKU extension lists ``oid``."""
    try:
        return oid in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        return False
