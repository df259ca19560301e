"""The gateway store's two SQLite connections, each on a thread of its own: `GroupWriter` commits
the writes of many chargers together, `Reader` answers each query in one hop.

Every commit is an fsync (the store keeps money), and every statement sent through
an asyncio SQLite wrapper is a round trip to its thread; a thousand chargers
metering would pay both per message. `GroupWriter` takes the writes that are
waiting (plain functions of a `sqlite3.Connection`), runs them all in one call on
its thread, each in a savepoint of one transaction, and commits once: one fsync
and one thread hop serve them all, and a write that fails is rolled back alone.
The writer has its own connection (WAL: readers elsewhere see only what was
committed) and its own single thread; a caller that is cancelled only stops
waiting, and can never leave the connection inside a transaction.

A query is run, fetched and finished in one call on the reader's thread: queries
of many tasks interleaved statement by statement would keep one read snapshot
open between them, and the reader would stop seeing what the writer commits.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from evcharge.errors import StorageFull

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]

MAX_GROUP = 256


def _full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    )


class GroupWriter:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-store")
        self._conn: sqlite3.Connection | None = None
        self._waiting: list[tuple[Work, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` inside a transaction, committed (with others) before this returns."""
        if self._closing:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._waiting.append((work, future))
        self._wake.set()
        if self._task is None:
            self._task = loop.create_task(self._run(), name="store writer")
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            works = [work for work, _ in group]
            try:
                results = await loop.run_in_executor(self._thread, self._commit, works)
            except Exception as exc:  # the commit itself failed (a full disk): nothing of it was kept
                error = StorageFull(f"{self._path.name}: the disk is full") if _full(exc) else exc
                for _, future in group:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), (result, failure) in zip(group, results, strict=True):
                if future.done():
                    continue  # its caller was cancelled: the write stands, nobody waits for it
                if failure is not None:
                    future.set_exception(failure)
                else:
                    future.set_result(result)

    def _commit(self, works: list[Work]) -> list[tuple[Any, BaseException | None]]:
        """On the writer's thread: one transaction, a savepoint per write, one COMMIT."""
        if self._conn is None:
            self._conn = sqlite3.connect(self._path, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=5000")
        conn = self._conn
        results: list[tuple[Any, BaseException | None]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for work in works:
                conn.execute("SAVEPOINT one_write")
                try:
                    results.append((work(conn), None))
                except Exception as exc:
                    if _full(exc):
                        raise
                    conn.execute("ROLLBACK TO one_write")
                    results.append((None, exc))
                conn.execute("RELEASE one_write")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    async def close(self) -> None:
        """Idempotent: finish what waits, stop the writer, close its connection and thread."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
        self._thread.shutdown(wait=True)


class Reader:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-store-read")
        self._conn: sqlite3.Connection | None = None

    async def all(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        loop = asyncio.get_running_loop()
        rows: list[sqlite3.Row] = await loop.run_in_executor(self._thread, self._query, sql, parameters)
        return rows

    async def one(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self.all(sql, parameters)
        return rows[0] if rows else None

    def _query(self, sql: str, parameters: Sequence[Any]) -> list[sqlite3.Row]:
        if self._conn is None:
            self._conn = sqlite3.connect(self._path, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA busy_timeout=5000")
        cursor = self._conn.execute(sql, parameters)
        try:
            return cursor.fetchall()
        finally:
            cursor.close()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
        self._thread.shutdown(wait=True)
