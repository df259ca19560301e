"""Central's durable state in SQLite: the CP registry, sessions, request outcomes and the outbox.

Every change is written with `commit()`: the records that changed and the
messages they owe go into one transaction, so deciding and sending cannot
come apart in a crash.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import msgspec

from evcharge.central.ledger import Session, SessionState
from evcharge.messages import EndReason, encode
from evcharge.runtime.outbox import OUTBOX_SCHEMA, SqliteOutbox
from evcharge.runtime.sqlite import Database

SCHEMA = (
    OUTBOX_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS cps (
    cp_id TEXT PRIMARY KEY,
    location TEXT NOT NULL,
    price_eur_kwh REAL NOT NULL,
    max_kw REAL NOT NULL,
    stopped INTEGER NOT NULL DEFAULT 0,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cp_credentials (
    cp_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    cp_id TEXT NOT NULL,
    driver_id TEXT NOT NULL,
    price_eur_kwh REAL NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    started_at REAL,
    ended_at REAL,
    last_seq INTEGER NOT NULL,
    kw REAL NOT NULL,
    kwh REAL NOT NULL,
    eur REAL NOT NULL,
    end_reason TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_driver ON sessions(driver_id, created_at);
CREATE INDEX IF NOT EXISTS sessions_by_cp ON sessions(cp_id, created_at);
CREATE INDEX IF NOT EXISTS sessions_active ON sessions(state) WHERE state != 'ended';
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    driver_id TEXT NOT NULL,
    cp_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    session_id TEXT,
    code TEXT,
    reason TEXT,
    at REAL NOT NULL
);
"""
)


@dataclass
class CpRecord:
    cp_id: str
    location: str
    price_eur_kwh: float
    max_kw: float
    stopped: bool
    registered_at: float


@dataclass(frozen=True)
class RequestOutcome:
    request_id: str
    driver_id: str
    cp_id: str
    outcome: str  # "accepted" or "denied"
    session_id: str | None = None
    code: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: str
    message: msgspec.Struct


class CentralStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.outbox = SqliteOutbox(db)

    @classmethod
    async def open(cls, path: Path) -> CentralStore:
        return cls(await Database.open(path, SCHEMA))

    async def close(self) -> None:
        await self._db.close()

    async def load_cps(self) -> list[CpRecord]:
        async with self._db.execute("SELECT * FROM cps ORDER BY cp_id") as cursor:
            return [
                CpRecord(
                    cp_id=r["cp_id"],
                    location=r["location"],
                    price_eur_kwh=r["price_eur_kwh"],
                    max_kw=r["max_kw"],
                    stopped=bool(r["stopped"]),
                    registered_at=r["registered_at"],
                )
                for r in await cursor.fetchall()
            ]

    async def secret_hash(self, cp_id: str) -> str | None:
        async with self._db.execute(
            "SELECT secret_hash FROM cp_credentials WHERE cp_id = ?", (cp_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    async def save_secret_hash(self, cp_id: str, secret_hash: str) -> None:
        async with self._db.transaction() as db:
            await db.execute("INSERT OR REPLACE INTO cp_credentials VALUES (?, ?)", (cp_id, secret_hash))

    async def load_active_sessions(self) -> list[Session]:
        return await self._sessions("WHERE state != 'ended' ORDER BY created_at", ())

    async def session(self, session_id: str) -> Session | None:
        found = await self._sessions("WHERE session_id = ?", (session_id,))
        return found[0] if found else None

    async def sessions(
        self, *, driver_id: str | None = None, cp_id: str | None = None, limit: int = 100
    ) -> list[Session]:
        where, args = [], []
        if driver_id:
            where.append("driver_id = ?")
            args.append(driver_id)
        if cp_id:
            where.append("cp_id = ?")
            args.append(cp_id)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return await self._sessions(f"{clause} ORDER BY created_at DESC LIMIT ?", (*args, limit))

    async def request_outcome(self, request_id: str) -> RequestOutcome | None:
        async with self._db.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return RequestOutcome(
            request_id=row["request_id"],
            driver_id=row["driver_id"],
            cp_id=row["cp_id"],
            outcome=row["outcome"],
            session_id=row["session_id"],
            code=row["code"],
            reason=row["reason"],
        )

    async def commit(
        self,
        *,
        cps: Iterable[CpRecord] = (),
        forget_cps: Iterable[str] = (),
        sessions: Iterable[Session] = (),
        requests: Iterable[RequestOutcome] = (),
        messages: Iterable[Outgoing] = (),
    ) -> None:
        async with self._db.transaction() as db:
            await db.executemany(
                "INSERT OR REPLACE INTO cps VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        c.cp_id,
                        c.location,
                        c.price_eur_kwh,
                        c.max_kw,
                        int(c.stopped),
                        c.registered_at,
                    )
                    for c in cps
                ],
            )
            await db.executemany("DELETE FROM cps WHERE cp_id = ?", [(c,) for c in forget_cps])
            # A forgotten CP id may join again, as a new CP, with the join token.
            await db.executemany("DELETE FROM cp_credentials WHERE cp_id = ?", [(c,) for c in forget_cps])
            await db.executemany(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_session_row(s) for s in sessions],
            )
            await db.executemany(
                "INSERT OR IGNORE INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.request_id,
                        r.driver_id,
                        r.cp_id,
                        r.outcome,
                        r.session_id,
                        r.code,
                        r.reason,
                        time.time(),
                    )
                    for r in requests
                ],
            )
            await SqliteOutbox.add(db, [(m.topic, m.key, encode(m.message)) for m in messages])

    async def dead_letter(self, row: tuple[str, str, bytes]) -> None:
        async with self._db.transaction() as db:
            await SqliteOutbox.add(db, [row])

    async def _sessions(self, clause: str, args: tuple) -> list[Session]:
        async with self._db.execute(f"SELECT * FROM sessions {clause}", args) as cursor:
            return [_session_from_row(r) for r in await cursor.fetchall()]


def _session_row(s: Session) -> tuple:
    return (
        s.session_id,
        s.request_id,
        s.cp_id,
        s.driver_id,
        s.price_eur_kwh,
        s.created_at,
        s.state.value,
        s.started_at,
        s.ended_at,
        s.last_seq,
        s.kw,
        s.kwh,
        s.eur,
        s.end_reason.value if s.end_reason else None,
    )


def _session_from_row(r: aiosqlite.Row) -> Session:
    return Session(
        session_id=r["session_id"],
        request_id=r["request_id"],
        cp_id=r["cp_id"],
        driver_id=r["driver_id"],
        price_eur_kwh=r["price_eur_kwh"],
        created_at=r["created_at"],
        state=SessionState(r["state"]),
        started_at=r["started_at"],
        ended_at=r["ended_at"],
        last_seq=r["last_seq"],
        kw=r["kw"],
        kwh=r["kwh"],
        eur=r["eur"],
        end_reason=EndReason(r["end_reason"]) if r["end_reason"] else None,
    )
