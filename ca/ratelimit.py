"""Throttling failed authentication (research/security.md §3 F1, F5), shared by EST and SCEP.

Failures are recorded in the ledger (``auth_failures``, migration 3), not in process memory, so
that a scale-out deployment throttles across every node and worker: a guesser cannot spread
attempts over nodes. Two keys per attempt: the client address (one source guessing many
identities) and the identity (many sources guessing one user or subject). While either key has
``limit`` failures inside ``window`` seconds, further attempts are refused *before* the secret is
checked, which also spares the scrypt CPU an attacker would otherwise make us spend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ca.errors import LedgerError
from ca.ledger import Ledger

#: Defaults: 10 failures per identity or 30 per client address within 15 minutes.
WINDOW_SECONDS = 900.0
IDENTITY_LIMIT = 10
CLIENT_LIMIT = 30


@dataclass(frozen=True)
class Throttle:
    """Counts failures per client address and per identity in the ledger."""

    ledger: Ledger
    window: float = WINDOW_SECONDS
    identity_limit: int = IDENTITY_LIMIT
    client_limit: int = CLIENT_LIMIT

    @staticmethod
    def _keys(client: str | None, identity: str | None, namespace: str) -> list[tuple[str, str]]:
        keys = []
        if client:
            keys.append(("client", client))
        if identity:
            keys.append(("identity", f"{namespace}:{identity}"))
        return keys

    async def blocked(self, client: str | None, identity: str | None, namespace: str) -> float:
        """Seconds to wait (the window) when a key is over its limit, else 0. A ledger error
        propagates (LedgerError): the request is refused as unavailable, never let through."""
        since = time.time() - self.window
        for scope, key in self._keys(client, identity, namespace):
            limit = self.client_limit if scope == "client" else self.identity_limit
            if await self.ledger.count_auth_failures(scope, key, since) >= limit:
                return self.window
        return 0.0

    async def failed(self, client: str | None, identity: str | None, namespace: str) -> None:
        """Record one failed attempt (never the secret that was tried)."""
        try:
            await self.ledger.record_auth_failure(self._keys(client, identity, namespace), time.time())
        except LedgerError:
            pass  # the refusal stands; a ledger outage is reported by the request itself
