"""Central's store in PostgreSQL (asyncpg): the store several centrals share.

Every commit is one transaction on one pooled connection. A database that is
down or restarting raises `StoreUnavailable` (the caller waits and retries), a
full disk `StorageFull`; nothing of a failed commit is kept.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

import asyncpg

from evcharge.central.leadership import Fenced, Holder
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
from evcharge.errors import StorageFull, StoreUnavailable
from evcharge.runtime.faults import crash_point
from evcharge.runtime.outbox import OutboxRow, OutboxStats

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0
MIGRATION_LOCK = 0x65766368  # "evch": one central migrates at a time

_UPSERT_SESSION = (
    f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(SESSION_COLUMNS) + 1))}) "
    "ON CONFLICT (session_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in SESSION_COLUMNS[1:])
)


def redacted(url: str) -> str:
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", url)


def _outage(exc: BaseException) -> BaseException | None:
    """The store error an asyncpg failure stands for, or None when it is a bug to raise as is."""
    if isinstance(exc, asyncpg.DiskFullError):
        return StorageFull(f"PostgreSQL: {exc}")
    if isinstance(
        exc,
        (
            OSError,
            TimeoutError,
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.AdminShutdownError,
            asyncpg.CrashShutdownError,
            asyncpg.InterfaceError,
            asyncpg.TooManyConnectionsError,
            asyncpg.SerializationError,
            asyncpg.DeadlockDetectedError,
        ),
    ):
        return StoreUnavailable(f"PostgreSQL unavailable: {exc.__class__.__name__}: {exc}")
    return None


@contextlib.asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except Exception as exc:
        outage = _outage(exc)
        if outage is None:
            raise
        raise outage from exc


class _Outbox:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def outbox_batch(self, limit: int) -> list[OutboxRow]:
        rows = await self._store._fetch(
            "SELECT row_id, topic, key, payload FROM outbox ORDER BY row_id LIMIT $1", limit
        )
        return [OutboxRow(r["row_id"], r["topic"], r["key"], bytes(r["payload"])) for r in rows]

    async def outbox_delete(self, row_ids: list[int]) -> None:
        await self._store._execute("DELETE FROM outbox WHERE row_id = ANY($1::bigint[])", row_ids)

    async def outbox_stats(self) -> OutboxStats:
        rows = await self._store._fetch("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox")
        return OutboxStats(int(rows[0]["n"]), rows[0]["oldest"])


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self.url = redacted(url)
        self.outbox = _Outbox(self)
        # The leader's fencing epoch, checked inside every commit, in the same transaction;
        # None for a store nobody leads (the contract tests, tools).
        self.epoch: int | None = None

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 4) -> PostgresStore:
        async with _translated():
            pool = await asyncpg.create_pool(
                url,
                # No floor: asyncpg would keep reconnecting it in the background through an
                # outage, logging a traceback each time; connections are made as they are needed.
                min_size=0,
                max_size=pool_size,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
            )
        store = cls(pool, url)
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def _migrate(self) -> None:
        scripts = migrations("postgres")
        async with _translated(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            for number in range(int(version), len(scripts)):
                await conn.execute(scripts[number])
                await conn.execute("INSERT INTO schema_migrations VALUES ($1)", number + 1)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._pool.close()

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with _translated():
            return list(await self._pool.fetch(sql, *args))

    async def _execute(self, sql: str, *args: Any) -> None:
        async with _translated():
            await self._pool.execute(sql, *args)

    async def load_cps(self) -> list[CpRecord]:
        return [cp_from(r) for r in await self._fetch("SELECT * FROM cps ORDER BY cp_id")]

    async def load_active_sessions(self) -> list[Session]:
        rows = await self._fetch("SELECT * FROM sessions WHERE state != 'ended' ORDER BY created_at")
        return [session_from(r) for r in rows]

    async def secret_hash(self, cp_id: str) -> str | None:
        rows = await self._fetch("SELECT secret_hash FROM cp_credentials WHERE cp_id = $1", cp_id)
        return str(rows[0]["secret_hash"]) if rows else None

    async def request_outcome(self, request_id: str) -> RequestOutcome | None:
        rows = await self._fetch("SELECT * FROM requests WHERE request_id = $1", request_id)
        return outcome_from(rows[0]) if rows else None

    async def sessions_by_id(self, session_ids: Iterable[str]) -> dict[str, Session]:
        ids = list(dict.fromkeys(session_ids))
        if not ids:
            return {}
        rows = await self._fetch("SELECT * FROM sessions WHERE session_id = ANY($1::text[])", ids)
        return {r["session_id"]: session_from(r) for r in rows}

    async def sessions(self, query: SessionQuery) -> list[Session]:
        clauses, args = [], []
        for column, op, value in (
            ("driver_id", "=", query.driver_id),
            ("cp_id", "=", query.cp_id),
            ("created_at", ">=", query.since),
            ("created_at", "<", query.until),
        ):
            if value is not None and value != "":
                args.append(value)
                clauses.append(f"{column} {op} ${len(args)}")
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        args.append(query.limit)
        rows = await self._fetch(
            f"SELECT * FROM sessions {where} ORDER BY created_at DESC LIMIT ${len(args)}", *args
        )
        return [session_from(r) for r in rows]

    async def identity(self) -> str:
        rows = await self._fetch("SELECT store_id FROM store_identity")
        return str(rows[0]["store_id"])

    def leadership_lease(self) -> PostgresLease:
        return PostgresLease(self)

    async def _fence(self, conn: asyncpg.Connection) -> None:
        """Stop a commit of a central that no longer leads (FOR SHARE: a take waits for it)."""
        if self.epoch is None:
            return
        current = await conn.fetchval("SELECT epoch FROM central_leader WHERE id = 1 FOR SHARE")
        if current != self.epoch:
            raise Fenced(f"the lead moved to epoch {current}; this central held epoch {self.epoch}")

    async def commit(self, change: Change) -> None:
        async with _translated(), self._pool.acquire() as conn, conn.transaction():
            await self._fence(conn)
            if change.cps:
                await conn.executemany(
                    "INSERT INTO cps VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (cp_id) DO UPDATE SET "
                    "location = excluded.location, price = excluded.price, max_w = excluded.max_w, "
                    "stopped = excluded.stopped, registered_at = excluded.registered_at",
                    [
                        (c.cp_id, c.location, c.price, c.max_w, c.stopped, c.registered_at)
                        for c in change.cps.values()
                    ],
                )
            if change.forget:
                await conn.execute("DELETE FROM cps WHERE cp_id = ANY($1::text[])", change.forget)
                await conn.execute("DELETE FROM cp_credentials WHERE cp_id = ANY($1::text[])", change.forget)
            if change.secrets:
                await conn.executemany(
                    "INSERT INTO cp_credentials VALUES ($1, $2) "
                    "ON CONFLICT (cp_id) DO UPDATE SET secret_hash = excluded.secret_hash",
                    list(change.secrets.items()),
                )
            if change.sessions:
                await conn.executemany(_UPSERT_SESSION, [session_row(s) for s in change.sessions.values()])
            if change.requests:
                await conn.executemany(
                    "INSERT INTO requests VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
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
                            self.epoch or 0,
                        )
                        for r in change.requests
                    ],
                )
            rows = encoded_messages(change)
            if rows:
                await _add_outbox(conn, rows)
            crash_point("central.commit")

    async def dead_letter(self, topic: str, key: str, payload: bytes) -> None:
        async with _translated(), self._pool.acquire() as conn, conn.transaction():
            await self._fence(conn)
            await _add_outbox(conn, [(topic, key, payload)])


class PostgresLease:
    """The lead among centrals sharing one PostgreSQL store (see evcharge.central.leadership)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def acquire(self, me: Holder, lease_s: float) -> int | None:
        rows = await self._store._fetch(
            "INSERT INTO central_leader VALUES (1, 1, $1, $2, $3, $4, $5, now() + make_interval(secs => $6)) "
            "ON CONFLICT (id) DO UPDATE SET epoch = central_leader.epoch + 1, instance = excluded.instance, "
            "tcp = excluded.tcp, http = excluded.http, pid = excluded.pid, host = excluded.host, "
            "expires_at = excluded.expires_at "
            "WHERE central_leader.expires_at < now() OR central_leader.instance = excluded.instance "
            "RETURNING epoch",
            me.instance,
            me.tcp,
            me.http,
            me.pid,
            me.host,
            lease_s,
        )
        return int(rows[0]["epoch"]) if rows else None

    async def renew(self, me: Holder, epoch: int, lease_s: float) -> bool:
        rows = await self._store._fetch(
            "UPDATE central_leader SET expires_at = now() + make_interval(secs => $3) "
            "WHERE id = 1 AND epoch = $1 AND instance = $2 RETURNING epoch",
            epoch,
            me.instance,
            lease_s,
        )
        return bool(rows)

    async def release(self, me: Holder, epoch: int) -> None:
        await self._store._execute(
            "UPDATE central_leader SET expires_at = now() WHERE id = 1 AND epoch = $1 AND instance = $2",
            epoch,
            me.instance,
        )

    async def leader(self) -> Holder | None:
        rows = await self._store._fetch(
            "SELECT instance, tcp, http, pid, host FROM central_leader WHERE id = 1 AND expires_at > now()"
        )
        if not rows:
            return None
        r = rows[0]
        return Holder(r["instance"], r["tcp"], r["http"], int(r["pid"]), r["host"])


async def _add_outbox(conn: asyncpg.Connection, rows: Iterable[tuple[str, str, bytes]]) -> None:
    await conn.executemany(
        "INSERT INTO outbox (topic, key, payload, created_at) "
        "VALUES ($1, $2, $3, extract(epoch from clock_timestamp()))",
        list(rows),
    )
