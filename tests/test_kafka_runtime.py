"""The shared Kafka runtime against the real broker: order, resume, dead letters, a handler that
cannot record, and surviving a broker crash."""

from __future__ import annotations

import asyncio
import signal
import uuid
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaConsumer

from evcharge.devtools.kafka import LocalBroker
from evcharge.errors import ProtocolError, StorageFull
from evcharge.protocol.topics import TOPICS, Topic
from evcharge.runtime import outbox as outbox_module
from evcharge.runtime.inbox import Delivery, Inbox, Subscription
from evcharge.runtime.kafka import ensure_topics, key_partition, new_producer, partition_for_key
from evcharge.runtime.outbox import OutboxRelay, OutboxRow, OutboxStats
from evcharge.runtime.ports import free_ports
from evcharge.runtime.retry import RetryPolicy, is_retriable

pytestmark = pytest.mark.kafka
FAST = RetryPolicy(initial_delay_s=0.05, max_delay_s=0.2)


class Raw:
    """Bytes as they are; b"garbage" is refused, as an undecodable record would be."""

    def decode(self, data: bytes) -> bytes:
        if data == b"garbage":
            raise ProtocolError("garbage is not a message")
        return data


RAW = {topic.value: Raw() for topic in Topic}


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

    async def outbox_stats(self) -> OutboxStats:
        return OutboxStats(len(self.rows), None)


class Collector:
    def __init__(self) -> None:
        self.values: list[bytes] = []
        self.dead: list[tuple[bytes, str]] = []
        self.changed = asyncio.Event()

    async def handle(self, deliveries: list[Delivery[bytes]]) -> None:
        self.values += [d.message for d in deliveries]
        self.changed.set()

    async def dead_letter(self, record, reason: str) -> None:
        self.dead.append((record.value, reason))
        self.changed.set()

    async def wait_for(self, count: int, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.values) + len(self.dead) < count:
                self.changed.clear()
                await self.changed.wait()


def inbox(bootstrap: str, group: str, collector: Collector, *subscriptions: Subscription, **kw) -> Inbox:
    return Inbox(
        bootstrap=bootstrap,
        group_id=group,
        subscriptions=list(subscriptions),
        codecs=RAW,
        topics=TOPICS,
        handle=kw.pop("handle", collector.handle),
        dead_letter=collector.dead_letter,
        partitions=8,
        policy=FAST,
        **kw,
    )


async def run_until(box: Inbox, collector: Collector, count: int, timeout_s: float = 30) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(box.run(stop))
    try:
        await collector.wait_for(count, timeout_s)
    finally:
        stop.set()
        await task


