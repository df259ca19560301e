"""Central's store in one SQLite file: the embedded default, for a single central.

A second central started on the same file is refused by an exclusive lock beside
it: SQLite cannot arbitrate two writers deciding for the same CPs.
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from evcharge.central.ledger import Session
from evcharge.central.state import Change, CpRecord, RequestOutcome
from evcharge.central.store import (
    SESSION_COLUMNS,
    SessionQuery,
    cp_from,
    encoded_messages,
    migrations,
    outcome_from,
    session_from,
    session_row,
)
from evcharge.errors import ConfigError
from evcharge.runtime.outbox import SqliteOutbox
from evcharge.runtime.sqlite import Database

_UPSERT_CP = (
    "INSERT INTO cps VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(cp_id) DO UPDATE SET "
    "location = excluded.location, price = excluded.price, max_w = excluded.max_w, "
    "stopped = excluded.stopped, registered_at = excluded.registered_at"
)
_UPSERT_SESSION = (
    f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)}) VALUES ({', '.join('?' * len(SESSION_COLUMNS))}) "
    "ON CONFLICT(session_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in SESSION_COLUMNS[1:])
)


class SqliteStore:
    def __init__(self, db: Database, lock: IO[str]) -> None:
        self._db = db
        self._lock = lock
        self.outbox = SqliteOutbox(db)
        self.url = f"sqlite://{db.path}"

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path, lock = await asyncio.to_thread(_claim_file, path)
        try:
            db = await Database.open(path, migrations("sqlite"))
        except BaseException:
            lock.close()
            raise
        return cls(db, lock)

    def claim(self, holder: str) -> None:
        """Write who holds the file, for the message a second central shows."""
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(holder + "\n")
        self._lock.flush()

    async def identity(self) -> str:
        row = await self._db.fetchone("SELECT store_id FROM store_identity")
        return str(row[0]) if row else ""

    def leadership_lease(self) -> None:
        """None: one central per file, kept alone by the file lock."""
        return None

    async def close(self) -> None:
        await self._db.close()
        self._lock.close()

    @property
    def database(self) -> Database:
        return self._db

    async def load_cps(self) -> list[CpRecord]:
        return [cp_from(r) for r in await self._db.fetchall("SELECT * FROM cps ORDER BY cp_id")]

    async def load_active_sessions(self) -> list[Session]:
        rows = await self._db.fetchall("SELECT * FROM sessions WHERE state != 'ended' ORDER BY created_at")
        return [session_from(r) for r in rows]

    async def secret_hash(self, cp_id: str) -> str | None:
        row = await self._db.fetchone("SELECT secret_hash FROM cp_credentials WHERE cp_id = ?", (cp_id,))
        return str(row[0]) if row else None

    async def request_outcome(self, request_id: str) -> RequestOutcome | None:
        row = await self._db.fetchone("SELECT * FROM requests WHERE request_id = ?", (request_id,))
        return outcome_from(row) if row else None

    async def sessions_by_id(self, session_ids: Iterable[str]) -> dict[str, Session]:
        ids = list(dict.fromkeys(session_ids))
        found: dict[str, Session] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._db.fetchall(
                f"SELECT * FROM sessions WHERE session_id IN ({', '.join('?' * len(chunk))})", chunk
            )
            found.update((r["session_id"], session_from(r)) for r in rows)
        return found

    async def sessions(self, query: SessionQuery) -> list[Session]:
        where, args = _where(query)
        rows = await self._db.fetchall(
            f"SELECT * FROM sessions {where} ORDER BY created_at DESC LIMIT ?", (*args, query.limit)
        )
        return [session_from(r) for r in rows]

    async def commit(self, change: Change) -> None:
        async with self._db.transaction(crash_at="central.commit") as db:
            await db.executemany(
                _UPSERT_CP,
                [
                    (c.cp_id, c.location, c.price, c.max_w, int(c.stopped), c.registered_at)
                    for c in change.cps.values()
                ],
            )
            await db.executemany("DELETE FROM cps WHERE cp_id = ?", [(c,) for c in change.forget])
            # A forgotten CP id may join again, as a new CP, with the join token.
            await db.executemany("DELETE FROM cp_credentials WHERE cp_id = ?", [(c,) for c in change.forget])
            await db.executemany(
                "INSERT INTO cp_credentials VALUES (?, ?) "
                "ON CONFLICT(cp_id) DO UPDATE SET secret_hash = excluded.secret_hash",
                list(change.secrets.items()),
            )
            await db.executemany(_UPSERT_SESSION, [_sqlite_row(s) for s in change.sessions.values()])
            await db.executemany(
                "INSERT OR IGNORE INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.request_id,
                        r.driver_id,
                        r.cp_id,
                        r.outcome.value,
                        r.session_id,
                        r.code,
                        r.reason,
                        r.decided_at,
                    )
                    for r in change.requests
                ],
            )
            await SqliteOutbox.add(db, encoded_messages(change))

    async def dead_letter(self, topic: str, key: str, payload: bytes) -> None:
        async with self._db.transaction() as db:
            await SqliteOutbox.add(db, [(topic, key, payload)])


def _claim_file(path: Path) -> tuple[Path, IO[str]]:
    """The store's absolute path and its lock, held: one central per file."""
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = (path.parent / f"{path.name}.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another central"
        lock.close()
        raise ConfigError(
            f"{path} is already used by {holder}: with the embedded SQLite store only one central "
            "may run; stop it, or share a PostgreSQL store (--store postgresql://...) to run a standby"
        ) from None
    return path, lock


def _sqlite_row(s: Session) -> tuple[object, ...]:
    row = list(session_row(s))
    row[14], row[15] = int(s.closed_by_central), int(s.meter_final)
    return tuple(row)


def _where(query: SessionQuery) -> tuple[str, list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    for column, op, value in (
        ("driver_id", "=", query.driver_id),
        ("cp_id", "=", query.cp_id),
        ("created_at", ">=", query.since),
        ("created_at", "<", query.until),
    ):
        if value is not None and value != "":
            clauses.append(f"{column} {op} ?")
            args.append(value)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args
