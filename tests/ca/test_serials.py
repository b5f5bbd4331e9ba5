"""Serial blocks (ca/serials.py) over a real SQLite ledger: a block is committed before any of its
serials is handed out, every serial is handed out once, a serial that signed nothing goes back to
the pool, stale reservations are never used (docs/ARCHITECTURE.md, issuance contract step 5;
RFC 5280 §4.1.2.2). Single-pool uniqueness and give-back order: tests/ca/test_unit_of_work.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ca.errors import LedgerError
from ca.ledger import Ledger
from ca.serials import SerialPool
from enroll.config import Config
from tests.support import ledger_rows


class Counted:
    """The real ledger's ``reserve_block``, counting the blocks asked for."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.blocks = 0

    async def reserve_block(self, issuer: str, count: int) -> list[tuple[int, int]]:
        self.blocks += 1
        return await self.ledger.reserve_block(issuer, count)


@pytest.fixture
async def source(config: Config) -> AsyncIterator[Counted]:
    ledger = Ledger(config.ledger_url)
    await ledger.migrate()
    yield Counted(ledger)
    await ledger.close()


async def test_a_block_is_committed_before_its_first_serial_is_handed_out(source: Counted,
                                                                          config: Config) -> None:
    pool = SerialPool(source, block=16)
    first = await pool.take("issuing")
    # another connection (another process) already sees the whole block, reserved
    assert ledger_rows(config).get("reserved") == 16
    assert pool.held("issuing") == 15
    assert 2**64 <= first.serial < 2**159


async def test_concurrent_takes_use_each_block_to_the_end_before_reserving_another(source: Counted,
                                                                                   config: Config) -> None:
    pool = SerialPool(source, block=8)
    taken = await asyncio.gather(*(pool.take("issuing") for _ in range(50)))
    assert len({t.serial for t in taken}) == 50 and len({t.row_id for t in taken}) == 50
    assert source.blocks == 7  # ceil(50 / 8): no block reserved while another still had serials
    assert ledger_rows(config).get("reserved") == 56


async def test_two_processes_sharing_a_ledger_never_hand_out_the_same_serial(source: Counted) -> None:
    a, b = SerialPool(source, block=4), SerialPool(source, block=4)
    taken = await asyncio.gather(*(pool.take("issuing") for pool in (a, b) for _ in range(20)))
    assert len({t.serial for t in taken}) == 40


async def test_a_serial_given_back_is_reused_without_a_new_block(source: Counted) -> None:
    pool = SerialPool(source, block=2)
    first = await pool.take("issuing")
    second = await pool.take("issuing")
    pool.give_back("issuing", second)  # refused before signing
    assert await pool.take("issuing") == second
    assert source.blocks == 1 and first != second


async def test_stale_reservations_are_never_handed_out(source: Counted) -> None:
    """A reservation older than max_age may already be swept to ``abandoned``: skip it."""
    now = [1000.0]
    pool = SerialPool(source, block=4, max_age=120.0, clock=lambda: now[0])
    old = await pool.take("issuing")
    leftovers = pool.held("issuing")
    now[0] += 121.0
    fresh = await pool.take("issuing")
    assert source.blocks == 2 and leftovers == 3
    assert fresh.at == now[0] and fresh.serial != old.serial
    assert pool.held("issuing") == 3  # the stale three were dropped, three of the new block are left


async def test_drain_gives_every_held_row_to_the_graceful_stop(source: Counted) -> None:
    pool = SerialPool(source, block=5)
    await pool.take("issuing")
    rows = pool.drain()
    assert len(rows) == 4 and pool.held("issuing") == 0
    await pool.take("issuing")
    assert source.blocks == 2


async def test_a_source_that_reserves_nothing_fails_after_bounded_tries() -> None:
    class Empty:
        calls = 0

        async def reserve_block(self, issuer: str, count: int) -> list[tuple[int, int]]:
            Empty.calls += 1
            return []

    with pytest.raises(LedgerError, match="could not reserve"):
        await SerialPool(Empty()).take("issuing")
    assert Empty.calls == 3
