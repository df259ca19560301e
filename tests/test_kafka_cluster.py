"""A real 3-node KRaft cluster under faults, seen by plain aiokafka clients.

Continuous keyed produce (acks=all, idempotent) and consume while brokers are
SIGKILLed, shut down with SIGTERM, or two of three are down at once: every
acknowledged message is consumed, in order per key, none twice. The measured
figures (start, leader failover, produce latency blip) are printed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from evcharge.devtools.kafka import ClusterNode, LocalCluster
from evcharge.devtools.kafka.cluster import metadata_brokers
from evcharge.errors import BrokerError
from evcharge.runtime.ports import port_free

pytestmark = pytest.mark.kafka

CLI = "from evcharge.devtools.kafka.cli import app; app()"
TOPIC = "readings"
PARTITIONS = 6
KEYS = [f"cp-{i:02d}" for i in range(10)]
SEND_INTERVAL_S = 0.01  # 100 messages a second, spread over every key


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVCHARGE_KAFKA_")}
    return subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=180, env=env, check=False
    )


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """A base port with `count` consecutive ports free now, as `--nodes N --port BASE` needs."""
    for base in range(30000 + (os.getpid() % 200) * 100, 60000, 37):
        if all(port_free(host, base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no block of {count} free ports")


def jvms_of(data_dir: Path) -> list[int]:
    """Pids of every live process whose command line names `data_dir`: the cluster's JVMs."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "kafka.Kafka" in cmdline and str(data_dir) in cmdline:
            pids.append(int(entry.name))
    return pids


class Figures:
    """Measured figures, printed once the module is done (they are part of the report)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    found = Figures()
    yield found
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is None or not found.lines:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        for line in found.lines:
            reporter.write_line(f"[kafka cluster] {line}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, figures: Figures) -> Iterator[LocalCluster]:
    base = free_port_block(6)
    c = LocalCluster(tmp_path_factory.mktemp("cluster"), nodes=3, base_port=base)
    try:
        result = c.start(timeout_s=120)
        figures.add(f"cluster start (3 nodes, storage formatted): {result.start_s:.1f} s")
        asyncio.run(create_topic(c.bootstrap))
        yield c
    finally:
        c.stop()


async def create_topic(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=3)])
    finally:
        await admin.close()


async def topic_partitions(node: ClusterNode, topic: str = TOPIC) -> dict[int, tuple[int, list[int]]] | None:
    """partition → (leader, isr) as `node` alone sees it; None if it does not answer."""
    conn = None
    try:
        async with asyncio.timeout(3):
            conn = await create_conn(node.host, node.port, request_timeout_ms=3000)
            response = await conn.send(MetadataRequest([topic]))
    except (KafkaError, OSError, TimeoutError):
        return None
    finally:
        if conn is not None:
            conn.close()
    for entry in response.to_object()["topics"]:
        if entry["topic"] == topic and entry["error_code"] == 0:
            return {p["partition"]: (p["leader"], sorted(p["isr"])) for p in entry["partitions"]}
    return None


async def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> object:
    """Poll an async-unfriendly condition (another process's state) until true, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def registered(cluster: LocalCluster) -> set[int] | None:
    """The registered brokers as the first live node lists them (without blocking the loop)."""
    for node in cluster.members:
        if node._live_pid() is not None:
            brokers = await metadata_brokers(node.host, node.port, 3)
            if brokers is not None:
                return brokers
    return None


async def healthy(cluster: LocalCluster) -> bool:
    """Every node registered and every partition of the topic fully replicated."""
    if await registered(cluster) != {1, 2, 3}:
        return False
    for node in cluster.members:
        parts = await topic_partitions(node)
        if parts is None or len(parts) != PARTITIONS:
            return False
        if any(isr != [1, 2, 3] for _, isr in parts.values()):
            return False
    return True


def heal(cluster: LocalCluster) -> None:
    """Between tests: whatever a failed test left down is started again, fully replicated."""
    for node in cluster.members:
        if node.node_status().paused:
            node.kill(signal.SIGCONT)
    cluster.start(timeout_s=120)
    asyncio.run(wait_for(lambda: healthy(cluster), 60, "a healthy cluster"))


@pytest.fixture
def healthy_cluster(cluster: LocalCluster) -> Iterator[LocalCluster]:
    heal(cluster)
    yield cluster
    heal(cluster)


@dataclass
class Sent:
    key: str
    seq: int
    sent_at: float = 0.0
    acked_at: float | None = None
    error: BaseException | None = None


@dataclass
class Traffic:
    """Keyed messages "key:seq" produced at a steady rate, and everything consumed back."""

    bootstrap: str
    sent: list[Sent] = field(default_factory=list)
    consumed: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    stop_sending: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def acked(self) -> list[Sent]:
        return [s for s in self.sent if s.acked_at is not None]

    @property
    def failed(self) -> list[Sent]:
        return [s for s in self.sent if s.error is not None]

    def acked_count(self) -> int:
        return sum(s.acked_at is not None for s in self.sent)

    async def produce(self, producer: AIOKafkaProducer) -> None:
        seqs = dict.fromkeys(KEYS, 0)
        i = 0
        while not self.stop_sending.is_set():
            key = KEYS[i % len(KEYS)]
            i += 1
            record = Sent(key, seqs[key], sent_at=time.monotonic())
            seqs[key] += 1
            self.sent.append(record)
            future = await producer.send(TOPIC, f"{key}:{record.seq}".encode(), key=key.encode())
            future.add_done_callback(lambda f, r=record: self._settled(f, r))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_sending.wait(), SEND_INTERVAL_S)

    @staticmethod
    def _settled(future: asyncio.Future[object], record: Sent) -> None:
        if future.cancelled():
            record.error = asyncio.CancelledError()
        elif future.exception() is not None:
            record.error = future.exception()
        else:
            record.acked_at = time.monotonic()

    async def consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for msg in records:
                    key, seq = msg.value.decode().split(":")
                    self.consumed[key].append(int(seq))

    def all_acked_consumed(self) -> bool:
        seen = {key: set(seqs) for key, seqs in self.consumed.items()}
        return all(s.seq in seen.get(s.key, ()) for s in self.acked)

    def check(self, *, allow_failures: bool = False) -> None:
        """Every acknowledged message consumed, in order per key, none twice."""
        if not allow_failures:
            assert not self.failed, f"{len(self.failed)} sends failed, first: {self.failed[0].error!r}"
        for key, seqs in self.consumed.items():
            assert len(seqs) == len(set(seqs)), f"{key}: consumed twice: {sorted(seqs)[:20]}"
            assert seqs == sorted(seqs), f"{key}: out of order"
        seen = {key: set(seqs) for key, seqs in self.consumed.items()}
        lost = [(s.key, s.seq) for s in self.acked if s.seq not in seen.get(s.key, ())]
        assert not lost, f"{len(lost)} acknowledged messages never consumed: {lost[:10]}"

    def latencies_ms(self, since: float, until: float) -> list[float]:
        return [
            (s.acked_at - s.sent_at) * 1000
            for s in self.sent
            if s.acked_at is not None and since <= s.sent_at < until
        ]


