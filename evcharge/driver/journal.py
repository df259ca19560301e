"""The driver's own record: where it is in its requests file, and which tickets it has shown.

It is what lets a restarted driver carry on with the line it was on and show
each ticket once, even though Kafka may hand it the same update again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evcharge.runtime.sqlite import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (
    plan TEXT PRIMARY KEY,
    next_index INTEGER NOT NULL,
    pending_request_id TEXT,
    pending_cp TEXT
);
CREATE TABLE IF NOT EXISTS outcomes (
    request_id TEXT PRIMARY KEY,
    plan TEXT NOT NULL,
    idx INTEGER NOT NULL,
    cp_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    session_id TEXT,
    kwh REAL,
    eur REAL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS answers (
    answer_key TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    cp_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    session_id TEXT,
    kwh REAL,
    eur REAL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_by_request ON answers(request_id);
"""


@dataclass(frozen=True)
class Progress:
    next_index: int
    pending_request_id: str | None
    pending_cp: str | None


@dataclass(frozen=True)
class Outcome:
    request_id: str
    idx: int
    cp_id: str
    outcome: str  # ticket's end reason, "denied", or "no answer"
    session_id: str | None
    kwh: float | None
    eur: float | None
    detail: str


class DriverJournal:
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> DriverJournal:
        return cls(await Database.open(path, SCHEMA))

    async def close(self) -> None:
        await self._db.close()

    async def progress(self, plan: str) -> Progress:
        async with self._db.execute(
            "SELECT next_index, pending_request_id, pending_cp FROM progress WHERE plan = ?",
            (plan,),
        ) as cursor:
            row = await cursor.fetchone()
        return Progress(*row) if row else Progress(0, None, None)

    async def begin_request(self, plan: str, index: int, request_id: str, cp_id: str) -> None:
        """Written before the request is sent: a crash after this resends the same request id."""
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT OR REPLACE INTO progress VALUES (?, ?, ?, ?)",
                (plan, index, request_id, cp_id),
            )

    async def finish_request(self, plan: str, outcome: Outcome) -> None:
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    outcome.request_id,
                    plan,
                    outcome.idx,
                    outcome.cp_id,
                    outcome.outcome,
                    outcome.session_id,
                    outcome.kwh,
                    outcome.eur,
                    outcome.detail,
                ),
            )
            await db.execute(
                "INSERT OR REPLACE INTO progress VALUES (?, ?, NULL, NULL)", (plan, outcome.idx + 1)
            )

    async def outcomes(self, plan: str) -> list[Outcome]:
        async with self._db.execute(
            "SELECT request_id, idx, cp_id, outcome, session_id, kwh, eur, detail FROM outcomes "
            "WHERE plan = ? ORDER BY idx",
            (plan,),
        ) as cursor:
            return [Outcome(*row) for row in await cursor.fetchall()]

    async def record_answer(self, answer_key: str, outcome: Outcome) -> bool:
        """Record a final answer (a ticket or a denial) that is about to be shown.

        False if it was recorded before: Kafka may hand the same update again
        after a restart, and a person must see it once. Written before it is
        shown and before the offset is committed, so a crash in between shows
        nothing twice and loses nothing.
        """
        async with self._db.transaction() as db:
            cursor = await db.execute(
                "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    answer_key,
                    outcome.request_id,
                    outcome.cp_id,
                    outcome.outcome,
                    outcome.session_id,
                    outcome.kwh,
                    outcome.eur,
                    outcome.detail,
                ),
            )
            return cursor.rowcount == 1

    async def answer_for(self, request_id: str, index: int) -> Outcome | None:
        async with self._db.execute(
            "SELECT request_id, cp_id, outcome, session_id, kwh, eur, detail FROM answers "
            "WHERE request_id = ?",
            (request_id,),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return Outcome(row[0], index, row[1], row[2], row[3], row[4], row[5], row[6])
