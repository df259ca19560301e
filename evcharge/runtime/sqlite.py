"""Opening a role's SQLite file: WAL, explicit transactions, one schema script."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite


async def open_database(path: Path, schema: str) -> aiosqlite.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we open every transaction ourselves (BEGIN IMMEDIATE),
    # so a state change and the messages it owes are always written together.
    db = await aiosqlite.connect(path, isolation_level=None)
    # WAL with synchronous=NORMAL keeps every committed transaction across a
    # process crash (SIGKILL) without an fsync per commit.
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA busy_timeout=5000")
    await db.executescript(schema)
    db.row_factory = aiosqlite.Row
    return db


@contextlib.asynccontextmanager
async def transaction(db: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    await db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")
