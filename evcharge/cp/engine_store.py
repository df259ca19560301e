"""The engine's durable record: its sessions, its operator stop flag and the outbox of events.

An event is written here before it is published; that is what lets a supply
go on while Kafka is down and lets a restarted engine close the session it was
running when it crashed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from evcharge.messages import (
    CpEvent,
    MeterReading,
    SessionEnded,
    SessionRefused,
    SessionStarted,
    encode,
)
from evcharge.runtime.kafka import TOPICS
from evcharge.runtime.outbox import OUTBOX_SCHEMA, SqliteOutbox
from evcharge.runtime.sqlite import Database

SCHEMA = (
    OUTBOX_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    driver_id TEXT NOT NULL,
    price_eur_kwh REAL NOT NULL,
    started_at REAL NOT NULL,
    seq INTEGER NOT NULL,
    kw REAL NOT NULL,
    kwh REAL NOT NULL,
    eur REAL NOT NULL,
    ended INTEGER NOT NULL DEFAULT 0,
    end_reason TEXT
);
"""
)


@dataclass(frozen=True)
class OpenSession:
    """The session that was running when the engine last stopped, as far as it recorded."""

    session_id: str
    driver_id: str
    price_eur_kwh: float
    seq: int
    kwh: float
    eur: float


class EngineStore:
    def __init__(self, db: Database, cp_id: str) -> None:
        self._db = db
        self._cp_id = cp_id
        self.outbox = SqliteOutbox(db)

    @classmethod
    async def open(cls, path: Path, cp_id: str) -> EngineStore:
        return cls(await Database.open(path, SCHEMA), cp_id)

    async def close(self) -> None:
        await self._db.close()

    async def stopped(self) -> bool:
        async with self._db.execute("SELECT value FROM settings WHERE name = 'stopped'") as cursor:
            row = await cursor.fetchone()
        return bool(row and row[0] == "1")

    async def known_sessions(self) -> set[str]:
        async with self._db.execute("SELECT session_id FROM sessions") as cursor:
            return {r[0] for r in await cursor.fetchall()}

    async def open_session(self) -> OpenSession | None:
        async with self._db.execute(
            "SELECT session_id, driver_id, price_eur_kwh, seq, kwh, eur FROM sessions WHERE ended = 0"
        ) as cursor:
            row = await cursor.fetchone()
        return OpenSession(*row) if row else None

    async def dead_letter(self, row: tuple[str, str, bytes]) -> None:
        async with self._db.transaction() as db:
            await SqliteOutbox.add(db, [row])

    async def adopt_billed(self, session_id: str, kwh: float, eur: float) -> tuple[float, float] | None:
        """Set an ended session's figures to what central billed; return what was recorded."""
        async with self._db.transaction() as db:
            async with db.execute(
                "SELECT kwh, eur FROM sessions WHERE session_id = ? AND ended = 1", (session_id,)
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return None
            await db.execute(
                "UPDATE sessions SET kwh = ?, eur = ? WHERE session_id = ?", (kwh, eur, session_id)
            )
            return (row[0], row[1])

    async def record(self, events: list[CpEvent], *, stopped: bool | None = None) -> None:
        """Apply `events` to the session table and queue them for Kafka, in one transaction."""
        async with self._db.transaction() as db:
            if stopped is not None:
                await db.execute(
                    "INSERT OR REPLACE INTO settings VALUES ('stopped', ?)",
                    ("1" if stopped else "0",),
                )
            for event in events:
                await self._apply(db, event)
            await SqliteOutbox.add(db, [(TOPICS.cp_events, self._cp_id, encode(e)) for e in events])

    async def _apply(self, db: aiosqlite.Connection, event: CpEvent) -> None:
        if isinstance(event, SessionStarted):
            await db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, 0, 0, 0, 0, 0, NULL)",
                (event.session_id, event.driver_id, event.price_eur_kwh, event.started_at),
            )
        elif isinstance(event, MeterReading):
            await db.execute(
                "UPDATE sessions SET seq = ?, kw = ?, kwh = ?, eur = ? WHERE session_id = ?",
                (event.seq, event.kw, event.kwh, event.eur, event.session_id),
            )
        elif isinstance(event, SessionEnded):
            await db.execute(
                "UPDATE sessions SET seq = ?, kw = 0, kwh = ?, eur = ?, ended = 1, end_reason = ? "
                "WHERE session_id = ?",
                (event.seq, event.kwh, event.eur, event.reason.value, event.session_id),
            )
        elif isinstance(event, SessionRefused):
            await db.execute(
                "INSERT OR IGNORE INTO sessions VALUES (?, '', 0, ?, 0, 0, 0, 0, 1, 'refused')",
                (event.session_id, event.ts),
            )
