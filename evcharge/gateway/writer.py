"""Group commit for the gateway's store: the writes of many chargers share one SQLite transaction.

Every commit is an fsync (the store keeps money); a thousand chargers metering would
each wait for one of their own. `GroupWriter` runs the writes that are waiting
together, each in a savepoint of one transaction, so one fsync serves them all and
a write that fails is rolled back alone. The writer is one task owned here: a
caller that is cancelled only stops waiting, and can never leave the shared
connection inside a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiosqlite

from evcharge.runtime.sqlite import Database

log = logging.getLogger("evcharge.gateway")

T = TypeVar("T")
Work = Callable[[aiosqlite.Connection], Awaitable[Any]]

MAX_GROUP = 256


class GroupWriter:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._waiting: list[tuple[Work, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def write(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `work` inside a transaction, committed (with others) before this returns."""
        if self._closing:
            raise RuntimeError("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((work, future))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="store writer")
        return await future

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            await self._commit(group)

    async def _commit(self, group: list[tuple[Work, asyncio.Future[Any]]]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            async with self._db.transaction() as conn:
                for work, future in group:
                    await conn.execute("SAVEPOINT one_write")
                    try:
                        result = await work(conn)
                    except Exception as exc:
                        await conn.execute("ROLLBACK TO one_write")
                        results.append((future, None, exc))
                    else:
                        results.append((future, result, None))
                    await conn.execute("RELEASE one_write")
        except Exception as exc:  # the commit itself failed (a full disk): nothing of it was kept
            for _work, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, result, error in results:
            if future.done():
                continue  # its caller was cancelled: the write stands, nobody waits for it
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Idempotent: finish what waits, then stop the writer."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
            self._task = None
