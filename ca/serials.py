"""Serial numbers reserved in blocks, per process and CA (issuance contract step 5).

A block of fresh random serials is reserved in one committed ledger transaction before any of
them signs; each issuance takes one. A serial taken for a request that is then refused before
signing goes back to the pool; a serial whose certificate was signed is never handed out again,
whatever happens to the request. Reservations older than ``max_age`` seconds are not used (the
start-up and periodic sweep turns stale reservations into ``abandoned``; a crash leaves the rest
of a block to that sweep).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, Protocol

from ca.errors import LedgerError


class Reserved(NamedTuple):
    """One reserved serial: its ledger row, the serial, when it was reserved."""

    row_id: int
    serial: int
    at: float


class BlockSource(Protocol):
    """The ledger call that reserves a block (:meth:`ca.ledger.Ledger.reserve_block`)."""

    async def reserve_block(self, issuer: str, count: int) -> list[tuple[int, int]]: ...


class SerialPool:
    """Reserved serials of one process, handed out one per issuance."""

    def __init__(self, source: BlockSource, *, block: int = 16, max_age: float = 120.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.block = block
        self.max_age = max_age
        self._clock = clock
        self._free: dict[str, deque[tuple[int, int, float]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def take(self, issuer: str) -> Reserved:
        """A reserved serial of ``issuer``, reserving a new block when needed."""
        free = self._free.setdefault(issuer, deque())
        for _ in range(3):  # bounded: a fresh block is used at once, whatever max_age says
            while free:
                row_id, serial, at = free.popleft()
                if self._clock() - at < self.max_age:
                    return Reserved(row_id, serial, at)
            async with self._locks.setdefault(issuer, asyncio.Lock()):
                if free:
                    continue  # another task reserved a block meanwhile
                now = self._clock()
                block = await self.source.reserve_block(issuer, self.block)
                if block:
                    (row_id, serial), rest = block[0], block[1:]
                    free.extend((r, s, now) for r, s in rest)
                    return Reserved(row_id, serial, now)
        raise LedgerError("could not reserve a serial number")

    def give_back(self, issuer: str, reserved: Reserved) -> None:
        """Return a serial that signed nothing (the request was refused before signing)."""
        self._free.setdefault(issuer, deque()).appendleft((reserved.row_id, reserved.serial, reserved.at))

    def drain(self) -> list[int]:
        """Every reserved row this process still holds, emptied from the pool (graceful stop)."""
        rows = [row for free in self._free.values() for row, _, _ in free]
        self._free.clear()
        return rows

    def held(self, issuer: str) -> int:
        """How many reserved serials this process holds for ``issuer``."""
        return len(self._free.get(issuer, ()))


def parse_serial(text: str) -> int:
    """A serial number as an operator types it (CLI argument, admin API path): hex as the ledger
    spells it (``serial_hex``), optionally ``0x``-prefixed or colon-separated like openssl's
    ``01:A3``; ValueError when it is not hex."""
    t = text.strip().lower().replace(":", "")
    return int(t[2:] if t.startswith("0x") else t, 16)
