"""Kafka clients configured the way every role needs them.

Producers: acks=all with idempotence, so a retried send is never written twice
and keyed messages stay in order. Consumers: manual partition assignment with a
stable group id for committed offsets. Manual assignment instead of group
membership means a restarted process resumes at once: it does not wait for the
broker to expire the dead member of its group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topics:
    driver_requests: str = "evcharge.driver.requests"
    driver_updates: str = "evcharge.driver.updates"
    cp_commands: str = "evcharge.cp.commands"
    cp_events: str = "evcharge.cp.events"
    dead_letters: str = "evcharge.deadletter"

    def all(self) -> list[str]:
        return [
            self.driver_requests,
            self.driver_updates,
            self.cp_commands,
            self.cp_events,
            self.dead_letters,
        ]


TOPICS = Topics()
DEFAULT_PARTITIONS = 8
REQUEST_TIMEOUT_MS = 5000


def partition_for_key(key: str, partitions: int) -> int:
    """The partition the default producer partitioner writes `key` to (Kafka's murmur2)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


async def ensure_topics(bootstrap: str, partitions: int = DEFAULT_PARTITIONS) -> dict[str, int]:
    """Create every evcharge topic that does not exist yet; safe to call from many processes.

    Returns each topic's partition count, which consumers need to find the
    partition a key maps to.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=REQUEST_TIMEOUT_MS)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in TOPICS.all() if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
                log.info("created topics %s with %d partitions", ", ".join(missing), partitions)
            except TopicAlreadyExistsError:
                pass  # another process created them first: that is what we wanted
        described = await admin.describe_topics(TOPICS.all())
    finally:
        await admin.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}
    not_ready = [t for t in TOPICS.all() if not counts.get(t)]
    if not_ready:
        raise LookupError(f"topics not ready yet: {', '.join(not_ready)}")
    return counts


def new_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        # Latency matters more than batching here: one hop must not wait for a batch to fill.
        linger_ms=0,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        retry_backoff_ms=100,
        metadata_max_age_ms=30000,
    )


def new_consumer(bootstrap: str, group_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # aiokafka's default waits up to 500 ms for a fetch to fill; a hop must not.
        fetch_max_wait_ms=50,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        retry_backoff_ms=100,
        metadata_max_age_ms=30000,
        isolation_level="read_uncommitted",
    )


def all_partitions(counts: dict[str, int], topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(counts[topic])]


def key_partition(counts: dict[str, int], topic: str, key: str) -> TopicPartition:
    """The one partition of `topic` that holds the messages keyed `key`."""
    return TopicPartition(topic, partition_for_key(key, counts[topic]))