@contextlib.asynccontextmanager
async def running_traffic(bootstrap: str) -> AsyncIterator[Traffic]:
    """Producer and consumer run for the body; afterwards every pending send is settled
    and everything acknowledged is consumed (each with a deadline) before both stop."""
    traffic = Traffic(bootstrap)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        # Sends must wait out an outage of the whole quorum rather than expire.
        request_timeout_ms=60000,
        retry_backoff_ms=50,
        metadata_max_age_ms=5000,
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        retry_backoff_ms=50,
        metadata_max_age_ms=5000,
    )
    await producer.start()
    try:
        await consumer.start()
        try:
            consumer.assign([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
            await consumer.seek_to_end()  # earlier tests' messages are theirs
            async with asyncio.TaskGroup() as tasks:
                consuming = tasks.create_task(traffic.consume(consumer))
                sending = tasks.create_task(traffic.produce(producer))
                try:
                    yield traffic
                except BaseException:
                    # The body failed: report that now, not after waiting for sends
                    # that a broken cluster may never acknowledge.
                    sending.cancel()
                    consuming.cancel()
                    raise
                traffic.stop_sending.set()
                await sending
                async with asyncio.timeout(90):
                    await producer.flush()
                await wait_for(traffic.all_acked_consumed, 60, "every acknowledged message consumed")
                consuming.cancel()
        finally:
            await consumer.stop()
    finally:
        # stop() waits for every pending send to be settled, which after a failure
        # may be never.
        async with asyncio.timeout(30):
            await producer.stop()


def test_three_nodes_start_and_status_lists_them(cluster: LocalCluster) -> None:
    status = cluster.status()
    assert [n.node_id for n in status.nodes] == [1, 2, 3]
    assert all(n.state == "up" and n.pid is not None for n in status.nodes)
    assert len({n.pid for n in status.nodes}) == 3
    assert cluster.bootstrap.count(",") == 2
    assert cluster.registered_brokers() == {1, 2, 3}
    props = cluster.node(2).properties_path.read_text()
    voters = ",".join(f"{i}@{n.host}:{n.controller_port}" for i, n in enumerate(cluster.members, start=1))
    assert f"controller.quorum.voters={voters}\n" in props
    assert "node.id=2\n" in props
    metas = {
        (n.kafka_log_dir / "meta.properties").read_text().split("cluster.id=")[1].split()[0]
        for n in cluster.members
    }
    assert metas == {cluster.cluster_id}

    cli = run_cli("status", "--data-dir", str(cluster.data_dir))
    assert cli.returncode == 0, cli.stderr
    assert "3 of 3 nodes running" in cli.stdout
    for node in status.nodes:
        assert f"{node.node_id}     {node.pid:<8} {node.address:<22} up" in cli.stdout
    assert f"bootstrap  {cluster.bootstrap}" in cli.stdout


def test_topic_has_three_replicas_and_min_isr_two(healthy_cluster: LocalCluster) -> None:
    async def scenario() -> tuple[dict[int, tuple[int, list[int]]] | None, str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=healthy_cluster.bootstrap)
        await admin.start()
        try:
            described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, TOPIC)])
        finally:
            await admin.close()
        configs = {name: value for name, value, *_ in described[0].resources[0][4]}
        return await topic_partitions(healthy_cluster.node(1)), configs["min.insync.replicas"]

    partitions, min_isr = asyncio.run(scenario())
    assert min_isr == "2"
    assert partitions is not None and len(partitions) == PARTITIONS
    assert all(isr == [1, 2, 3] for _, isr in partitions.values())
    # Leadership is spread: every node leads some partition.
    assert {leader for leader, _ in partitions.values()} == {1, 2, 3}


