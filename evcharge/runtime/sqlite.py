"""A role's SQLite file: WAL, one schema script, and transactions that never interleave."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite


class Database:
    """One aiosqlite connection shared by a role's tasks.

    Its transactions are serialised by a lock: two coroutines awaiting inside
    their own BEGIN...COMMIT on one connection would otherwise nest.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self._writing = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, schema: str) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we open every transaction ourselves (BEGIN IMMEDIATE),
        # so a state change and the messages it owes are always written together.
        conn = await aiosqlite.connect(path, isolation_level=None)
        # WAL with synchronous=NORMAL keeps every committed transaction across a
        # process crash (SIGKILL) without an fsync per commit.
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA busy_timeout=5000")
        await conn.executescript(schema)
        conn.row_factory = aiosqlite.Row
        return cls(conn)

    def execute(self, sql: str, parameters: tuple = ()):
        return self.conn.execute(sql, parameters)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._writing:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")

    async def close(self) -> None:
        async with self._writing:
            await self.conn.close()
