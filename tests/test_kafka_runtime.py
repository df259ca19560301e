"""The shared Kafka runtime against the real broker: order, resume, and surviving a broker crash."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from evcharge.broker import LocalBroker
from evcharge.runtime.consumer import ConsumerLoop
from evcharge.runtime.kafka import (
    TOPICS,
    all_partitions,
    ensure_topics,
    key_partition,
    new_producer,
    partition_for_key,
)
from evcharge.runtime.outbox import OutboxRelay, OutboxRow
from tests.kafka_fixture import free_ports

pytestmark = pytest.mark.kafka


@dataclass
class ListOutbox:
    """An outbox kept in memory: enough to watch the relay's behaviour."""

    rows: list[OutboxRow] = field(default_factory=list)
    next_id: int = 1

    def add(self, topic: str, key: str, payload: bytes) -> None:
        self.rows.append(OutboxRow(self.next_id, topic, key, payload))
        self.next_id += 1

    async def outbox_batch(self, limit: int) -> list[OutboxRow]:
        return self.rows[:limit]

    async def outbox_delete(self, row_ids: list[int]) -> None:
        gone = set(row_ids)
        self.rows = [r for r in self.rows if r.row_id not in gone]


class Collector:
    def __init__(self, key: str | None = None) -> None:
        self.key = key
        self.values: list[bytes] = []
        self.changed = asyncio.Event()

    async def handle(self, records: list[ConsumerRecord]) -> None:
        for r in records:
            if self.key is None or r.key == self.key.encode():
                self.values.append(r.value)
        self.changed.set()

    async def wait_for(self, count: int, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.values) < count:
                self.changed.clear()
                await self.changed.wait()


def one_partition(bootstrap: str, topic: str, key: str):
    async def assign(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        counts = await ensure_topics(bootstrap)
        return [key_partition(counts, topic, key)]

    return assign


async def run_loop(loop: ConsumerLoop, collector: Collector, count: int, timeout_s: float = 30) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await collector.wait_for(count, timeout_s)
    finally:
        stop.set()
        await task


def test_partition_for_key_matches_the_producer_default() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    for key in ["CP-001", "CP-002", "driver-alice", "driver-bob", "x" * 60]:
        for n in (1, 3, 8, 16):
            assert partition_for_key(key, n) == partitioner(key.encode(), list(range(n)), list(range(n)))


async def test_ensure_topics_is_idempotent_and_concurrent(kafka_broker) -> None:
    results = await asyncio.gather(*(ensure_topics(kafka_broker.bootstrap) for _ in range(5)))
    assert all(set(TOPICS.all()) <= set(r) for r in results)
    assert len({tuple(sorted(r.items())) for r in results}) == 1


async def test_keyed_messages_arrive_in_order_on_the_keys_partition(kafka_broker) -> None:
    bootstrap = kafka_broker.bootstrap
    counts = await ensure_topics(bootstrap)
    producer = new_producer(bootstrap)
    await producer.start()
    try:
        keys = ["CP-101", "CP-102", "CP-103"]
        for i in range(60):
            for key in keys:
                metadata = await producer.send_and_wait(
                    TOPICS.cp_events, f"{key}:{i}".encode(), key=key.encode()
                )
                assert metadata.partition == key_partition(counts, TOPICS.cp_events, key).partition
    finally:
        await producer.stop()
    for key in keys:
        collector = Collector(key)
        loop = ConsumerLoop(
            bootstrap,
            f"order-{key}",
            one_partition(bootstrap, TOPICS.cp_events, key),
            collector.handle,
        )
        await run_loop(loop, collector, 60)
        assert collector.values[:60] == [f"{key}:{i}".encode() for i in range(60)]


async def test_a_restarted_consumer_resumes_at_its_committed_offset(kafka_broker) -> None:
    bootstrap = kafka_broker.bootstrap
    await ensure_topics(bootstrap)
    producer = new_producer(bootstrap)
    await producer.start()
    key = "driver-resume"
    try:
        for i in range(5):
            await producer.send_and_wait(TOPICS.driver_updates, f"first-{i}".encode(), key=key.encode())
        first = Collector(key)
        loop = ConsumerLoop(
            bootstrap,
            "resume-group",
            one_partition(bootstrap, TOPICS.driver_updates, key),
            first.handle,
        )
        await run_loop(loop, first, 5)
        assert first.values == [f"first-{i}".encode() for i in range(5)]

        for i in range(3):
            await producer.send_and_wait(TOPICS.driver_updates, f"second-{i}".encode(), key=key.encode())
        second = Collector(key)
        loop = ConsumerLoop(
            bootstrap,
            "resume-group",
            one_partition(bootstrap, TOPICS.driver_updates, key),
            second.handle,
        )
        await run_loop(loop, second, 3)
        assert second.values == [f"second-{i}".encode() for i in range(3)]
    finally:
        await producer.stop()


async def test_a_new_group_that_starts_at_the_end_skips_history_but_misses_nothing_after(
    kafka_broker,
) -> None:
    bootstrap = kafka_broker.bootstrap
    await ensure_topics(bootstrap)
    producer = new_producer(bootstrap)
    await producer.start()
    key = "driver-fresh"
    try:
        await producer.send_and_wait(TOPICS.driver_updates, b"old", key=key.encode())
        collector = Collector(key)
        loop = ConsumerLoop(
            bootstrap,
            "fresh-group",
            one_partition(bootstrap, TOPICS.driver_updates, key),
            collector.handle,
            new_group_starts_at_end=True,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        async with asyncio.timeout(30):
            await loop.ready.wait()
        # The starting position was committed: even a crash now would resume here.
        await producer.send_and_wait(TOPICS.driver_updates, b"new", key=key.encode())
        await collector.wait_for(1, 30)
        stop.set()
        await task
        assert collector.values == [b"new"]
    finally:
        await producer.stop()


async def test_relay_and_consumer_survive_a_broker_crash_without_losing_a_message(tmp_path) -> None:
    """SIGKILL the broker while the relay publishes and a consumer reads; restart it; every
    acknowledged message arrives, in order per key."""
    port, controller = free_ports(2)
    broker = LocalBroker(data_dir=tmp_path / "kafka", port=port, controller_port=controller)
    broker.start()
    try:
        bootstrap = broker.bootstrap
        counts = await ensure_topics(bootstrap)
        outbox = ListOutbox()
        relay = OutboxRelay(outbox, bootstrap)
        keys = ["CP-201", "CP-202"]
        collector = Collector()

        async def assign(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
            return all_partitions(counts, TOPICS.cp_events)

        loop = ConsumerLoop(bootstrap, "crash-group", assign, collector.handle)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(loop.run(stop))]
        total = 0
        for i in range(40):
            for key in keys:
                outbox.add(TOPICS.cp_events, key, f"{key}:{i}".encode())
                total += 1
            relay.wake()
            await asyncio.sleep(0.05)
            if i == 15:
                broker.kill(signal.SIGKILL)
            if i == 25:
                await asyncio.to_thread(broker.start)
        await collector.wait_for(total, 90)
        # Every row acknowledged by the broker is deleted from the outbox.
        async with asyncio.timeout(30):
            while outbox.rows:  # noqa: ASYNC110 - the in-memory outbox has no event to await
                await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
        for key in keys:
            mine = [v for v in collector.values if v.startswith(key.encode())]
            # At least once across a crash: a duplicate may appear, a loss or reordering may not.
            deduplicated = list(dict.fromkeys(mine))
            assert deduplicated == [f"{key}:{i}".encode() for i in range(40)]
    finally:
        broker.stop()
