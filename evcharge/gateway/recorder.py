"""Applying a charger's transaction message once, and answering only after Kafka has what it derived.

`TransactionRecorder.apply` runs the pure decision (`evcharge.gateway.transactions`)
inside one store transaction that also keeps the message's key, its answer and
the outbox rows it derived; the outbox relay publishes those rows (acks=all) and
only then is the answer released. A replay of a message already applied gets the
answer it got the first time, after its rows (if any are still waiting) have been
published: never new figures. A gateway killed at any point loses nothing, since
the charger retries what it got no answer to.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evcharge.gateway.store import GatewayStore
from evcharge.gateway.transactions import Outcome
from evcharge.protocol import signing
from evcharge.protocol.topics import Topic, dead_letter
from evcharge.runtime.faults import crash_point
from evcharge.runtime.kafka_access import Kafka
from evcharge.runtime.outbox import OutboxRelay, OutboxRow
from evcharge.runtime.retry import DEFAULT_POLICY, RetryPolicy

log = logging.getLogger("evcharge.gateway")

Decide = Callable[[sqlite3.Connection], Outcome]  # runs inside the store's write


class Unacknowledged(Exception):
    """Kafka did not acknowledge in time: the message stays unanswered and the charger retries it."""


@dataclass(frozen=True)
class Applied:
    answer: dict[str, object]
    replay: bool
    outcome: Outcome | None  # None for a replay


class TransactionRecorder:
    def __init__(
        self,
        store: GatewayStore,
        bootstrap: Kafka,
        *,
        consumer: str,
        answer_timeout_s: float,
        policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self._store = store
        self._consumer = consumer
        self._answer_timeout_s = answer_timeout_s
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self.relay = OutboxRelay(
            store, bootstrap, policy=policy, on_published=self._published, headers_for=self.signature
        )

    async def apply(
        self, cp_id: str, key: str, decide: Decide, *, frame: str, source: str, action: str = ""
    ) -> Applied:
        """Apply one transaction message (or find it applied); return once Kafka acknowledged.

        Crash points for the tests: `gateway.<action>.recorded` (committed, Kafka not yet
        asked) and `gateway.<action>.acknowledged` (Kafka has it, the charger not yet told).
        """
        origin = f"{cp_id} {key}"
        answer = await self._store.answer_of(cp_id, key)
        if answer is not None:
            await self._await_rows(await self._store.waiting_rows(origin))
            return Applied(answer, True, None)
        rows: list[int] = []

        def record(conn: sqlite3.Connection) -> Outcome | None:
            if GatewayStore.answer_in(conn, cp_id, key) is not None:
                return None  # applied meanwhile (another connection, another process)
            outcome = decide(conn)
            if outcome.txn is not None:
                GatewayStore.save_txn(conn, outcome.txn)
            GatewayStore.save_message(conn, cp_id, key, outcome.answer)
            rows.extend(GatewayStore.queue(conn, outcome.events, origin))
            if outcome.dead_letter is not None:
                topic, letter_key, payload = dead_letter(
                    source, 0, -1, cp_id.encode(), frame.encode(), self._consumer, outcome.dead_letter
                )
                rows.append(GatewayStore.queue_raw(conn, topic, letter_key, payload))
            return outcome

        outcome = await self._store.write(record)
        crash_point(f"gateway.{action}.recorded")
        self.relay.wake()
        if outcome is None:  # another task applied it while we waited for the store
            answer = await self._store.answer_of(cp_id, key)
            await self._await_rows(await self._store.waiting_rows(origin))
            return Applied(answer or {}, True, None)
        await self._await_rows(rows)
        crash_point(f"gateway.{action}.acknowledged")
        return Applied(outcome.answer, False, outcome)

    async def publish(self, messages: Sequence[object]) -> None:
        """Queue messages the gateway owes by itself (a refused start); the relay delivers them."""

        def queue(conn: sqlite3.Connection) -> None:
            GatewayStore.queue(conn, messages)

        await self._store.write(queue)
        self.relay.wake()

    async def dead_letter(self, cp_id: str, source: str, frame: str, reason: str) -> None:
        topic, key, payload = dead_letter(
            source, 0, -1, cp_id.encode(), frame.encode(errors="replace"), self._consumer, reason
        )

        def queue(conn: sqlite3.Connection) -> None:
            GatewayStore.queue_raw(conn, topic, key, payload)

        await self._store.write(queue)
        self.relay.wake()

    def signature(self, row: OutboxRow) -> Sequence[tuple[str, bytes]]:
        """A charger's event carries its signature with its key (central applies no other once
        proofs are on); the gateway's own rows (dead letters) are no CP's word and go unsigned."""
        if row.topic != Topic.CP_EVENTS:
            return []
        key = self._store.engine_key(row.key)
        return [(signing.SIGNATURE_HEADER, signing.sign(key, row.payload))] if key else []

    def _watch(self, rows: Sequence[int]) -> list[asyncio.Future[None]]:
        """One future per row for this waiter alone, resolved when the relay published the row."""
        loop = asyncio.get_running_loop()
        futures = []
        for row_id in rows:
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(row_id, []).append(future)
            futures.append(future)
        return futures

    def _forget(self, rows: Sequence[int], futures: Sequence[asyncio.Future[None]]) -> None:
        for row_id in rows:
            left = [f for f in self._waiters.get(row_id, []) if f not in futures]
            if left:
                self._waiters[row_id] = left
            else:
                self._waiters.pop(row_id, None)

    async def _await_rows(self, rows: Sequence[int]) -> None:
        """Until the relay has published every one of `rows` (Kafka acknowledged), or the deadline."""
        if not rows:
            return
        futures = self._watch(rows)
        # A row no longer in the outbox was published (rows are deleted only after Kafka's
        # ack); one still there will be reported by the relay, and the watch is already set.
        left = await self._store.rows_left(rows)
        for row_id, future in zip(rows, futures, strict=True):
            if row_id not in left and not future.done():
                future.set_result(None)
        try:
            async with asyncio.timeout(self._answer_timeout_s):
                await asyncio.gather(*futures)
        except TimeoutError:
            raise Unacknowledged(f"Kafka did not acknowledge within {self._answer_timeout_s:g} s") from None
        finally:
            self._forget(rows, futures)

    def _settle(self, row_id: int) -> None:
        for future in self._waiters.pop(row_id, []):
            if not future.done():
                future.set_result(None)

    async def _published(self, rows: list[OutboxRow]) -> None:
        for row in rows:
            self._settle(row.row_id)

    def close(self) -> None:
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()
        self._waiters.clear()
