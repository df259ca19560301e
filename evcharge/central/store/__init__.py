"""What central needs from a durable store, and the two stores that provide it.

`CentralStore` is the repository: load the registry and the sessions in
progress, answer the queries, and `commit(change)` one decision as one unit of
work (records and the messages they owe together), plus the outbox the relay
drains. SQLite is the embedded default (one central); PostgreSQL is the shared
store several centrals use. Both pass one contract suite (tests/test_store_contract.py).

    open_store("sqlite:///var/lib/evcharge/central.sqlite")   # or a plain path
    open_store("postgresql://evcharge@db.example/evcharge")
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from evcharge.central.leadership import Lease
from evcharge.central.ledger import Session, SessionState
from evcharge.central.state import Change, CpRecord, Outcome, RequestOutcome
from evcharge.errors import ConfigError
from evcharge.protocol.messages import EndReason
from evcharge.runtime.outbox import OutboxStore


@dataclass(frozen=True)
class SessionQuery:
    driver_id: str | None = None
    cp_id: str | None = None
    since: float | None = None  # created at or after (Unix seconds)
    until: float | None = None  # created before
    limit: int = 100


class Row(Protocol):
    """A database row read by column name (sqlite3.Row, asyncpg.Record)."""

    def __getitem__(self, key: str) -> Any: ...


class CentralStore(Protocol):
    @property
    def outbox(self) -> OutboxStore: ...
    @property
    def url(self) -> str: ...  # where it lives, for messages (no password in it)

    async def load_cps(self) -> list[CpRecord]: ...
    async def load_active_sessions(self) -> list[Session]: ...
    async def secret_hash(self, cp_id: str) -> str | None: ...
    async def request_outcome(self, request_id: str) -> RequestOutcome | None: ...
    async def sessions_by_id(self, session_ids: Iterable[str]) -> dict[str, Session]: ...
    async def sessions(self, query: SessionQuery) -> list[Session]: ...
    async def commit(self, change: Change) -> None: ...
    async def dead_letter(self, topic: str, key: str, payload: bytes) -> None: ...
    async def identity(self) -> str: ...  # this store's own id, the same for every central on it
    def leadership_lease(self) -> Lease | None: ...  # None: a store only one central may use
    async def close(self) -> None: ...


async def open_store(url: str | Path) -> CentralStore:
    """The store a URL names: `sqlite:///path`, a bare path (SQLite), or `postgresql://...`."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        from evcharge.central.store.postgres import PostgresStore

        return await PostgresStore.open(text)
    if text.startswith("sqlite://"):
        text = text.removeprefix("sqlite://")
        if not text.startswith("/"):
            raise ConfigError(f"--store {url}: write sqlite:///absolute/path or a plain path")
    elif "://" in text:
        raise ConfigError(f"--store {url}: use sqlite:///path or postgresql://...")
    from evcharge.central.store.sqlite import SqliteStore

    return await SqliteStore.open(Path(text))


def migrations(dialect: str) -> list[str]:
    """The numbered schema scripts of `dialect`, in order: script i takes version i to i+1."""
    folder = importlib.resources.files("evcharge.central.store") / "migrations" / dialect
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(folder / name).read_text(encoding="utf-8") for name in names]


# Column order shared by both adapters' session table.
SESSION_COLUMNS = (
    "session_id",
    "request_id",
    "cp_id",
    "driver_id",
    "price",
    "created_at",
    "state",
    "started_at",
    "ended_at",
    "last_seq",
    "power_w",
    "wh",
    "micro_eur",
    "end_reason",
    "closed_by_central",
    "meter_final",
    "ticket_revision",
    "ticket_id",
    "billed_wh",
    "billed_micro_eur",
)


def session_row(s: Session) -> tuple[Any, ...]:
    return (
        s.session_id,
        s.request_id,
        s.cp_id,
        s.driver_id,
        s.price,
        s.created_at,
        s.state.value,
        s.started_at,
        s.ended_at,
        s.last_seq,
        s.power_w,
        s.wh,
        s.micro_eur,
        s.end_reason.value if s.end_reason else None,
        s.closed_by_central,
        s.meter_final,
        s.ticket_revision,
        s.ticket_id,
        s.billed_wh,
        s.billed_micro_eur,
    )


def session_from(r: Row) -> Session:
    return Session(
        session_id=r["session_id"],
        request_id=r["request_id"],
        cp_id=r["cp_id"],
        driver_id=r["driver_id"],
        price=int(r["price"]),
        created_at=float(r["created_at"]),
        state=SessionState(r["state"]),
        started_at=r["started_at"],
        ended_at=r["ended_at"],
        last_seq=int(r["last_seq"]),
        power_w=int(r["power_w"]),
        wh=int(r["wh"]),
        micro_eur=int(r["micro_eur"]),
        end_reason=EndReason(r["end_reason"]) if r["end_reason"] else None,
        closed_by_central=bool(r["closed_by_central"]),
        meter_final=bool(r["meter_final"]),
        ticket_revision=int(r["ticket_revision"]),
        ticket_id=r["ticket_id"],
        billed_wh=int(r["billed_wh"]),
        billed_micro_eur=int(r["billed_micro_eur"]),
    )


def cp_from(r: Row) -> CpRecord:
    return CpRecord(
        cp_id=r["cp_id"],
        location=r["location"],
        price=int(r["price"]),
        max_w=int(r["max_w"]),
        stopped=bool(r["stopped"]),
        registered_at=float(r["registered_at"]),
    )


def outcome_from(r: Row) -> RequestOutcome:
    return RequestOutcome(
        request_id=r["request_id"],
        driver_id=r["driver_id"],
        cp_id=r["cp_id"],
        outcome=Outcome(r["outcome"]),
        session_id=r["session_id"],
        code=r["code"],
        reason=r["reason"],
        decided_at=float(r["decided_at"]),
    )


def encoded_messages(change: Change) -> Sequence[tuple[str, str, bytes]]:
    """The outbox rows a change owes: (topic, key, payload), in the order decided."""
    from evcharge.protocol.messages import encode
    from evcharge.protocol.topics import route

    return [(*route(m), encode(m)) for m in change.messages]
