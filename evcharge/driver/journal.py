"""The driver's own record: where it is in its requests file, and which answers it has shown.

It is what lets a restarted driver carry on with the line it was on and show
each answer once, although Kafka may hand it the same update again. An answer is
shown first and marked afterwards: a crash in between shows it once more at the
next start (at least once, never lost), and the mark is keyed by session and
revision so the count of tickets stays one per session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evcharge.runtime.sqlite import Database

MIGRATIONS = [
    """
CREATE TABLE progress (
    plan TEXT PRIMARY KEY,
    next_index INTEGER NOT NULL,
    pending_request_id TEXT,
    pending_cp TEXT
);
CREATE TABLE outcomes (
    request_id TEXT PRIMARY KEY,
    plan TEXT NOT NULL,
    idx INTEGER NOT NULL,
    cp_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    session_id TEXT,
    wh INTEGER,
    micro_eur INTEGER,
    detail TEXT,
    revision INTEGER NOT NULL DEFAULT 0,
    provisional INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outcomes_by_session ON outcomes(session_id);
CREATE TABLE shown (
    answer_key TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    cp_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    session_id TEXT,
    wh INTEGER,
    micro_eur INTEGER,
    detail TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    provisional INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX shown_by_request ON shown(request_id)
"""
]


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
    outcome: str  # the ticket's end reason, "denied", or "no answer"
    session_id: str | None
    wh: int | None
    micro_eur: int | None
    detail: str
    revision: int = 0  # of the ticket, 0 without one
    provisional: bool = False


_COLUMNS = "request_id, cp_id, outcome, session_id, wh, micro_eur, detail, revision, provisional"


class DriverJournal:
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> DriverJournal:
        return cls(await Database.open(path, MIGRATIONS))

    @property
    def database(self) -> Database:
        return self._db

    async def close(self) -> None:
        await self._db.close()

    async def progress(self, plan: str) -> Progress:
        row = await self._db.fetchone(
            "SELECT next_index, pending_request_id, pending_cp FROM progress WHERE plan = ?", (plan,)
        )
        return Progress(*row) if row else Progress(0, None, None)

    async def begin_request(self, plan: str, index: int, request_id: str, cp_id: str) -> None:
        """Written before the request is sent: a crash after this resends the same request id."""
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT INTO progress VALUES (?, ?, ?, ?) ON CONFLICT(plan) DO UPDATE SET "
                "next_index = excluded.next_index, pending_request_id = excluded.pending_request_id, "
                "pending_cp = excluded.pending_cp",
                (plan, index, request_id, cp_id),
            )

    async def finish_request(self, plan: str, outcome: Outcome) -> None:
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT OR REPLACE INTO outcomes "
                f"(request_id, plan, idx, {_COLUMNS.removeprefix('request_id, ')}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    outcome.request_id,
                    plan,
                    outcome.idx,
                    outcome.cp_id,
                    outcome.outcome,
                    outcome.session_id,
                    outcome.wh,
                    outcome.micro_eur,
                    outcome.detail,
                    outcome.revision,
                    int(outcome.provisional),
                ),
            )
            await db.execute(
                "INSERT INTO progress VALUES (?, ?, NULL, NULL) ON CONFLICT(plan) DO UPDATE SET "
                "next_index = excluded.next_index, pending_request_id = NULL, pending_cp = NULL",
                (plan, outcome.idx + 1),
            )

    async def outcomes(self, plan: str) -> list[Outcome]:
        rows = await self._db.fetchall(
            f"SELECT request_id, idx, {_COLUMNS.removeprefix('request_id, ')} "
            "FROM outcomes WHERE plan = ? ORDER BY idx",
            (plan,),
        )
        return [_outcome(r[0], r[1], *r[2:]) for r in rows]

    async def provisional(self, plan: str) -> list[Outcome]:
        return [o for o in await self.outcomes(plan) if o.provisional]

    async def was_shown(self, answer_key: str) -> bool:
        return await self._db.fetchone("SELECT 1 FROM shown WHERE answer_key = ?", (answer_key,)) is not None

    async def mark_shown(self, answer_key: str, outcome: Outcome) -> None:
        """After an answer (a ticket or a denial) was shown: never show it again.

        A revised ticket also revises the outcome of the request it belongs to, so the
        summary shows what the meter said.
        """
        async with self._db.transaction() as db:
            await db.execute(
                f"INSERT OR IGNORE INTO shown (answer_key, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    answer_key,
                    outcome.request_id,
                    outcome.cp_id,
                    outcome.outcome,
                    outcome.session_id,
                    outcome.wh,
                    outcome.micro_eur,
                    outcome.detail,
                    outcome.revision,
                    int(outcome.provisional),
                ),
            )
            if outcome.session_id and outcome.revision > 1:
                await db.execute(
                    "UPDATE outcomes SET wh = ?, micro_eur = ?, revision = ?, provisional = ? "
                    "WHERE session_id = ? AND revision < ?",
                    (
                        outcome.wh,
                        outcome.micro_eur,
                        outcome.revision,
                        int(outcome.provisional),
                        outcome.session_id,
                        outcome.revision,
                    ),
                )

    async def answer_for(self, request_id: str, index: int) -> Outcome | None:
        """The final answer already shown for a request (the latest revision), if any."""
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM shown WHERE request_id = ? ORDER BY revision DESC LIMIT 1", (request_id,)
        )
        return _outcome(row[0], index, *row[1:]) if row else None


def _outcome(request_id: str, idx: int, *rest: object) -> Outcome:
    cp_id, outcome, session_id, wh, micro_eur, detail, revision, provisional = rest
    return Outcome(
        str(request_id),
        int(idx),
        str(cp_id),
        str(outcome),
        session_id if session_id is None else str(session_id),
        None if wh is None else int(wh),  # type: ignore[call-overload]
        None if micro_eur is None else int(micro_eur),  # type: ignore[call-overload]
        str(detail or ""),
        int(revision),  # type: ignore[call-overload]
        bool(provisional),
    )
