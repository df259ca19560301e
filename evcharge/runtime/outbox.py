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
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiosqlite
from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerFenced

from evcharge.errors import Fenced, StoreUnavailable
from evcharge.runtime.kafka import close_producer, new_producer
from evcharge.runtime.kafka_access import Kafka
from evcharge.runtime.retry import DEFAULT_POLICY, Attempts, LinkWatch, RetryPolicy, keep_trying
from evcharge.runtime.sqlite import Database
from evcharge.runtime.waits import wait_first

log = logging.getLogger(__name__)

BATCH_ROWS = 500
IDLE_POLL_S = 1.0
PUBLISH_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
# A leader frozen inside a transaction holds read_committed consumers back until its
# successor fences it or this runs out.
TRANSACTION_TIMEOUT_MS = 10_000
# How long a transaction may wait for its commit before it is given up: well inside the
# transaction timeout, past which the coordinator would abort it itself (see _in_transaction).
TRANSACTION_WAIT_S = TRANSACTION_TIMEOUT_MS / 2000


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
        bootstrap: Kafka,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        on_published: Callable[[list[OutboxRow]], Awaitable[None]] | None = None,
        may_publish: Callable[[], Awaitable[bool]] | None = None,
        transactional_id: str | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        headers_for: Callable[[OutboxRow], Sequence[tuple[str, bytes]]] | None = None,
    ) -> None:
        self._store = store
        self._bootstrap = bootstrap
        self._policy = policy
        self._wake = asyncio.Event()
        self._on_published = on_published
        # Asked before each batch: a role that lost the right to speak (a fenced
        # leader) publishes nothing more.
        self._may_publish = may_publish
        # With a transactional id, each batch is one Kafka transaction: a newer relay with
        # the same id (a new leader) fences this one, whose later batches are aborted, never
        # read by consumers (read_committed).
        self._transactional_id = transactional_id
        self._headers = list(headers)
        # Headers of one row's own, e.g. a signature over its exact payload bytes.
        self._headers_for = headers_for
        self._watch = LinkWatch(log, "Kafka", str(bootstrap))
        self._store_watch = LinkWatch(
            log,
            "the outbox relay",
            "",
            ("{what} cannot update its store ({error}){retry}", "{what} updates its store again"),
        )
        self.published = 0
        self._unacknowledged = False

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
        extra: dict[str, Any] = {}
        if self._transactional_id is not None:
            extra = {
                "transactional_id": self._transactional_id,
                "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS,
            }
        producer = new_producer(self._bootstrap, **extra)
        # True while the producer holds sends Kafka has not acknowledged (or a transaction it
        # has not committed): it is then closed without the flush that would wait for them.
        self._unacknowledged = False
        try:
            if not await self._started(producer, stop):
                return
            # Kafka gave the producer its id: reachable. Later, only an acknowledged batch says
            # so again, not an empty round: a relay with nothing to publish knows nothing new.
            attempts.succeeded()
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
                if published:
                    attempts.succeeded()
                else:
                    await wait_first(stop, self._wake, timeout_s=IDLE_POLL_S)
            if not self._unacknowledged:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STOP_TIMEOUT_S):
                        await self._publish_batch(producer)  # a last flush on the way out
        finally:
            await close_producer(producer, flush=not self._unacknowledged, timeout_s=STOP_TIMEOUT_S)

    async def _started(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> bool:
        """The producer started (True), or `stop` came first (False).

        start() waits for a producer id, from the transaction coordinator for a transactional
        producer: for as long as Kafka cannot give one (too few brokers to write its state).
        That is an outage, said once; a stop meanwhile ends the wait.
        """
        starting = asyncio.ensure_future(producer.start())
        try:
            while not await self._first(starting, stop, PUBLISH_TIMEOUT_S):
                if stop.is_set():
                    return False
                self._watch.failed(TimeoutError(f"no producer id for {PUBLISH_TIMEOUT_S:g} s"))
            starting.result()
        except ProducerFenced as exc:
            raise Fenced(f"the outbox relay was fenced by a newer one: {exc}") from exc
        finally:
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(BaseException):
                    await starting
        return True

    async def _publish_batch(self, producer: AIOKafkaProducer, stop: asyncio.Event | None = None) -> bool:
        if self._may_publish is not None and not await self._may_publish():
            return False
        rows = await self._store.outbox_batch(BATCH_ROWS)
        if not rows:
            return False
        try:
            if self._transactional_id is None:
                acknowledged = await self._acknowledged(await self._send(producer, rows), stop)
            else:
                acknowledged = await self._in_transaction(producer, rows, stop)
        except ProducerFenced as exc:
            raise Fenced(f"the outbox relay was fenced by a newer one: {exc}") from exc
        if not acknowledged:
            return False  # stopping while Kafka is away: the rows stay for the next start
        await self._store.outbox_delete([r.row_id for r in rows])
        self.published += len(rows)
        if self._on_published is not None:
            await self._on_published(rows)
        return True

    async def _send(self, producer: AIOKafkaProducer, rows: list[OutboxRow]) -> asyncio.Future[Any]:
        """Every row handed to the producer; the future of their acknowledgements.

        send() only enqueues; awaiting the acknowledgements afterwards keeps the order
        (idempotent producer, one partition per key) and pipelines the batch.
        """
        self._unacknowledged = True
        futures = [
            await producer.send(r.topic, r.payload, key=r.key.encode(), headers=self._row_headers(r))
            for r in rows
        ]
        acked = asyncio.gather(*futures)
        # Retrieved, so that a send failing after we stopped waiting is not reported as unhandled.
        acked.add_done_callback(lambda done: done.cancelled() or done.exception())
        return acked

    async def _acknowledged(self, acked: asyncio.Future[Any], stop: asyncio.Event | None) -> bool:
        """True once Kafka acknowledged every send; False if `stop` came first.

        Waiting longer than PUBLISH_TIMEOUT_S is an outage: said once, and waited out with this
        same producer, which retries by itself and, being idempotent, never gives a send up nor
        writes a retry twice. A new producer would publish the rows a second time beside it.
        """
        while True:
            if await self._first(acked, stop, PUBLISH_TIMEOUT_S):
                acked.result()  # a send the producer could not make: the session starts over
                self._unacknowledged = False
                return True
            if stop is not None and stop.is_set():
                return False
            self._watch.failed(TimeoutError(f"no acknowledgement for {PUBLISH_TIMEOUT_S:g} s"))

    async def _in_transaction(
        self, producer: AIOKafkaProducer, rows: list[OutboxRow], stop: asyncio.Event | None
    ) -> bool:
        """The rows published as one Kafka transaction: True once committed, False if `stop` came first.

        A transaction is not waited out as an idempotent send is: the transaction coordinator
        aborts one left open past TRANSACTION_TIMEOUT_MS and bumps the producer's epoch, which
        this producer could not tell from being fenced by a new leader. So a transaction not
        committed within TRANSACTION_WAIT_S is given up (TimeoutError, an outage): the session's
        next producer, with the same transactional id, aborts it at its start, and publishes
        the rows again in a transaction of its own. Consumers read committed records only, so
        the rows are read once.
        """

        async def commit() -> None:
            self._unacknowledged = True
            await producer.begin_transaction()
            await (await self._send(producer, rows))
            await producer.commit_transaction()
            self._unacknowledged = False

        committing = asyncio.ensure_future(commit())
        try:
            if await self._first(committing, stop, TRANSACTION_WAIT_S):
                committing.result()
                return True
        finally:
            if not committing.done():
                committing.cancel()
                with contextlib.suppress(BaseException):
                    await committing
        if stop is not None and stop.is_set():
            return False
        raise TimeoutError(f"no transaction committed within {TRANSACTION_WAIT_S:g} s")

    @staticmethod
    async def _first(work: asyncio.Future[Any], stop: asyncio.Event | None, timeout_s: float) -> bool:
        """Wait for `work` up to `timeout_s`, or until `stop`; True if `work` is done."""
        stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            waiters: set[asyncio.Future[Any]] = {work} if stopping is None else {work, stopping}
            done, _ = await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            return work in done
        finally:
            if stopping is not None:
                stopping.cancel()

    def _row_headers(self, row: OutboxRow) -> list[tuple[str, bytes]] | None:
        if self._headers_for is None:
            return self._headers or None
        return [*self._headers, *self._headers_for(row)]


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
