"""The engine's durable record: its sessions as its meter measured them, its operator stop flag,
and the outbox of events.

An event is written here before it is published; that is what lets a supply go
on while Kafka is down and lets a restarted engine close the session it was
running when it crashed. Nothing here is ever overwritten with another party's
figures: the meter is the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from evcharge.cp.engine_state import CpEvent
from evcharge.protocol.messages import MeterReading, SessionEnded, SessionRefused, SessionStarted, encode
from evcharge.protocol.topics import route
from evcharge.runtime.outbox import OUTBOX_SCHEMA, SqliteOutbox
from evcharge.runtime.sqlite import Database

MIGRATIONS = [
    OUTBOX_SCHEMA
    + """
CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    driver_id TEXT NOT NULL,
    price INTEGER NOT NULL,
    started_at REAL NOT NULL,
    seq INTEGER NOT NULL,
    power_w INTEGER NOT NULL,
    wh INTEGER NOT NULL,
    micro_eur INTEGER NOT NULL,
    ended INTEGER NOT NULL DEFAULT 0,
    end_reason TEXT
)
"""
]


@dataclass(frozen=True)
class OpenSession:
    """The session that was running when the engine last stopped, as far as it recorded."""

    session_id: str
    driver_id: str
    price: int
    seq: int
    wh: int
    micro_eur: int


class EngineStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.outbox = SqliteOutbox(db)

    @classmethod
    async def open(cls, path: Path) -> EngineStore:
        return cls(await Database.open(path, MIGRATIONS))

    @property
    def database(self) -> Database:
        return self._db

    async def close(self) -> None:
        await self._db.close()

    async def stopped(self) -> bool:
        row = await self._db.fetchone("SELECT value FROM settings WHERE name = 'stopped'")
        return bool(row and row[0] == "1")

    async def known_sessions(self) -> set[str]:
        return {r[0] for r in await self._db.fetchall("SELECT session_id FROM sessions")}

    async def open_session(self) -> OpenSession | None:
        row = await self._db.fetchone(
            "SELECT session_id, driver_id, price, seq, wh, micro_eur FROM sessions WHERE ended = 0"
        )
        return OpenSession(*row) if row else None

    async def dead_letter(self, topic: str, key: str, payload: bytes) -> None:
        async with self._db.transaction() as db:
            await SqliteOutbox.add(db, [(topic, key, payload)])

    async def record(self, events: list[CpEvent], *, stopped: bool | None = None) -> None:
        """Apply `events` to the session table and queue them for Kafka, in one transaction."""
        async with self._db.transaction() as db:
            if stopped is not None:
                await db.execute(
                    "INSERT INTO settings VALUES ('stopped', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    ("1" if stopped else "0",),
                )
            for event in events:
                await _apply(db, event)
            await SqliteOutbox.add(db, [(*route(e), encode(e)) for e in events])


async def _apply(db: aiosqlite.Connection, event: CpEvent) -> None:
    if isinstance(event, SessionStarted):
        await db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?, ?, 0, 0, 0, 0, 0, NULL)",
            (event.session_id, event.driver_id, event.price, event.started_at),
        )
    elif isinstance(event, MeterReading):
        await db.execute(
            "UPDATE sessions SET seq = ?, power_w = ?, wh = ?, micro_eur = ? WHERE session_id = ?",
            (event.seq, event.power_w, event.wh, event.micro_eur, event.session_id),
        )
    elif isinstance(event, SessionEnded):
        await db.execute(
            "UPDATE sessions SET seq = ?, power_w = 0, wh = ?, micro_eur = ?, ended = 1, end_reason = ? "
            "WHERE session_id = ?",
            (event.seq, event.wh, event.micro_eur, event.reason.value, event.session_id),
        )
    elif isinstance(event, SessionRefused):
        await db.execute(
            "INSERT OR IGNORE INTO sessions VALUES (?, '', 0, ?, 0, 0, 0, 0, 1, 'refused')",
            (event.session_id, event.ts),
        )
