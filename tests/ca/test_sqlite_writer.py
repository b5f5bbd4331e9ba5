"""SQLite group commit (ca/sqlite_writer.py) on a real SQLite file: many units share one commit,
each caller is answered only once its unit is durable, and a unit that fails rolls back alone
(docs/ARCHITECTURE.md, "The unit of work")."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ca.sqlite_writer import MAX_GROUP, SqliteWriter


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "writer.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    return path


@pytest.fixture
def writer(db: Path) -> Iterator[SqliteWriter]:
    w = SqliteWriter(str(db))
    yield w
    w.close()


def _rows(db: Path) -> dict[str, int]:
    """The table as another connection (another process) sees it: committed rows only."""
    with sqlite3.connect(db, timeout=30) as conn:
        return dict(conn.execute("SELECT k, v FROM t").fetchall())


def _insert(key: str, value: int) -> Callable[[sa.Connection], int]:
    def unit(conn: sa.Connection) -> int:
        conn.execute(sa.text("INSERT INTO t (k, v) VALUES (:k, :v)"), {"k": key, "v": value})
        return value
    return unit


async def _hold_the_writer(writer: SqliteWriter) -> tuple[asyncio.Future[Any], threading.Event]:
    """Submit a unit that blocks the writer thread until released, and wait until it runs, so
    that every unit submitted meanwhile queues for the next group."""
    started, release = threading.Event(), threading.Event()

    def blocker(conn: sa.Connection) -> str:
        started.set()
        release.wait(30)
        conn.execute(sa.text("INSERT INTO t (k, v) VALUES ('blocker', 0)"))
        return "blocker"

    first = asyncio.ensure_future(writer.submit(blocker))
    assert await asyncio.to_thread(started.wait, 30)
    return first, release


async def test_concurrent_units_share_one_commit_and_are_durable_when_answered(writer: SqliteWriter,
                                                                              db: Path) -> None:
    first, release = await _hold_the_writer(writer)
    n = MAX_GROUP
    pending = [asyncio.ensure_future(writer.submit(_insert(f"k{i}", i))) for i in range(n)]
    await asyncio.sleep(0)  # every submit has queued its unit
    commits = writer.commits
    release.set()
    assert await first == "blocker"
    assert await asyncio.gather(*pending) == list(range(n))
    assert writer.commits - commits == 2  # the blocker's group, then all n units in one commit
    rows = _rows(db)
    assert len(rows) == n + 1 and all(rows[f"k{i}"] == i for i in range(n))


async def test_a_failing_unit_fails_alone_and_leaves_nothing_behind(writer: SqliteWriter, db: Path) -> None:
    await writer.submit(_insert("taken", 1))
    first, release = await _hold_the_writer(writer)

    def half_then_fail(conn: sa.Connection) -> None:
        conn.execute(sa.text("INSERT INTO t (k, v) VALUES ('half', 2)"))
        conn.execute(sa.text("INSERT INTO t (k, v) VALUES ('taken', 3)"))  # primary key: fails

    before = asyncio.ensure_future(writer.submit(_insert("before", 4)))
    bad = asyncio.ensure_future(writer.submit(half_then_fail))
    after = asyncio.ensure_future(writer.submit(_insert("after", 5)))
    await asyncio.sleep(0)
    commits = writer.commits
    release.set()
    await first
    assert await before == 4 and await after == 5
    with pytest.raises(sa.exc.IntegrityError):
        await bad
    assert writer.commits - commits == 2  # the failing unit was in the same group as its neighbours
    assert _rows(db) == {"taken": 1, "blocker": 0, "before": 4, "after": 5}


async def test_a_unit_that_raises_hands_its_own_error_to_its_caller(writer: SqliteWriter, db: Path) -> None:
    class Refused(Exception):
        pass

    def refuse(conn: sa.Connection) -> None:
        conn.execute(sa.text("INSERT INTO t (k, v) VALUES ('refused', 1)"))
        raise Refused("no")

    with pytest.raises(Refused):
        await writer.submit(refuse)
    assert await writer.submit(_insert("next", 2)) == 2
    assert _rows(db) == {"next": 2}


async def test_close_finishes_queued_units(db: Path) -> None:
    writer = SqliteWriter(str(db))
    first, release = await _hold_the_writer(writer)
    queued = [asyncio.ensure_future(writer.submit(_insert(f"q{i}", i))) for i in range(5)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.to_thread(writer.close)
    await first
    assert await asyncio.gather(*queued) == list(range(5))
    assert len(_rows(db)) == 6


async def test_writers_of_two_processes_take_turns_on_the_writer_lock(writer: SqliteWriter, db: Path) -> None:
    """``enroll serve --workers N`` runs one writer per process: a group commit holds
    ``<database>-writer.lock``, and another writer waits on it (not on SQLite's busy handler)."""
    import fcntl
    import os

    other = SqliteWriter(str(db))  # another process's writer: its own open file description
    try:
        first, release = await _hold_the_writer(writer)  # inside a group commit: the lock is held
        lock_path = Path(f"{db}-writer.lock")
        assert lock_path.exists()
        probe = os.open(lock_path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waiting = asyncio.ensure_future(other.submit(_insert("from-the-other", 2)))
            done, _ = await asyncio.wait({waiting}, timeout=0.5)
            assert not done  # it cannot commit while the first group holds the lock
            release.set()
            assert await first == "blocker" and await waiting == 2
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # both released it
            fcntl.flock(probe, fcntl.LOCK_UN)
        finally:
            os.close(probe)
        assert _rows(db) == {"blocker": 0, "from-the-other": 2}
    finally:
        other.close()
