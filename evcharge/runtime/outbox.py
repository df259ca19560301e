"""The relay of a transactional outbox: publish what the store recorded, in order, then forget it.

A role writes its state change and the messages it owes in one transaction; this
relay publishes them to Kafka and deletes them only after the broker
acknowledged. A crash in between publishes a row again, never loses one;
consumers deduplicate by business key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiosqlite
from aiokafka import AIOKafkaProducer

from evcharge.errors import StoreUnavailable
from evcharge.runtime.kafka import new_producer
from evcharge.runtime.retry import DEFAULT_POLICY, Attempts, LinkWatch, RetryPolicy, keep_trying
from evcharge.runtime.sqlite import Database
from evcharge.runtime.waits import wait_first

log = logging.getLogger(__name__)

BATCH_ROWS = 500
IDLE_POLL_S = 1.0
PUBLISH_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class OutboxRow:
    row_id: int
    topic: str
    key: str
    payload: bytes


@dataclass(frozen=True)
class OutboxStats:
    rows: int
    oldest_at: float | None  # wall-clock time the oldest row was written


class OutboxStore(Protocol):
    async def outbox_batch(self, limit: int) -> list[OutboxRow]: ...
    async def outbox_delete(self, row_ids: list[int]) -> None: ...
    async def outbox_stats(self) -> OutboxStats: ...


class OutboxRelay:
    def __init__(
        self,
        store: OutboxStore,
        bootstrap: str,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        on_published: Callable[[list[OutboxRow]], Awaitable[None]] | None = None,
        may_publish: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._store = store
        self._bootstrap = bootstrap
        self._policy = policy
        self._wake = asyncio.Event()
        self._on_published = on_published
        # Asked before each batch: a role that lost the right to speak (a fenced
        # leader) publishes nothing more.
        self._may_publish = may_publish
        self._watch = LinkWatch(log, "Kafka", bootstrap)
        self._store_watch = LinkWatch(
            log,
            "the outbox relay",
            "",
            ("{what} cannot update its store ({error}){retry}", "{what} updates its store again"),
        )
        self.published = 0

    def wake(self) -> None:
        """Called after a transaction added rows: publish now rather than at the next poll."""
        self._wake.set()

    @property
    def kafka_up(self) -> bool:
        return self._watch.up is not False

    async def run(self, stop: asyncio.Event) -> None:
        await keep_trying(
            lambda attempts: self._session(attempts, stop), watch=self._watch, stop=stop, policy=self._policy
        )

    async def _session(self, attempts: Attempts, stop: asyncio.Event) -> None:
        producer = new_producer(self._bootstrap)
        try:
            await producer.start()
            store_backoff = self._policy.backoff()
            while not stop.is_set():
                # Cleared before reading, not after: a wake() while the batch is read
                # must not be lost, or new rows would wait for the idle poll.
                self._wake.clear()
                try:
                    published = await self._publish_batch(producer, stop)
                except StoreUnavailable as exc:
                    # Published, but not yet forgotten: the rows go again later (consumers
                    # deduplicate); Kafka is fine, so the producer stays.
                    delay = store_backoff.next_delay()
                    self._store_watch.failed(exc, delay)
                    await wait_first(stop, timeout_s=delay)
                    continue
                self._store_watch.succeeded()
                store_backoff.reset()
                attempts.succeeded()
                if not published:
                    await wait_first(stop, self._wake, timeout_s=IDLE_POLL_S)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await self._publish_batch(producer)  # a last flush on the way out
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await producer.stop()

    async def _publish_batch(self, producer: AIOKafkaProducer, stop: asyncio.Event | None = None) -> bool:
        if self._may_publish is not None and not await self._may_publish():
            return False
        rows = await self._store.outbox_batch(BATCH_ROWS)
        if not rows:
            return False
        # send() only enqueues; awaiting the futures afterwards keeps the order
        # (idempotent producer, one partition per key) and pipelines the batch.
        futures = [await producer.send(r.topic, r.payload, key=r.key.encode()) for r in rows]
        if not await self._acknowledged(futures, stop):
            return False  # stopping while Kafka is away: the rows stay for the next start
        await self._store.outbox_delete([r.row_id for r in rows])
        self.published += len(rows)
        if self._on_published is not None:
            await self._on_published(rows)
        return True

    async def _acknowledged(self, futures: list[asyncio.Future[Any]], stop: asyncio.Event | None) -> bool:
        """True once Kafka acknowledged every send; False if `stop` came first.

        Waiting longer than PUBLISH_TIMEOUT_S is an outage: said once, and waited out with this
        same producer, which retries by itself and, being idempotent, never gives a send up nor
        writes a retry twice. A new producer would publish the rows a second time beside it,
        and this one would live on: its stop() cannot finish while its sends are pending.
        """
        acked = asyncio.gather(*futures)
        # Retrieved, so that a send failing after we stopped waiting is not reported as unhandled.
        acked.add_done_callback(lambda done: done.cancelled() or done.exception())
        stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            while True:
                waiters: set[asyncio.Future[Any]] = {acked} if stopping is None else {acked, stopping}
                done, _ = await asyncio.wait(
                    waiters, timeout=PUBLISH_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
                )
                if acked in done:
                    acked.result()  # a send the producer could not make: the session starts over
                    return True
                if stopping is not None and stopping in done:
                    return False
                self._watch.failed(TimeoutError(f"no acknowledgement for {PUBLISH_TIMEOUT_S:g} s"))
        finally:
            if stopping is not None:
                stopping.cancel()


OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL DEFAULT 0
);
"""


class SqliteOutbox:
    """The outbox table of a role's SQLite file; rows are added inside the role's own transactions."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    async def add(conn: aiosqlite.Connection, rows: Iterable[tuple[str, str, bytes]]) -> None:
        now = time.time()
        await conn.executemany(
            "INSERT INTO outbox (topic, key, payload, created_at) VALUES (?, ?, ?, ?)",
            [(topic, key, payload, now) for topic, key, payload in rows],
        )

    async def outbox_batch(self, limit: int) -> list[OutboxRow]:
        rows = await self._db.fetchall(
            "SELECT row_id, topic, key, payload FROM outbox ORDER BY row_id LIMIT ?", (limit,)
        )
        return [OutboxRow(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    async def outbox_delete(self, row_ids: list[int]) -> None:
        async with self._db.transaction() as conn:
            await conn.executemany("DELETE FROM outbox WHERE row_id = ?", [(i,) for i in row_ids])

    async def outbox_stats(self) -> OutboxStats:
        row = await self._db.fetchone("SELECT COUNT(*), MIN(created_at) FROM outbox")
        return OutboxStats(int(row[0]), row[1]) if row else OutboxStats(0, None)
