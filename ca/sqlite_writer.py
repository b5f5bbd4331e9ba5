"""SQLite off the event loop: group commit on one writer thread, and reads on a few reader threads.

docs/ARCHITECTURE.md, "The unit of work". SQLite serializes writers and, with
``synchronous=FULL``, pays one fsync per commit. A thread of its own owns one write connection;
units of work queue to it and run in one ``BEGIN IMMEDIATE`` transaction, each inside its own
savepoint (a unit that fails rolls back alone), and one ``COMMIT`` makes the whole group durable.
Every caller is answered only after that commit, so nothing is reported stored before it is.
The writers of several worker processes take turns on a lock file for each group commit.

A read transaction (the unit of work's gate) runs whole on a reader thread with a connection of
its own: one hand-off per transaction instead of one per statement. WAL readers never wait for
the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

#: Most units in one commit (a bound on latency for the first unit of a long group).
MAX_GROUP = 128
#: Reader threads (and their connections) per process.
READERS = 4


def _pragmas(dbapi_conn: Any) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy drives BEGIN (savepoints need it)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class SqliteReader:
    """Runs synchronous read functions, each in one deferred (read) transaction, on a small pool
    of threads with a connection each."""

    def __init__(self, path: str, threads: int = READERS) -> None:
        self.path = path
        self.engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False},
                                       pool_size=threads, max_overflow=0)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ledger-reader")
        sa.event.listen(self.engine, "connect", lambda dbapi_conn, _record: _pragmas(dbapi_conn))
        sa.event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))

    async def run(self, fn: Callable[[sa.Connection], Any]) -> Any:
        """``fn`` in one read transaction on a reader thread; its result."""
        def work() -> Any:
            with self.engine.connect() as conn, conn.begin():
                return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    def close(self) -> None:
        """Finish running reads, stop the threads and close the connections."""
        self._pool.shutdown(wait=True)
        self.engine.dispose()


@dataclass
class _Unit:
    fn: Callable[[sa.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = field(default=None)


class SqliteWriter:
    """Runs synchronous write functions in groups on one connection of its own."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.commits = 0  # group commits made (for tests and metrics)
        self._lock_fd: int | None = None
        self.engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False},
                                       poolclass=sa.pool.StaticPool)

        @sa.event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            _pragmas(dbapi_conn)

        @sa.event.listens_for(self.engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
                self._thread.start()

    async def submit(self, fn: Callable[[sa.Connection], Any]) -> Any:
        """Run ``fn`` in the next group commit; its result once the group is durable."""
        self._start()
        loop = asyncio.get_running_loop()
        unit = _Unit(fn, loop, loop.create_future())
        self._queue.put(unit)
        return await unit.future

    def close(self) -> None:
        """Finish queued units and stop the thread."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def _across_processes(self) -> Iterator[None]:
        """Hold an exclusive lock on ``<database>-writer.lock`` for one group commit: the writers of
        other worker processes (``enroll serve --workers N``) queue on it and wake as soon as it is
        released, where SQLite's own busy handler would have them sleep and retry in steps of up
        to 100 ms."""
        if self._lock_fd is None:
            self._lock_fd = os.open(f"{self.path}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                group.append(nxt)
            self._commit(group)

    def _commit(self, group: list[_Unit]) -> None:
        try:
            with self._across_processes(), self.engine.connect() as conn:
                with conn.begin():
                    for unit in group:
                        try:
                            with conn.begin_nested():
                                unit.result = unit.fn(conn)
                        except Exception as exc:  # noqa: BLE001 - handed to the caller
                            unit.error = exc
            self.commits += 1
        except Exception as exc:  # noqa: BLE001 - the commit itself failed: nothing is durable
            for unit in group:
                if unit.error is None:
                    unit.error = exc
        for unit in group:
            try:
                unit.loop.call_soon_threadsafe(_settle, unit)
            except RuntimeError:  # the caller's event loop is gone: nobody waits for the answer
                pass


def _settle(unit: _Unit) -> None:
    if unit.future.done():
        return
    if unit.error is not None:
        unit.future.set_exception(unit.error)
    else:
        unit.future.set_result(unit.result)
