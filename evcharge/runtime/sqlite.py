"""A role's SQLite file: WAL, fsync on every commit, numbered migrations, and transactions that
never interleave.

`synchronous=FULL`: a committed transaction survives an OS crash or a power cut,
not only a process crash, because money and meter readings live here. A write
that fails because the disk is full raises `StorageFull` and leaves nothing of
that transaction behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from evcharge.errors import StorageFull
from evcharge.runtime.faults import crash_point


def _full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    )


class Database:
    """One aiosqlite connection shared by a role's tasks.

    Its transactions are serialised by a lock: two coroutines awaiting inside
    their own BEGIN...COMMIT on one connection would otherwise nest.
    """

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._writing = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[str]) -> Database:
        """Open (or create) the file and bring its schema up to the last of `migrations`.

        `migrations[i]` is the script that takes the schema from version i to i+1;
        the version reached is kept in `PRAGMA user_version`, in the same transaction.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we open every transaction ourselves (BEGIN IMMEDIATE),
        # so a state change and the messages it owes are always written together.
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA busy_timeout=5000")
            db = cls(conn, path)
            await db._migrate(migrations)
        except BaseException as exc:
            await conn.close()
            if _full(exc):
                raise StorageFull(f"cannot open {path}: the disk is full") from None
            raise
        conn.row_factory = aiosqlite.Row
        return db

    async def _migrate(self, migrations: Sequence[str]) -> None:
        async with self.conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        for number in range(version, len(migrations)):
            async with self.transaction() as conn:
                for statement in _statements(migrations[number]):
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {number + 1}")

    async def synchronous(self) -> int:
        """The fsync level in force (2 = FULL), for the tests that hold us to it."""
        row = await self.fetchone("PRAGMA synchronous")
        return int(row[0]) if row else -1

    async def fetchall(self, sql: str, parameters: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self.conn.execute(sql, parameters) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, parameters: Sequence[Any] = ()) -> aiosqlite.Row | None:
        async with self.conn.execute(sql, parameters) as cursor:
            return await cursor.fetchone()

    @contextlib.asynccontextmanager
    async def transaction(self, crash_at: str | None = None) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; a full disk rolls everything back and raises StorageFull.

        `crash_at` names a crash point reached after the writes, before COMMIT.
        """
        async with self._writing:
            try:
                await self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                    if crash_at:
                        crash_point(crash_at)
                    await self.conn.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back by itself already (SQLITE_FULL does).
                    with contextlib.suppress(sqlite3.Error):
                        await self.conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if _full(exc):
                    raise StorageFull(f"{self.path.name}: the disk is full") from None
                raise

    async def close(self) -> None:
        async with self._writing:
            await self.conn.close()


def _statements(script: str) -> list[str]:
    """A migration script cut into statements (our scripts hold no ';' inside a string)."""
    return [s.strip() for s in script.split(";") if s.strip()]
