"""The gateway's durable record: each charger's credentials, its transactions, every transaction
message it applied, the starts central asked for, and the outbox of what goes to Kafka.

One SQLite file (WAL, fsync per group commit). A transaction message's effects, its
key and its answer are written in one transaction with the outbox rows it
derived, so a replay finds the answer it got the first time and the rows still
waiting for Kafka, never new figures. 1.6 transaction ids come from a counter
here, so they are unique and never reused, even after a restart.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from evcharge.gateway.auth import Credentials
from evcharge.gateway.transactions import Binding, Txn
from evcharge.gateway.writer import GroupWriter, Reader
from evcharge.protocol.messages import EndReason, encode
from evcharge.protocol.topics import Topic, route
from evcharge.runtime.outbox import OutboxRow, OutboxStats
from evcharge.runtime.sqlite import Database

T = TypeVar("T")

MIGRATIONS = [
    """
CREATE TABLE chargers (
    cp_id TEXT PRIMARY KEY,
    password_hash TEXT,
    pending_hash TEXT,
    monitor_secret TEXT NOT NULL,
    stopped INTEGER NOT NULL DEFAULT 0,
    vendor TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    booted_at REAL,
    joined_at REAL NOT NULL
);
CREATE TABLE transactions (
    cp_id TEXT NOT NULL,
    tx_id TEXT NOT NULL,
    session_id TEXT,
    driver_id TEXT NOT NULL,
    price INTEGER NOT NULL,
    meter_start_wh INTEGER,
    started_at REAL NOT NULL,
    last_seq INTEGER NOT NULL,
    last_wh INTEGER NOT NULL,
    ended INTEGER NOT NULL,
    stop_reason TEXT,
    PRIMARY KEY (cp_id, tx_id)
);
CREATE INDEX transactions_by_session ON transactions (session_id);
CREATE TABLE tx_ids (tx_id INTEGER PRIMARY KEY AUTOINCREMENT, cp_id TEXT NOT NULL);
CREATE TABLE messages (
    cp_id TEXT NOT NULL,
    message_key TEXT NOT NULL,
    answer TEXT NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (cp_id, message_key)
);
CREATE TABLE pending_starts (
    session_id TEXT PRIMARY KEY,
    cp_id TEXT NOT NULL,
    driver_id TEXT NOT NULL,
    price INTEGER NOT NULL,
    remote_start_id INTEGER,
    kind TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX pending_by_cp ON pending_starts (cp_id, driver_id);
CREATE TABLE remote_start_ids (remote_start_id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL);
CREATE TABLE outbox (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    origin TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
CREATE INDEX outbox_by_origin ON outbox (origin)
""",
    # The key central issued to the charger at registration: its events are signed with it.
    "ALTER TABLE chargers ADD COLUMN engine_key TEXT",
]


@dataclass(frozen=True)
class ChargerRecord:
    cp_id: str
    credentials: Credentials
    monitor_secret: str
    stopped: bool
    vendor: str
    model: str
    booted: bool


@dataclass(frozen=True)
class PendingStart:
    session_id: str
    cp_id: str
    driver_id: str
    price: int
    remote_start_id: int | None
    kind: str  # "remote": central's StartSupply sent as a remote start; "rfid": authorised at the charger

    @property
    def binding(self) -> Binding:
        return Binding(self.session_id, self.driver_id, self.price)


class GatewayStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = GroupWriter(path)
        self._read = Reader(path)
        # Each charger's signing key, read at every publish: kept in memory too.
        self._engine_keys: dict[str, str] = {}
        # When set, a charger's CP events stay in the outbox until its key is here.
        self.hold_unsigned = False

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a transaction (shared with other writes waiting: one fsync for all)."""
        return await self._writer.write(work)

    @classmethod
    async def open(cls, path: Path) -> GatewayStore:
        # The schema (and WAL mode) through the project's own migrations; then the store's
        # own connections, one for writes and one for reads, each on a thread of its own.
        migrated = await Database.open(path, MIGRATIONS)
        await migrated.close()
        # It holds each charger's secret for central: readable by the gateway's user alone.
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if file.exists():
                file.chmod(0o600)
        store = cls(path)
        rows = await store._read.all("SELECT cp_id, engine_key FROM chargers WHERE engine_key IS NOT NULL")
        store._engine_keys = {str(r[0]): str(r[1]) for r in rows}
        return store

    async def close(self) -> None:
        """Finish the writes in flight, then close."""
        await self._writer.close()
        await self._read.close()

    # ---------------------------------------------------------- chargers

    async def charger(self, cp_id: str) -> ChargerRecord | None:
        row = await self._read.one(
            "SELECT cp_id, password_hash, pending_hash, monitor_secret, stopped, vendor, model, booted_at "
            "FROM chargers WHERE cp_id = ?",
            (cp_id,),
        )
        if row is None:
            return None
        return ChargerRecord(
            row[0], Credentials(row[1], row[2]), row[3], bool(row[4]), row[5], row[6], row[7] is not None
        )

    async def join(self, cp_id: str) -> ChargerRecord:
        """The charger's record, created on first sight with the secret it shows central (kept first)."""
        known = await self.charger(cp_id)
        if known is not None:
            return known  # a reconnect costs no write

        def work(db: sqlite3.Connection) -> Any:
            db.execute(
                "INSERT OR IGNORE INTO chargers (cp_id, monitor_secret, joined_at) VALUES (?, ?, ?)",
                (cp_id, secrets.token_urlsafe(32), time.time()),
            )

        await self.write(work)
        record = await self.charger(cp_id)
        assert record is not None
        return record

    async def booted(self, cp_id: str, vendor: str, model: str) -> None:
        def work(db: sqlite3.Connection) -> Any:
            db.execute(
                "UPDATE chargers SET vendor = ?, model = ?, booted_at = ? WHERE cp_id = ?",
                (vendor, model, time.time(), cp_id),
            )

        await self.write(work)

    async def set_pending_password(self, cp_id: str, digest: str) -> None:
        def work(db: sqlite3.Connection) -> Any:
            db.execute("UPDATE chargers SET pending_hash = ? WHERE cp_id = ?", (digest, cp_id))

        await self.write(work)

    async def confirm_password(self, cp_id: str) -> None:
        """The pending password is the charger's: the join token no longer opens this id."""

        def work(db: sqlite3.Connection) -> Any:
            db.execute(
                "UPDATE chargers SET password_hash = pending_hash, pending_hash = NULL "
                "WHERE cp_id = ? AND pending_hash IS NOT NULL",
                (cp_id,),
            )

        await self.write(work)

    def engine_key(self, cp_id: str) -> str | None:
        return self._engine_keys.get(cp_id)

    async def keep_engine_key(self, cp_id: str, key: str) -> bool:
        """Keep the key central issued to `cp_id` (a new one after central forgot it); True when new."""
        if self._engine_keys.get(cp_id) == key:
            return False

        def work(db: sqlite3.Connection) -> Any:
            db.execute("UPDATE chargers SET engine_key = ? WHERE cp_id = ?", (key, cp_id))

        await self.write(work)
        self._engine_keys[cp_id] = key
        return True

    async def set_stopped(self, cp_id: str, stopped: bool) -> bool:
        """Record the operator's wish; False when the charger is not one of ours."""

        def work(db: sqlite3.Connection) -> Any:
            cursor = db.execute(
                "UPDATE chargers SET stopped = ? WHERE cp_id = ?", (1 if stopped else 0, cp_id)
            )
            return cursor.rowcount > 0

        return await self.write(work)

    # ------------------------------------------------------ transactions

    async def txn(self, cp_id: str, tx_id: str) -> Txn | None:
        row = await self._read.one("SELECT * FROM transactions WHERE cp_id = ? AND tx_id = ?", (cp_id, tx_id))
        return _txn(row) if row else None

    @staticmethod
    def txn_in(db: sqlite3.Connection, cp_id: str, tx_id: str) -> Txn | None:
        """The same, inside a write."""
        row = db.execute(
            "SELECT * FROM transactions WHERE cp_id = ? AND tx_id = ?", (cp_id, tx_id)
        ).fetchone()
        return _txn(row) if row else None

    async def running_txn(self, cp_id: str) -> Txn | None:
        row = await self._read.one(
            "SELECT * FROM transactions WHERE cp_id = ? AND ended = 0 AND session_id IS NOT NULL "
            "ORDER BY started_at DESC LIMIT 1",
            (cp_id,),
        )
        return _txn(row) if row else None

    async def txn_of_session(self, session_id: str) -> Txn | None:
        row = await self._read.one("SELECT * FROM transactions WHERE session_id = ?", (session_id,))
        return _txn(row) if row else None

    async def set_stop_reason(self, cp_id: str, tx_id: str, reason: EndReason) -> None:
        def work(db: sqlite3.Connection) -> Any:
            db.execute(
                "UPDATE transactions SET stop_reason = ? WHERE cp_id = ? AND tx_id = ? AND ended = 0",
                (reason.value, cp_id, tx_id),
            )

        await self.write(work)

    @staticmethod
    def next_tx_id(db: sqlite3.Connection, cp_id: str) -> int:
        cursor = db.execute("INSERT INTO tx_ids (cp_id) VALUES (?)", (cp_id,))
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    @staticmethod
    def save_txn(db: sqlite3.Connection, txn: Txn) -> None:
        db.execute(
            "INSERT INTO transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (cp_id, tx_id) DO UPDATE SET session_id = excluded.session_id, "
            "driver_id = excluded.driver_id, price = excluded.price, "
            "meter_start_wh = excluded.meter_start_wh, last_seq = excluded.last_seq, "
            "last_wh = excluded.last_wh, ended = excluded.ended",
            (
                txn.cp_id,
                txn.tx_id,
                txn.session_id,
                txn.driver_id,
                txn.price,
                txn.meter_start_wh,
                txn.started_at,
                txn.last_seq,
                txn.last_wh,
                1 if txn.ended else 0,
                txn.stop_reason.value if txn.stop_reason else None,
            ),
        )

    # ---------------------------------------------------------- messages

    async def answer_of(self, cp_id: str, key: str) -> dict[str, object] | None:
        """The answer a transaction message got when it was applied; None if it never was."""
        row = await self._read.one(
            "SELECT answer FROM messages WHERE cp_id = ? AND message_key = ?", (cp_id, key)
        )
        return json.loads(row[0]) if row else None

    @staticmethod
    def answer_in(db: sqlite3.Connection, cp_id: str, key: str) -> dict[str, object] | None:
        """The same, inside a write."""
        row = db.execute(
            "SELECT answer FROM messages WHERE cp_id = ? AND message_key = ?", (cp_id, key)
        ).fetchone()
        return json.loads(row[0]) if row else None

    @staticmethod
    def save_message(db: sqlite3.Connection, cp_id: str, key: str, answer: dict[str, object]) -> None:
        db.execute("INSERT INTO messages VALUES (?, ?, ?, ?)", (cp_id, key, json.dumps(answer), time.time()))

    @staticmethod
    def forget_readings(db: sqlite3.Connection, cp_id: str, prefix: str) -> None:
        """Keep the table bounded: once a transaction has ended, the keys of its readings go.

        A reading replayed after that finds the transaction ended and derives nothing;
        the keys of starts stay, since a start replayed must get its transaction id back.
        """
        like = prefix.replace("%", r"\%").replace("_", r"\_") + "%"
        db.execute("DELETE FROM messages WHERE cp_id = ? AND message_key LIKE ? ESCAPE '\\'", (cp_id, like))

    async def waiting_rows(self, origin: str) -> list[int]:
        """The outbox rows a message derived that Kafka has not acknowledged yet."""
        rows = await self._read.all("SELECT row_id FROM outbox WHERE origin = ?", (origin,))
        return [int(r[0]) for r in rows]

    async def rows_left(self, row_ids: Sequence[int]) -> set[int]:
        if not row_ids:
            return set()
        marks = ",".join("?" * len(row_ids))
        rows = await self._read.all(f"SELECT row_id FROM outbox WHERE row_id IN ({marks})", tuple(row_ids))
        return {int(r[0]) for r in rows}

    # ---------------------------------------------------- pending starts

    async def add_pending(
        self, cp_id: str, session_id: str, driver_id: str, price: int, kind: str, *, remote: bool
    ) -> PendingStart:
        """Remember a start central asked for (a remote start gets a durable remoteStartId)."""

        def work(db: sqlite3.Connection) -> Any:
            row = db.execute(
                "SELECT remote_start_id FROM pending_starts WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is not None:
                remote_start_id = row[0]
            else:
                remote_start_id = None
                if remote:
                    cursor = db.execute("INSERT INTO remote_start_ids (session_id) VALUES (?)", (session_id,))
                    remote_start_id = cursor.lastrowid
                db.execute(
                    "INSERT INTO pending_starts VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (session_id, cp_id, driver_id, price, remote_start_id, kind, time.time()),
                )
            return PendingStart(session_id, cp_id, driver_id, price, remote_start_id, kind)

        start: PendingStart = await self.write(work)
        return start

    async def pending(self, session_id: str) -> PendingStart | None:
        row = await self._read.one("SELECT * FROM pending_starts WHERE session_id = ?", (session_id,))
        return _pending(row) if row else None

    async def pending_for(
        self, cp_id: str, driver_id: str | None, remote_start_id: int | None = None
    ) -> PendingStart | None:
        if remote_start_id is not None:
            row = await self._read.one(
                "SELECT * FROM pending_starts WHERE cp_id = ? AND remote_start_id = ?",
                (cp_id, remote_start_id),
            )
            if row is not None:
                return _pending(row)
        if driver_id is None:
            return None
        row = await self._read.one(
            "SELECT * FROM pending_starts WHERE cp_id = ? AND driver_id = ? ORDER BY created_at LIMIT 1",
            (cp_id, driver_id),
        )
        return _pending(row) if row else None

    async def drop_pending(self, session_id: str) -> bool:
        def work(db: sqlite3.Connection) -> Any:
            cursor = db.execute("DELETE FROM pending_starts WHERE session_id = ?", (session_id,))
            return cursor.rowcount > 0

        return await self.write(work)

    @staticmethod
    def consume_pending(db: sqlite3.Connection, session_id: str) -> None:
        db.execute("DELETE FROM pending_starts WHERE session_id = ?", (session_id,))

    # ------------------------------------------------------------ outbox

    @staticmethod
    def queue(db: sqlite3.Connection, messages: Sequence[object], origin: str = "") -> list[int]:
        """Queue evcharge messages for Kafka inside the caller's transaction; their row ids."""
        ids = []
        now = time.time()
        for message in messages:
            topic, key = route(message)  # type: ignore[arg-type]
            cursor = db.execute(
                "INSERT INTO outbox (topic, key, payload, origin, created_at) VALUES (?, ?, ?, ?, ?)",
                (topic, key, encode(message), origin, now),  # type: ignore[arg-type]
            )
            assert cursor.lastrowid is not None
            ids.append(int(cursor.lastrowid))
        return ids

    @staticmethod
    def queue_raw(db: sqlite3.Connection, topic: str, key: str, payload: bytes) -> int:
        cursor = db.execute(
            "INSERT INTO outbox (topic, key, payload, origin, created_at) VALUES (?, ?, ?, '', ?)",
            (topic, key, payload, time.time()),
        )
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    async def outbox_batch(self, limit: int) -> list[OutboxRow]:
        """The oldest rows Kafka may have: with `hold_unsigned`, not the CP events of a charger
        without its key yet (their turn comes when it arrives; every other row goes meanwhile)."""
        if self.hold_unsigned:
            rows = await self._read.all(
                "SELECT row_id, topic, key, payload FROM outbox o WHERE o.topic != ? OR EXISTS "
                "(SELECT 1 FROM chargers c WHERE c.cp_id = o.key AND c.engine_key IS NOT NULL) "
                "ORDER BY row_id LIMIT ?",
                (Topic.CP_EVENTS.value, limit),
            )
            return [OutboxRow(r[0], r[1], r[2], bytes(r[3])) for r in rows]
        rows = await self._read.all(
            "SELECT row_id, topic, key, payload FROM outbox ORDER BY row_id LIMIT ?", (limit,)
        )
        return [OutboxRow(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    async def outbox_delete(self, row_ids: list[int]) -> None:
        def work(conn: sqlite3.Connection) -> Any:
            conn.executemany("DELETE FROM outbox WHERE row_id = ?", [(i,) for i in row_ids])

        await self.write(work)

    async def outbox_stats(self) -> OutboxStats:
        row = await self._read.one("SELECT COUNT(*), MIN(created_at) FROM outbox")
        return OutboxStats(int(row[0]), row[1]) if row else OutboxStats(0, None)


def _txn(row: sqlite3.Row) -> Txn:
    return Txn(
        cp_id=row["cp_id"],
        tx_id=row["tx_id"],
        session_id=row["session_id"],
        driver_id=row["driver_id"],
        price=row["price"],
        meter_start_wh=row["meter_start_wh"],
        started_at=row["started_at"],
        last_seq=row["last_seq"],
        last_wh=row["last_wh"],
        ended=bool(row["ended"]),
        stop_reason=EndReason(row["stop_reason"]) if row["stop_reason"] else None,
    )


def _pending(row: sqlite3.Row) -> PendingStart:
    return PendingStart(
        row["session_id"], row["cp_id"], row["driver_id"], row["price"], row["remote_start_id"], row["kind"]
    )
