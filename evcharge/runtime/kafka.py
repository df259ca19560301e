"""Kafka clients configured the way every role needs them, and topics created as specified.

Producers: acks=all with idempotence, so a retried send is never written twice
and keyed messages stay in order. Consumers: manual partition assignment with a
stable group id for committed offsets. Manual assignment instead of group
membership means a restarted process resumes at once: it does not wait for the
broker to expire the dead member of its group. Which topics exist is the
caller's business (`TopicSpec`s); this module knows none by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from evcharge.runtime.kafka_access import Kafka, access

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 8
REQUEST_TIMEOUT_MS = 5000
# With three or more brokers a topic is written to three of them and a write is
# acknowledged by two: one broker can die with nothing acknowledged lost.
REPLICATED = {"min.insync.replicas": "2", "unclean.leader.election.enable": "false"}


class TopicSpec(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def config(self) -> Mapping[str, str]: ...


def partition_for_key(key: str, partitions: int) -> int:
    """The partition the default producer partitioner writes `key` to (Kafka's murmur2)."""
    return _index(key.encode(), partitions)


def _index(key: bytes, partitions: int) -> int:
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


class KeyPartitioner:
    """Kafka's default partitioner (murmur2 of the key, as the Java client's), remembered per key.

    The keys are the CP and driver ids, each sent over and over, and aiokafka's murmur2 is
    pure Python: several microseconds a send, a twentieth of central's CPU when it is busy.
    A record without a key goes where the default partitioner would put it (anywhere).
    """

    LIMIT = 200_000  # keys remembered at most; then it starts afresh (a dict, not an LRU: cheap)

    def __init__(self) -> None:
        self._known: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        count = len(all_partitions)
        index = self._known.get((key, count))
        if index is None:
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            index = self._known[(key, count)] = _index(key, count)
        return all_partitions[index]


async def ensure_topics(
    kafka: Kafka, specs: Sequence[TopicSpec], partitions: int = DEFAULT_PARTITIONS
) -> dict[str, int]:
    """Create every topic of `specs` that does not exist yet; safe to call from many processes.

    Returns each topic's partition count, which consumers need to find the
    partition a key maps to. A topic that exists with other settings than its
    spec asks for is altered to them.
    """
    admin = new_admin(kafka)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = 3 if brokers >= 3 else 1
        wanted = {spec.name: _configs(spec, replication) for spec in specs}
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(n, partitions, replication, topic_configs=wanted[n]) for n in missing]
                )
                log.info(
                    "created topics %s: %d partitions, %d replicas",
                    ", ".join(missing),
                    partitions,
                    replication,
                )
            except TopicAlreadyExistsError:
                pass  # another process created them first: that is what we wanted
        await _align_configs(admin, {n: c for n, c in wanted.items() if n not in missing and c})
        described = await admin.describe_topics(list(wanted))
    finally:
        await admin.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}
    not_ready = [name for name in wanted if not counts.get(name)]
    if not_ready:
        raise LookupError(f"topics not ready yet: {', '.join(not_ready)}")
    return counts


def _configs(spec: TopicSpec, replication: int) -> dict[str, str]:
    return {**spec.config, **(REPLICATED if replication >= 3 else {})}


async def _align_configs(admin: AIOKafkaAdminClient, wanted: dict[str, dict[str, str]]) -> None:
    if not wanted:
        return
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, name, dict.fromkeys(c)) for name, c in wanted.items()
    ]
    current: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for _code, _msg, _type, name, entries in response.resources:
            current[name] = {entry[0]: entry[1] for entry in entries}
    stale = {
        name: c for name, c in wanted.items() if any(current.get(name, {}).get(k) != v for k, v in c.items())
    }
    if stale:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, n, c) for n, c in stale.items()])
        log.info(
            "set %s on topics %s", ", ".join(sorted({k for c in stale.values() for k in c})), ", ".join(stale)
        )


def new_admin(kafka: Kafka) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**access(kafka).client_options(), request_timeout_ms=REQUEST_TIMEOUT_MS)


def new_producer(kafka: Kafka, **extra: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **access(kafka).client_options(),
        acks="all",
        enable_idempotence=True,
        # Latency matters more than batching here: one hop must not wait for a batch to fill.
        linger_ms=0,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        retry_backoff_ms=100,
        metadata_max_age_ms=30000,
        partitioner=KeyPartitioner(),
        **extra,
    )


async def close_producer(producer: AIOKafkaProducer, *, flush: bool, timeout_s: float) -> None:
    """Stop `producer`; with `flush`, once what it holds is acknowledged, if that takes no more
    than `timeout_s`. Otherwise what it holds is dropped: whoever handed it over still has it
    (an outbox keeps its rows until they are acknowledged, a driver its pending request).

    aiokafka's stop() waits until every pending send is acknowledged, for ever while the
    brokers are away (aio-libs/aiokafka#1101), and a stop() cut short leaves its sender
    running, still retrying and publishing, for the rest of the process. aiokafka has no
    public call to drop what a producer holds (Java's close(Duration.ZERO)), hence its sender
    and client here. The dropped sends' futures are left unresolved rather than failed:
    failing a batch that a request in flight already put back breaks aiokafka's bookkeeping,
    and nobody waits for them any more.
    """
    if flush:
        try:
            async with asyncio.timeout(timeout_s):
                await producer.flush()  # cut short, it leaves nothing behind; stop() would
                await producer.stop()
            return
        except Exception:  # not acknowledged in time, or failed: dropped below
            pass
    producer._closed = True  # closed for stop() (a no-op now) and for the garbage collector
    # Cancelled, the sender waits for its requests in flight (request_timeout_ms each); one that
    # waits for a coordinator that is away waits for ever, and is cancelled when the time is up.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(REQUEST_TIMEOUT_MS / 1000 + timeout_s):
            await producer._sender.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_s):
            await producer.client.close()


def new_consumer(kafka: Kafka, group_id: str | None, **extra: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **access(kafka).client_options(),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # aiokafka's default waits up to 500 ms for a fetch to fill; a hop must not.
        fetch_max_wait_ms=50,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        retry_backoff_ms=100,
        metadata_max_age_ms=30000,
        # Central publishes in transactions: what a fenced (former) leader wrote is aborted,
        # and read_committed never hands it over.
        isolation_level="read_committed",
        **extra,
    )


def all_partitions(counts: Mapping[str, int], topics: Iterable[str]) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for topic in topics for p in range(counts[topic])]


def key_partition(counts: Mapping[str, int], topic: str, key: str) -> TopicPartition:
    """The one partition of `topic` that holds the messages keyed `key`."""
    return TopicPartition(topic, partition_for_key(key, counts[topic]))