async def leaders(cluster: LocalCluster, exclude: int) -> dict[int, int]:
    """partition → leader, as the first live node other than `exclude` sees it."""
    for node in cluster.members:
        if node.node_id == exclude or node._live_pid() is None:
            continue
        parts = await topic_partitions(node)
        if parts is not None:
            return {p: leader for p, (leader, _) in parts.items()}
    return {}


def pick_victim(killed: list[int], controller: int | None) -> int:
    """Each node once: first one that is only a broker, then the active controller, then the last."""
    remaining = [n for n in (1, 2, 3) if n not in killed]
    if not killed:
        return next(n for n in remaining if n != controller)
    if len(killed) == 1 and controller in remaining:
        return controller
    return remaining[0]


def test_sigkill_of_any_one_broker_loses_nothing_acknowledged(
    healthy_cluster: LocalCluster, figures: Figures
) -> None:
    cluster = healthy_cluster

    async def scenario() -> None:
        async with running_traffic(cluster.bootstrap) as traffic:
            killed: list[int] = []
            for _ in range(3):
                await wait_for(lambda: healthy(cluster), 60, "a healthy cluster before the kill")
                victim = pick_victim(killed, cluster.active_controller())
                killed.append(victim)

                async def leading(victim: int = victim) -> list[int]:
                    # Right after a restart a node leads nothing until the preferred
                    # leaders are elected again (leader.imbalance.check.interval.seconds).
                    return [
                        p for p, leader in (await leaders(cluster, exclude=0)).items() if leader == victim
                    ]

                led = await wait_for(leading, 30, f"node {victim} leading a partition")
                await asyncio.sleep(1.5)  # a baseline of latencies
                led = await leading()
                was_controller = cluster.active_controller() == victim
                killed_at = time.monotonic()
                cluster.node(victim).kill(signal.SIGKILL)

                async def moved(led: list[int] = led, victim: int = victim) -> bool:
                    now = await leaders(cluster, exclude=victim)
                    return all(now.get(p, -1) not in (-1, victim) for p in led)

                await wait_for(moved, 30, f"new leaders for node {victim}'s partitions {led}")
                failover_s = time.monotonic() - killed_at
                await asyncio.sleep(2)
                base = traffic.latencies_ms(killed_at - 1.5, killed_at)
                blip = traffic.latencies_ms(killed_at, killed_at + failover_s + 1)
                role = "broker and active controller" if was_controller else "broker"
                figures.add(
                    f"SIGKILL node {victim} ({role}, led {len(led)} partitions): new leaders after "
                    f"{failover_s:.2f} s; produce latency p50 {statistics.median(base):.0f} ms before, "
                    f"max {max(blip, default=0):.0f} ms for sends in the failover"
                )
                restarted_at = time.monotonic()
                await asyncio.to_thread(cluster.node(victim).start, 60)
                rejoin_s = time.monotonic() - restarted_at
                assert victim in (await registered(cluster) or set())
                figures.add(f"  node {victim} restarted and registered again after {rejoin_s:.1f} s")
            await wait_for(lambda: healthy(cluster), 60, "every restarted broker back in every ISR")
        traffic.check()
        assert traffic.acked_count() > 1000

    asyncio.run(scenario())


