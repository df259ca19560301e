"""A consume-process-commit loop that survives broker outages.

Offsets are committed only after the handler returned, i.e. after its effects
are durable; a crash in between hands the same records to the next run, and
the handlers deduplicate by business key. A decode failure is the handler's
business (dead letters), never a reason to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from evcharge.messages import DeadLetter, encode
from evcharge.runtime.backoff import Backoff
from evcharge.runtime.kafka import TOPICS, new_consumer
from evcharge.runtime.reconnect import LinkWatch, is_retriable
from evcharge.runtime.waits import sleep_unless

log = logging.getLogger(__name__)

PROBE_AFTER_IDLE_S = 1.0
PROBE_TIMEOUT_S = 3.0
COMMIT_TIMEOUT_S = 3.0

Assign = Callable[[AIOKafkaConsumer], Awaitable[list[TopicPartition]]]
Handle = Callable[[list[ConsumerRecord]], Awaitable[None]]


class ConsumerLoop:
    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        assign: Assign,
        handle: Handle,
        *,
        backoff: Backoff | None = None,
        max_records: int = 500,
        new_group_starts_at_end: bool = False,
    ) -> None:
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._assign = assign
        self._handle = handle
        self._backoff = backoff or Backoff(max_delay_s=2.0)
        self._max_records = max_records
        self._new_group_starts_at_end = new_group_starts_at_end
        self._watch = LinkWatch(log, "Kafka", bootstrap)
        self.ready = asyncio.Event()
        self.commit_pending: dict[TopicPartition, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            consumer = new_consumer(self._bootstrap, self._group_id)
            try:
                await consumer.start()
                partitions = await self._assign(consumer)
                consumer.assign(partitions)
                await self._resume_positions(consumer, partitions)
                self._watch.succeeded()
                self._backoff.reset()
                self.ready.set()
                await self._consume(consumer, stop)
            except Exception as exc:
                if not is_retriable(exc) and not isinstance(exc, LookupError):
                    raise
                delay = self._backoff.next_delay()
                self._watch.failed(exc, delay)
                await sleep_unless(stop, delay)
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await consumer.stop()

    async def _resume_positions(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Resume at the group's committed offsets.

        A group that never committed starts at the earliest record, or, for a
        role that reads one shared partition (a driver, an engine), at the end:
        a new driver must not replay other keys' history. That first position
        is committed at once, so a crash right after the first start still
        resumes where it began and misses nothing.
        """
        for tp in partitions:
            committed = await consumer.committed(tp)
            if committed is not None:
                consumer.seek(tp, committed)
            elif self._new_group_starts_at_end:
                await consumer.seek_to_end(tp)
                await consumer.commit({tp: await consumer.position(tp)})

    @property
    def kafka_up(self) -> bool:
        return self._watch.up is not False

    async def _consume(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        last_heard = time.monotonic()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=self._max_records)
            records = [r for batch in batches.values() for r in batch]
            if records:
                last_heard = time.monotonic()
            elif time.monotonic() - last_heard > PROBE_AFTER_IDLE_S:
                # An idle fetch cannot tell a quiet topic from a dead broker; a
                # metadata request can, so an outage is logged (once) and shown.
                last_heard = time.monotonic()
                await self._probe(consumer)
            if records:
                await self._handle(records)
                for tp, batch in batches.items():
                    self.commit_pending[tp] = batch[-1].offset + 1
            if self.commit_pending:
                await self._commit(consumer)

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await consumer.topics()
        except Exception as exc:  # any failure of the probe means the broker is not serving us
            self._watch.failed(exc)
        else:
            self._watch.succeeded()

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        offsets = dict(self.commit_pending)
        try:
            # aiokafka retries a commit until the group coordinator answers: without
            # a deadline an outage would hold this loop (and its probe) indefinitely.
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                await consumer.commit(offsets)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            # The effects are durable and deduplicated: a commit can wait for the broker.
            self._watch.failed(exc)
            return
        self._watch.succeeded()
        for tp, offset in offsets.items():
            if self.commit_pending.get(tp) == offset:
                del self.commit_pending[tp]


def dead_letter(record: ConsumerRecord, consumer: str, reason: str) -> tuple[str, str, bytes]:
    """The outbox row (topic, key, payload) that keeps an unusable record with why it was refused.

    Logged once here, so every consumer says the same about a record it sets aside.
    """
    log.warning(
        "%s set aside record %s[%d]@%d as a dead letter: %s",
        consumer,
        record.topic,
        record.partition,
        record.offset,
        reason,
    )
    letter = DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        consumer=consumer,
        reason=reason,
        key=record.key.decode(errors="replace") if record.key else None,
        payload=bytes(record.value or b""),
    )
    return TOPICS.dead_letters, record.topic, encode(letter)
