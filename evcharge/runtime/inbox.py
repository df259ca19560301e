"""One Kafka inbox for every role: take the partitions, decode, set aside the undecodable,
hand the rest over, and commit only after the effect.

Offsets are committed only after the handler returned, i.e. after its effects
are durable; a crash in between hands the same records to the next run, and
the handlers deduplicate by business key. A record that does not decode goes to
the role's dead-letter sink with why, and never stops the inbox. When the
handler cannot record (a full disk, a store that is down) the same records are
handed over again after a backoff, with nothing committed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from evcharge.errors import ProtocolError
from evcharge.runtime.kafka import TopicSpec, all_partitions, ensure_topics, key_partition, new_consumer
from evcharge.runtime.kafka_access import Kafka
from evcharge.runtime.retry import DEFAULT_POLICY, Attempts, LinkWatch, RetryPolicy, keep_trying
from evcharge.runtime.waits import sleep_unless

log = logging.getLogger(__name__)

PROBE_AFTER_IDLE_S = 1.0
PROBE_TIMEOUT_S = 3.0
COMMIT_TIMEOUT_S = 3.0
STOP_TIMEOUT_S = 5.0

M = TypeVar("M")
M_co = TypeVar("M_co", covariant=True)


class Decoder(Protocol[M_co]):
    def decode(self, data: bytes) -> M_co: ...


@dataclass(frozen=True)
class Subscription:
    """A topic to read: all of its partitions, or (with `key`) only that key's partition and records."""

    topic: str
    key: str | None = None


@dataclass(frozen=True)
class Delivery(Generic[M]):
    record: ConsumerRecord[bytes, bytes]
    message: M

    @property
    def broker_time_s(self) -> float:
        """When the broker appended the record (for topics stamped with LogAppendTime)."""
        return float(self.record.timestamp) / 1000.0


Handle = Callable[[list[Delivery[Any]]], Awaitable[None]]
DeadLetterSink = Callable[[ConsumerRecord[bytes, bytes], str], Awaitable[None]]