def test_sigterm_controlled_shutdown_fails_no_send(healthy_cluster: LocalCluster, figures: Figures) -> None:
    cluster = healthy_cluster

    async def scenario() -> None:
        async with running_traffic(cluster.bootstrap) as traffic:
            await asyncio.sleep(1.5)
            # The active controller: its shutdown also moves the quorum's leadership.
            controller = cluster.active_controller()
            victim = controller or 1
            role = "the active controller" if controller is not None else "a broker"
            stopped_at = time.monotonic()
            await asyncio.to_thread(cluster.node(victim).stop, 30)
            stop_s = time.monotonic() - stopped_at
            assert not cluster.node(victim).status().running
            await asyncio.sleep(2)
            base = traffic.latencies_ms(stopped_at - 1.5, stopped_at)
            during = traffic.latencies_ms(stopped_at, stopped_at + stop_s + 1)
            figures.add(
                f"SIGTERM node {victim} (controlled shutdown, {role}): gone after {stop_s:.1f} s; "
                f"produce latency p50 {statistics.median(base):.0f} ms before, "
                f"max {max(during, default=0):.0f} ms meanwhile"
            )
            await asyncio.to_thread(cluster.node(victim).start, 60)
        traffic.check()  # and no send failed

    asyncio.run(scenario())


def test_two_of_three_down_blocks_sends_until_one_returns(
    healthy_cluster: LocalCluster, figures: Figures
) -> None:
    cluster = healthy_cluster

    async def scenario() -> None:
        async with running_traffic(cluster.bootstrap) as traffic:
            await asyncio.sleep(1.5)
            down_at = time.monotonic()
            cluster.node(2).kill(signal.SIGKILL)
            cluster.node(3).kill(signal.SIGKILL)
            try:
                # Sends already on their way may still be settled; after that nothing is.
                await asyncio.sleep(1.5)
                acked_before = traffic.acked_count()
                await asyncio.sleep(5)
                assert traffic.acked_count() == acked_before, "a send was acknowledged with 2 of 3 nodes down"
                # The producer waits: its futures stay pending. When a partition's only
                # queued batch is one put back for a retry, aiokafka's send() waits too
                # (it appends to the last batch only, and that one is closed) until the
                # retry goes out, so how many sends it took meanwhile varies.
                assert not traffic.failed, "a send failed instead of waiting"
            finally:
                # Also when an assertion failed: the traffic can then still be settled.
                returned_at = time.monotonic()
                backlog = [s for s in traffic.sent if s.acked_at is None]
                await asyncio.to_thread(cluster.node(2).start, 60)
            await wait_for(lambda: all(s.acked_at for s in backlog), 60, "the backlog acknowledged")
            drained_s = max(s.acked_at or 0 for s in backlog) - returned_at
            figures.add(
                f"SIGKILL nodes 2 and 3: no send acknowledged, none failed in {returned_at - down_at:.1f} s; "
                f"node 2 restarted, the {len(backlog)} waiting sends acknowledged {drained_s:.1f} s later"
            )
        traffic.check()

    asyncio.run(scenario())


def test_interrupted_start_leaves_no_jvm(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "half", nodes=3, base_port=free_port_block(6))

    def interrupt_at_third_node(message: str) -> None:
        if message == "node 3: Starting broker…":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        c.start(timeout_s=60, progress=interrupt_at_third_node)
    assert jvms_of(c.data_dir) == []
    assert all(not n.running for n in c.status().nodes)

    with pytest.raises(BrokerError, match="did not answer"):
        c.start(timeout_s=1)
    assert jvms_of(c.data_dir) == []


def test_stop_leaves_no_jvm_and_cli_starts_it_again(cluster: LocalCluster) -> None:
    pids = [n.pid for n in cluster.status().nodes if n.pid is not None]
    assert pids and sorted(jvms_of(cluster.data_dir)) == sorted(pids)
    assert cluster.stop() is True
    assert jvms_of(cluster.data_dir) == []
    assert cluster.stop() is False  # idempotent

    port = cluster.node(1).port
    cli = run_cli("start", "--nodes", "3", "--port", str(port), "--data-dir", str(cluster.data_dir))
    assert cli.returncode == 0, cli.stderr
    assert f"Kafka cluster of 3 nodes is running at {cluster.bootstrap}" in cli.stdout
    assert "Formatting" not in cli.stderr  # formatted once, on the first start
    assert len(jvms_of(cluster.data_dir)) == 3
    cli = run_cli("stop", "--data-dir", str(cluster.data_dir))
    assert cli.returncode == 0, cli.stderr
    assert "Kafka cluster stopped" in cli.stdout
    assert jvms_of(cluster.data_dir) == []
    cli = run_cli("status", "--data-dir", str(cluster.data_dir))
    assert cli.returncode == 3
    assert "0 of 3 nodes running" in cli.stdout
