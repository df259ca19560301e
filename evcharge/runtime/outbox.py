"""The relay of a transactional outbox: publish what the store recorded, in order, then forget it.

A role writes its state change and the messages it owes in one SQLite
transaction; this relay publishes them to Kafka and deletes them only after
the broker acknowledged. A crash in between publishes a row again, never
loses one; consumers deduplicate by business key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import aiosqlite
from aiokafka import AIOKafkaProducer

from evcharge.runtime.backoff import Backoff
from evcharge.runtime.kafka import new_producer
from evcharge.runtime.reconnect import LinkWatch, is_retriable
from evcharge.runtime.sqlite import Database
from evcharge.runtime.waits import sleep_unless, wait_first

log = logging.getLogger(__name__)

BATCH_ROWS = 500
IDLE_POLL_S = 1.0


@dataclass(frozen=True)
class OutboxRow:
    row_id: int
    topic: str
    key: str
    payload: bytes


class OutboxStore(Protocol):
    async def outbox_batch(self, limit: int) -> list[OutboxRow]: ...
    async def outbox_delete(self, row_ids: list[int]) -> None: ...


class OutboxRelay:
    def __init__(
        self,
        store: OutboxStore,
        bootstrap: str,
        *,
        backoff: Backoff | None = None,
        on_published: Callable[[list[OutboxRow]], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._bootstrap = bootstrap
        self._backoff = backoff or Backoff(max_delay_s=2.0)
        self._wake = asyncio.Event()
        self._on_published = on_published
        self._watch = LinkWatch(log, "Kafka", bootstrap)
        self.published = 0

    def wake(self) -> None:
        """Called after a transaction added rows: publish now rather than at the next poll."""
        self._wake.set()

    @property
    def kafka_up(self) -> bool:
        return self._watch.up is not False

    async def run(self, stop: asyncio.Event) -> None:
        producer: AIOKafkaProducer | None = None
        try:
            while not stop.is_set():
                # Cleared before reading, not after: a wake() while the batch is read
                # must not be lost, or new rows would wait for the idle poll.
                self._wake.clear()
                try:
                    if producer is None:
                        producer = new_producer(self._bootstrap)
                        await producer.start()
                    rows = await self._store.outbox_batch(BATCH_ROWS)
                    if rows:
                        await self._publish(producer, rows)
                        self._watch.succeeded()
                        self._backoff.reset()
                        continue
                    self._watch.succeeded()
                except Exception as exc:
                    if not is_retriable(exc):
                        raise
                    delay = self._backoff.next_delay()
                    self._watch.failed(exc, delay)
                    if producer is not None:
                        await _stop_quietly(producer)
                        producer = None
                    await sleep_unless(stop, delay)
                    continue
                await wait_first(stop, self._wake, timeout_s=IDLE_POLL_S)
        finally:
            if producer is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await self._flush_once(producer)
                await _stop_quietly(producer)

    async def _flush_once(self, producer: AIOKafkaProducer) -> None:
        rows = await self._store.outbox_batch(BATCH_ROWS)
        if rows:
            await self._publish(producer, rows)

    async def _publish(self, producer: AIOKafkaProducer, rows: list[OutboxRow]) -> None:
        # send() only enqueues; awaiting the futures afterwards keeps the order
        # (idempotent producer, one partition per key) and pipelines the batch.
        futures = [await producer.send(r.topic, r.payload, key=r.key.encode()) for r in rows]
        async with asyncio.timeout(15):
            await asyncio.gather(*futures)
        await self._store.outbox_delete([r.row_id for r in rows])
        self.published += len(rows)
        if self._on_published is not None:
            await self._on_published(rows)


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            await producer.stop()


OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


class SqliteOutbox:
    """The outbox table of a role's SQLite file; rows are added inside the role's own transactions."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    async def add(conn: aiosqlite.Connection, rows: Iterable[tuple[str, str, bytes]]) -> None:
        await conn.executemany("INSERT INTO outbox (topic, key, payload) VALUES (?, ?, ?)", rows)

    async def outbox_batch(self, limit: int) -> list[OutboxRow]:
        async with self._db.execute(
            "SELECT row_id, topic, key, payload FROM outbox ORDER BY row_id LIMIT ?", (limit,)
        ) as cursor:
            return [OutboxRow(r[0], r[1], r[2], bytes(r[3])) for r in await cursor.fetchall()]

    async def outbox_delete(self, row_ids: list[int]) -> None:
        async with self._db.transaction() as conn:
            await conn.executemany("DELETE FROM outbox WHERE row_id = ?", [(i,) for i in row_ids])

    async def size(self) -> int:
        async with self._db.execute("SELECT COUNT(*) FROM outbox") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0