class Inbox:
    def __init__(
        self,
        *,
        bootstrap: Kafka,
        group_id: str,
        subscriptions: Sequence[Subscription],
        codecs: Mapping[str, Decoder[Any]],
        topics: Sequence[TopicSpec],
        handle: Handle,
        dead_letter: DeadLetterSink,
        partitions: int,
        policy: RetryPolicy = DEFAULT_POLICY,
        max_records: int = 500,
        new_group_starts_at_end: bool = False,
        name: str = "",
    ) -> None:
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._subscriptions = subscriptions
        self._codecs = codecs
        self._topics = topics
        self._handle = handle
        self._dead_letter = dead_letter
        self._partitions = partitions
        self._policy = policy
        self._max_records = max_records
        self._new_group_starts_at_end = new_group_starts_at_end
        self.name = name or group_id
        self._watch = LinkWatch(log, "Kafka", str(bootstrap))
        self._store_watch = LinkWatch(
            logging.getLogger(f"evcharge.{self.name}"),
            self.name,
            "",
            ("{what} cannot record what it read ({error}): holding it{retry}", "{what} records again"),
        )
        # Records of these keys are ours on a partition shared with other keys.
        self._own_keys = {s.topic: s.key.encode() for s in subscriptions if s.key is not None}
        self.ready = asyncio.Event()
        self.partition_counts: dict[str, int] = {}
        self.commit_pending: dict[TopicPartition, int] = {}
        self._handled: dict[TopicPartition, int] = {}  # the next offset not yet handled
        self._consumer: AIOKafkaConsumer | None = None

    @property
    def kafka_up(self) -> bool:
        return self._watch.up is not False

    @property
    def store_error(self) -> str | None:
        """Why the handler cannot record what it read, while it cannot."""
        return self._store_watch.last_error if self._store_watch.up is False else None

    async def run(self, stop: asyncio.Event) -> None:
        await keep_trying(
            lambda attempts: self._session(attempts, stop), watch=self._watch, stop=stop, policy=self._policy
        )

    async def lags(self) -> dict[TopicPartition, int]:
        """Records the broker holds that this inbox has not handled yet, per partition.

        Counted from what was handled, not from what was fetched: records held
        because the handler cannot record (a full disk) are lag too.
        """
        consumer = self._consumer
        if consumer is None:
            return {}
        lags = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            handled = self._handled.get(tp)
            if highwater is None or handled is None:
                continue  # nothing fetched from it yet
            lags[tp] = max(0, highwater - handled)
        return lags

    async def _session(self, attempts: Attempts, stop: asyncio.Event) -> None:
        consumer = new_consumer(self._bootstrap, self._group_id)
        try:
            await consumer.start()
            self.partition_counts = await ensure_topics(self._bootstrap, self._topics, self._partitions)
            partitions = self._assignment(self.partition_counts)
            consumer.assign(partitions)
            await self._resume_positions(consumer, partitions)
            for tp in partitions:
                self._handled[tp] = await consumer.position(tp)
            self._consumer = consumer
            attempts.succeeded()
            self.ready.set()
            await self._consume(consumer, stop)
        finally:
            self._consumer = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await consumer.stop()

    def _assignment(self, counts: dict[str, int]) -> list[TopicPartition]:
        assigned: list[TopicPartition] = []
        for s in self._subscriptions:
            if s.key is None:
                assigned += all_partitions(counts, [s.topic])
            else:
                assigned.append(key_partition(counts, s.topic, s.key))
        return list(dict.fromkeys(assigned))

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

    async def _consume(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        last_heard = time.monotonic()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=self._max_records)
            records = [r for batch in batches.values() for r in batch]
            if records:
                last_heard = time.monotonic()
                await self._deliver(records, stop)
                for tp, batch in batches.items():
                    self.commit_pending[tp] = self._handled[tp] = batch[-1].offset + 1
            elif time.monotonic() - last_heard > PROBE_AFTER_IDLE_S:
                # An idle fetch cannot tell a quiet topic from a dead broker; a
                # metadata request can, so an outage is logged (once) and shown.
                last_heard = time.monotonic()
                await self._probe(consumer)
            if self.commit_pending:
                await self._commit(consumer)

    async def _deliver(self, records: list[ConsumerRecord[bytes, bytes]], stop: asyncio.Event) -> None:
        deliveries: list[Delivery[Any]] = []
        for record in records:
            own_key = self._own_keys.get(record.topic)
            if own_key is not None and record.key != own_key:
                continue  # another key that hashes to the partition we read
            try:
                message = self._codecs[record.topic].decode(record.value or b"")
            except ProtocolError as exc:
                await self._set_aside(record, str(exc), stop)
                continue
            deliveries.append(Delivery(record, message))
        if not deliveries:
            return
        backoff = self._policy.backoff()
        while True:
            try:
                await self._handle(deliveries)
            except Exception as exc:
                if not self._policy.retriable(exc) or stop.is_set():
                    raise
                delay = backoff.next_delay()
                self._store_watch.failed(exc, delay)
                if await sleep_unless(stop, delay):
                    raise
                continue
            self._store_watch.succeeded()
            return

    async def _set_aside(
        self, record: ConsumerRecord[bytes, bytes], reason: str, stop: asyncio.Event
    ) -> None:
        log.warning(
            "%s set aside record %s[%d]@%d as a dead letter: %s",
            self.name,
            record.topic,
            record.partition,
            record.offset,
            reason,
        )
        backoff = self._policy.backoff()
        while True:
            try:
                await self._dead_letter(record, reason)
                return
            except Exception as exc:
                if not self._policy.retriable(exc) or await sleep_unless(stop, backoff.next_delay()):
                    raise
                self._store_watch.failed(exc)

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await consumer.topics()
        except Exception as exc:  # any failure of the probe means the broker is not serving us
            self._watch.failed(exc)
        else:
            # Metadata can come from any broker left, while a commit that failed needs the group
            # coordinator and enough replicas of the offsets: only that commit succeeding says
            # Kafka serves this inbox again. Otherwise, with one broker of three, the link would
            # be said up and down again at every probe.
            if not self.commit_pending:
                self._watch.succeeded()

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        offsets = dict(self.commit_pending)
        try:
            # aiokafka retries a commit until the group coordinator answers: without
            # a deadline an outage would hold this loop (and its probe) indefinitely.
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                await consumer.commit(offsets)
        except Exception as exc:
            if not self._policy.retriable(exc):
                raise
            # The effects are durable and deduplicated: a commit can wait for the broker.
            self._watch.failed(exc)
            return
        self._watch.succeeded()
        for tp, offset in offsets.items():
            if self.commit_pending.get(tp) == offset:
                del self.commit_pending[tp]