async def produce(bootstrap: str, topic: str, key: str, values: list[bytes]) -> None:
    producer = new_producer(bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


def test_partition_for_key_matches_the_producer_default() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    for key in ["CP-001", "CP-002", "driver-alice", "driver-bob", "x" * 60]:
        for n in (1, 3, 8, 16):
            assert partition_for_key(key, n) == partitioner(key.encode(), list(range(n)), list(range(n)))


async def test_ensure_topics_is_idempotent_concurrent_and_stamps_requests_at_the_broker(kafka_broker) -> None:
    results = await asyncio.gather(*(ensure_topics(kafka_broker.bootstrap, TOPICS) for _ in range(5)))
    assert all({t.name for t in TOPICS} <= set(r) for r in results)
    assert len({tuple(sorted(r.items())) for r in results}) == 1
    await produce(kafka_broker.bootstrap, Topic.DRIVER_REQUESTS, "driver-stamp", [b"hello"])
    collector = Collector()
    box = inbox(
        kafka_broker.bootstrap, "stamp-group", collector, Subscription(Topic.DRIVER_REQUESTS, "driver-stamp")
    )
    stamped: list[int] = []

    async def handle(deliveries: list[Delivery[bytes]]) -> None:
        stamped.extend(d.record.timestamp_type for d in deliveries)
        await collector.handle(deliveries)

    box._handle = handle
    await run_until(box, collector, 1)
    assert stamped == [1], "LogAppendTime: the broker's clock, not the driver's"


async def test_keyed_messages_arrive_in_order_and_only_the_keys_own(kafka_broker) -> None:
    bootstrap = kafka_broker.bootstrap
    counts = await ensure_topics(bootstrap, TOPICS)
    keys = ["CP-101", "CP-102", "CP-103"]
    producer = new_producer(bootstrap)
    await producer.start()
    try:
        for i in range(60):
            for key in keys:
                metadata = await producer.send_and_wait(
                    Topic.CP_EVENTS, f"{key}:{i}".encode(), key=key.encode()
                )
                assert metadata.partition == key_partition(counts, Topic.CP_EVENTS, key).partition
    finally:
        await producer.stop()
    for key in keys:
        collector = Collector()
        await run_until(
            inbox(bootstrap, f"order-{key}", collector, Subscription(Topic.CP_EVENTS, key)), collector, 60
        )
        assert collector.values[:60] == [f"{key}:{i}".encode() for i in range(60)]


async def test_a_restarted_inbox_resumes_at_its_committed_offset(kafka_broker) -> None:
    bootstrap, key = kafka_broker.bootstrap, "driver-resume"
    await produce(bootstrap, Topic.DRIVER_UPDATES, key, [f"first-{i}".encode() for i in range(5)])
    first = Collector()
    await run_until(
        inbox(bootstrap, "resume-group", first, Subscription(Topic.DRIVER_UPDATES, key)), first, 5
    )
    assert first.values == [f"first-{i}".encode() for i in range(5)]
    await produce(bootstrap, Topic.DRIVER_UPDATES, key, [f"second-{i}".encode() for i in range(3)])
    second = Collector()
    await run_until(
        inbox(bootstrap, "resume-group", second, Subscription(Topic.DRIVER_UPDATES, key)), second, 3
    )
    assert second.values == [f"second-{i}".encode() for i in range(3)]


async def test_a_new_group_that_starts_at_the_end_skips_history_but_misses_nothing_after(
    kafka_broker,
) -> None:
    bootstrap, key = kafka_broker.bootstrap, "driver-fresh"
    await produce(bootstrap, Topic.DRIVER_UPDATES, key, [b"old"])
    collector = Collector()
    box = inbox(
        bootstrap,
        "fresh-group",
        collector,
        Subscription(Topic.DRIVER_UPDATES, key),
        new_group_starts_at_end=True,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(box.run(stop))
    async with asyncio.timeout(30):
        await box.ready.wait()
    # The starting position was committed: even a crash now would resume here.
    await produce(bootstrap, Topic.DRIVER_UPDATES, key, [b"new"])
    await collector.wait_for(1, 30)
    stop.set()
    await task
    assert collector.values == [b"new"]


async def test_an_undecodable_record_is_set_aside_and_the_rest_goes_on(kafka_broker) -> None:
    bootstrap, key = kafka_broker.bootstrap, "CP-dead-letter"
    await produce(bootstrap, Topic.CP_EVENTS, key, [b"one", b"garbage", b"two"])
    collector = Collector()
    await run_until(
        inbox(bootstrap, "dead-group", collector, Subscription(Topic.CP_EVENTS, key)), collector, 3
    )
    assert collector.values == [b"one", b"two"]
    assert collector.dead == [(b"garbage", "garbage is not a message")]


async def test_a_handler_that_cannot_record_gets_the_same_records_again_until_it_can(kafka_broker) -> None:
    bootstrap, key = kafka_broker.bootstrap, "CP-disk-full"
    await produce(bootstrap, Topic.CP_EVENTS, key, [b"a", b"b"])
    collector = Collector()
    attempts: list[list[bytes]] = []

    async def full_twice(deliveries: list[Delivery[bytes]]) -> None:
        attempts.append([d.message for d in deliveries])
        if len(attempts) <= 2:
            raise StorageFull("the disk is full")
        await collector.handle(deliveries)

    box = inbox(bootstrap, "full-group", collector, Subscription(Topic.CP_EVENTS, key), handle=full_twice)
    await run_until(box, collector, 2)
    assert collector.values == [b"a", b"b"]
    assert attempts[0] == attempts[1] == attempts[2] == [b"a", b"b"], (
        "nothing skipped, nothing committed meanwhile"
    )


async def test_relay_and_inbox_survive_a_broker_crash_without_losing_a_message(tmp_path) -> None:
    """SIGKILL the broker while the relay publishes and an inbox reads; restart it; every
    acknowledged message arrives, in order per key."""
    port, controller = free_ports(2)
    broker = LocalBroker(data_dir=tmp_path / "kafka", port=port, controller_port=controller)
    broker.start()
    try:
        bootstrap = broker.bootstrap
        await ensure_topics(bootstrap, TOPICS)
        outbox = ListOutbox()
        relay = OutboxRelay(outbox, bootstrap, policy=FAST)
        keys = ["CP-201", "CP-202"]
        collector = Collector()
        box = inbox(bootstrap, "crash-group", collector, Subscription(Topic.CP_EVENTS))
        stop = asyncio.Event()
        tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(box.run(stop))]
        total = 0
        for i in range(40):
            for key in keys:
                outbox.add(Topic.CP_EVENTS, key, f"{key}:{i}".encode())
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
            assert list(dict.fromkeys(mine)) == [f"{key}:{i}".encode() for i in range(40)]
    finally:
        broker.stop()


# The two kinds of relay: plain idempotent (engines, monitors), transactional (central).
RELAY_KINDS = pytest.mark.parametrize("transactional", [False, True], ids=["idempotent", "transactional"])


async def system_topics(bootstrap: str) -> dict[str, int]:
    async with asyncio.timeout(30):
        while True:
            try:
                return await ensure_topics(bootstrap, TOPICS)
            except Exception as exc:
                # Created a moment ago, or the broker a test before froze still coming back.
                if not is_retriable(exc):
                    raise
                await asyncio.sleep(0.1)


async def drained(outbox: ListOutbox, what: str) -> None:
    try:
        async with asyncio.timeout(30):
            while outbox.rows:  # noqa: ASYNC110 - the in-memory outbox has no event to await
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what} was not acknowledged within 30 s") from None


async def said_down(relay: OutboxRelay) -> None:
    async with asyncio.timeout(30):
        while relay.kafka_up:  # noqa: ASYNC110 - what the relay says of its link is a flag
            await asyncio.sleep(0.05)


async def no_task_left() -> None:
    """Every task the relay's producers started is over (given a moment to finish closing): a
    producer whose stop() was cut short would retry, and publish again, for the rest of the process."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=5)
    assert [t for t in others if not t.done()] == []


async def committed_values(bootstrap: str, counts: dict[str, int], key: str) -> list[bytes]:
    """The values keyed `key` on its partition, as every role reads them (read_committed)."""
    tp = key_partition(counts, Topic.CP_EVENTS, key)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        values = []
        async with asyncio.timeout(30):
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500)
                values += [r.value for r in batch.get(tp, []) if r.key == key.encode()]
    finally:
        await consumer.stop()
    return values


def new_relay(outbox: ListOutbox, bootstrap: str, transactional_id: str | None) -> OutboxRelay:
    return OutboxRelay(outbox, bootstrap, policy=FAST, transactional_id=transactional_id)


@RELAY_KINDS
async def test_a_publish_kafka_is_slow_to_acknowledge_is_published_once_after_one_calm_line(
    kafka_broker, monkeypatch, transactional: bool
) -> None:
    """The broker frozen for longer than the relay waits: the relay says so once, and the row is
    published once when the broker is back. The idempotent relay waits with the producer it has,
    which retries by itself and never writes a retry twice. The transactional one gives its
    transaction up before the coordinator would abort it (which would look like a fence): its
    next producer, with the same id, aborts it and publishes the row in one of its own, and the
    relay is not fenced. No producer is left running when the relay stops."""
    monkeypatch.setattr(outbox_module, "PUBLISH_TIMEOUT_S", 1.0)
    monkeypatch.setattr(outbox_module, "TRANSACTION_WAIT_S", 1.0)
    bootstrap = kafka_broker.bootstrap
    counts = await system_topics(bootstrap)
    key = f"CP-{uuid.uuid4().hex[:6]}"
    outbox = ListOutbox()
    relay = new_relay(outbox, bootstrap, f"test-relay-{key}" if transactional else None)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))

    outbox.add(Topic.CP_EVENTS, key, b"before")
    relay.wake()
    await drained(outbox, "the first row")
    kafka_broker.kill(signal.SIGSTOP)
    try:
        outbox.add(Topic.CP_EVENTS, key, b"while frozen")
        relay.wake()
        await said_down(relay)
    finally:
        kafka_broker.kill(signal.SIGCONT)
    await drained(outbox, "the row published while the broker was frozen")
    assert relay.kafka_up
    stop.set()
    await running  # a fenced relay would raise Fenced here
    await no_task_left()
    assert await committed_values(bootstrap, counts, key) == [b"before", b"while frozen"]


@RELAY_KINDS
async def test_a_relay_stopped_while_kafka_is_away_stops_and_leaves_its_rows_to_the_next(
    kafka_broker, monkeypatch, caplog, transactional: bool
) -> None:
    """A stop while the broker is frozen and a batch unacknowledged ends the relay at once (no
    flush waiting for ever, no producer left retrying); the rows stay in the outbox, and the next
    relay (the same transactional id: the next start) publishes them."""
    monkeypatch.setattr(outbox_module, "PUBLISH_TIMEOUT_S", 1.0)
    bootstrap = kafka_broker.bootstrap
    counts = await system_topics(bootstrap)
    key = f"CP-{uuid.uuid4().hex[:6]}"
    transactional_id = f"test-relay-{key}" if transactional else None
    outbox = ListOutbox()
    relay = new_relay(outbox, bootstrap, transactional_id)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    outbox.add(Topic.CP_EVENTS, key, b"first")
    relay.wake()
    await drained(outbox, "the first row")
    kafka_broker.kill(signal.SIGSTOP)
    try:
        outbox.add(Topic.CP_EVENTS, key, b"unacknowledged")
        relay.wake()
        await said_down(relay)
        stop.set()
        try:
            async with asyncio.timeout(30):  # the bound of a relay that hangs, not a goal
                await running
        except TimeoutError:
            raise AssertionError("the relay did not stop while Kafka was away") from None
        await no_task_left()
        assert [r.payload for r in outbox.rows] == [b"unacknowledged"]
        # Nothing failed unseen while the producer was dropped (asyncio reports what nobody handled).
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    finally:
        kafka_broker.kill(signal.SIGCONT)

    stop = asyncio.Event()
    relay = new_relay(outbox, bootstrap, transactional_id)
    running = asyncio.create_task(relay.run(stop))
    await drained(outbox, "the row left by the stopped relay")
    stop.set()
    await running
    values = await committed_values(bootstrap, counts, key)
    if transactional:
        # What the stopped relay sent was in a transaction its successor aborted.
        assert values == [b"first", b"unacknowledged"]
    else:
        # The frozen broker may have taken the first send after all: at least once, in order.
        assert list(dict.fromkeys(values)) == [b"first", b"unacknowledged"]
