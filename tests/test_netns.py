"""The network-namespace test library (tests/netns.py) against the real kernel, and Kafka in it.

A cut must behave like a pulled cable: packets vanish, so a connect times out
instead of being refused and an established connection sees no RST and carries
on after the heal. Everything created is gone afterwards.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from evcharge.devtools.kafka import ClusterNode, LocalBroker, LocalCluster, NodeSpec
from evcharge.devtools.kafka.cluster import metadata_brokers
from evcharge.devtools.netns import PREFIX, Host, Network, remove_stale, unavailable
from evcharge.devtools.supervisor import Child

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

CONNECT_TIMEOUT_S = 2.0


def ip_state() -> str:
    """What `ip netns list` and `ip link` show in the root namespace."""
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return spaces + links


def wait_listening(host_ip: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host_ip, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def network() -> Iterator[Network]:
    with Network(["a", "b", "c"]) as net:
        yield net
    assert net.tag not in ip_state()


def test_tcp_between_hosts_and_what_a_cut_does(network: Network) -> None:
    a, b = network.host("a"), network.host("b")
    server = b.socket()
    server.bind((b.ip, 5000))
    server.listen()
    client = a.socket()
    client.settimeout(CONNECT_TIMEOUT_S)
    client.connect((b.ip, 5000))
    peer, _ = server.accept()
    with peer:
        peer.settimeout(CONNECT_TIMEOUT_S)
        client.sendall(b"hello")
        assert peer.recv(16) == b"hello"
        refused = a.socket()
        with pytest.raises(ConnectionRefusedError):  # a port nobody listens on, link up: RST
            refused.settimeout(CONNECT_TIMEOUT_S)
            refused.connect((b.ip, 5001))

        network.cut(a)
        for port in (5000, 5001):  # listening or not: no answer at all while cut
            fresh = a.socket()
            fresh.settimeout(CONNECT_TIMEOUT_S)
            began = time.monotonic()
            with pytest.raises(TimeoutError):
                fresh.connect((b.ip, port))
            assert time.monotonic() - began >= CONNECT_TIMEOUT_S * 0.9
        assert client.send(b"during the cut") == len(b"during the cut")  # buffered, no error
        with pytest.raises(TimeoutError):
            peer.recv(16)
        client.settimeout(1.0)
        with pytest.raises(TimeoutError):  # no RST arrived: neither reset nor closed
            client.recv(16)

        network.heal(a)
        # The kernel retransmits on its own backoff: within a few seconds of the heal.
        peer.settimeout(15)
        assert peer.recv(64) == b"during the cut"
        peer.sendall(b"after the heal")
        client.settimeout(15)
        assert client.recv(64) == b"after the heal"


def test_cut_between_two_hosts_leaves_the_others_connected(network: Network) -> None:
    a, b, c = network.host("a"), network.host("b"), network.host("c")
    server = b.socket()
    server.bind((b.ip, 5000))
    server.listen()
    network.cut_between(a, b)
    from_a = a.socket()
    from_a.settimeout(CONNECT_TIMEOUT_S)
    with pytest.raises(TimeoutError):
        from_a.connect((b.ip, 5000))
    from_c = c.socket()
    from_c.settimeout(CONNECT_TIMEOUT_S)
    from_c.connect((b.ip, 5000))  # c still reaches b
    listener_c = c.socket()
    listener_c.bind((c.ip, 5000))
    listener_c.listen()
    a_to_c = a.socket()
    a_to_c.settimeout(CONNECT_TIMEOUT_S)
    a_to_c.connect((c.ip, 5000))  # and a still reaches c
    socket.create_connection((b.ip, 5000), timeout=CONNECT_TIMEOUT_S).close()  # so does the observer
    network.heal_between(a, b)
    again = a.socket()
    again.settimeout(CONNECT_TIMEOUT_S)
    again.connect((b.ip, 5000))


def test_the_root_namespace_reaches_a_host_over_http(network: Network, tmp_path: Path) -> None:
    b = network.host("b")
    (tmp_path / "index.html").write_text("served from inside b\n")
    server = b.popen(
        [sys.executable, "-m", "http.server", "--bind", b.ip, "8080", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(b.ip, 8080, 20)
    with urllib.request.urlopen(f"http://{b.ip}:8080/index.html", timeout=5) as response:
        assert response.read() == b"served from inside b\n"
    # It really runs in b: nothing listens on that port in the root namespace.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 8080), timeout=1).close()
    network.cut(b)
    with pytest.raises(TimeoutError):
        socket.create_connection((b.ip, 8080), timeout=CONNECT_TIMEOUT_S)
    network.heal(b)
    assert server.poll() is None  # the network stops it on close


def test_a_supervised_child_runs_inside_a_host(network: Network, tmp_path: Path) -> None:
    b = network.host("b")
    child = Child(
        "kafka-status",
        ["kafka", "status", "--data-dir", str(tmp_path / "none")],
        tmp_path / "child.log",
        prefix=b.prefix,
    ).start()
    assert child.wait(60) == 3
    assert "Kafka is not running" in child.output()
    assert child.process is not None and child.process.args[:4] == b.prefix


def test_everything_is_removed_even_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), Network(2) as net:
        tag = net.tag
        state = ip_state()
        assert f"{PREFIX}{tag}-hub" in state and f"{PREFIX}{tag}-h1" in state and net.root_link in state
        net.host("h1").popen(["sleep", "600"])
        raise RuntimeError("boom")
    assert tag not in ip_state()
    assert net.leftovers() == []


def test_leftovers_of_a_crashed_run_are_removed_but_not_a_live_network() -> None:
    crash = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal\n"
            "from evcharge.devtools.netns import Network\n"
            "net = Network(2).__enter__()\n"
            "print(net.tag, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    crashed = crash.stdout.strip()
    assert crash.returncode == -9 and crashed, crash.stderr
    assert f"{PREFIX}{crashed}-hub" in ip_state()
    with Network(1) as live:
        assert crashed not in ip_state()  # removed on entry
        assert remove_stale() == []  # the live one's lock is held: left alone
        assert live.leftovers() != []
    assert crashed not in ip_state() and live.tag not in ip_state()


CONSUMER = """
import asyncio, sys
from aiokafka import AIOKafkaConsumer, TopicPartition

async def main(bootstrap, topic, count):
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, retry_backoff_ms=100)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        print("ready", flush=True)
        seen = 0
        while seen < count:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for msg in records:
                    print(msg.value.decode(), flush=True)
                    seen += 1
    finally:
        await consumer.stop()

asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2], int(sys.argv[3])), 180))
"""


def lines_of(stream: Any) -> tuple[queue.Queue[str], threading.Thread]:
    """A queue fed with a pipe's lines by a thread that ends at EOF."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))

    thread = threading.Thread(target=pump, name="consumer-stdout")
    thread.start()
    return lines, thread


async def create_topic(bootstrap: str, topic: str, partitions: int = 1, replicas: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=replicas)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: range) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, str(value).encode())
    finally:
        await producer.stop()


def take(lines: queue.Queue[str], count: int, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    got = []
    while len(got) < count:
        got.append(lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
    return got


@pytest.mark.kafka
def test_kafka_in_a_namespace_delivers_everything_across_a_cut_consumer(tmp_path: Path) -> None:
    topic = "readings"
    with Network(["kafka", "consumer"]) as net:
        kafka, consumer_host = net.host("kafka"), net.host("consumer")
        broker = LocalBroker(
            data_dir=tmp_path / "kafka",
            host=kafka.ip,
            port=9092,
            controller_port=9093,
            command_prefix=kafka.prefix,
        )
        try:
            broker.start(timeout_s=120)  # readiness is checked from here, over the observer link
            asyncio.run(create_topic(broker.bootstrap, topic))
            with (tmp_path / "consumer.err").open("w") as err:
                consumer = consumer_host.popen(
                    [sys.executable, "-c", CONSUMER, broker.bootstrap, topic, "60"],
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            lines, pump = lines_of(consumer.stdout)
            try:
                deliver_across_a_cut(net, consumer_host, broker.bootstrap, topic, lines)
                assert consumer.wait(timeout=30) == 0, (tmp_path / "consumer.err").read_text()
            finally:
                if consumer.poll() is None:
                    consumer.kill()
                    consumer.wait(timeout=10)
                pump.join(timeout=10)
                assert consumer.stdout is not None
                consumer.stdout.close()
        finally:
            broker.stop()
    assert net.tag not in ip_state()


def deliver_across_a_cut(
    net: Network, consumer_host: Host, bootstrap: str, topic: str, lines: queue.Queue[str]
) -> None:
    """60 messages, 20 of them produced while the consumer's host is cut off: all arrive, in order."""
    assert take(lines, 1, 60) == ["ready"]
    asyncio.run(produce(bootstrap, topic, range(0, 20)))
    assert take(lines, 20, 30) == [str(i) for i in range(0, 20)]

    net.cut(consumer_host)
    cut_at = time.monotonic()
    asyncio.run(produce(bootstrap, topic, range(20, 40)))  # the producer is not cut off
    with pytest.raises(queue.Empty):
        lines.get(timeout=max(4 - (time.monotonic() - cut_at), 0.5))
    net.heal(consumer_host)
    asyncio.run(produce(bootstrap, topic, range(40, 60)))
    assert take(lines, 40, 60) == [str(i) for i in range(20, 60)]


async def keyed_sends_until(
    bootstrap: str, topic: str, stop: asyncio.Event
) -> list[tuple[str, int, float, float]]:
    """Send "key:seq" one at a time until `stop`; (key, seq, sent_at, acked_at) of each acknowledged."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        # A request to a node that was cut off gets no answer at all, not an error:
        # give up on it after 5 s and resend (idempotent) to the partition's new leader.
        request_timeout_ms=5000,
        retry_backoff_ms=50,
        metadata_max_age_ms=2000,
    )
    acked = []
    await producer.start()
    try:
        seq = 0
        while not stop.is_set():
            key = f"cp-{seq % 5}"
            began = time.monotonic()
            await producer.send_and_wait(topic, f"{key}:{seq}".encode(), key=key.encode())
            acked.append((key, seq, began, time.monotonic()))
            seq += 1
    finally:
        await producer.stop()
    return acked


async def consume_everything(bootstrap: str, topic: str, want: int) -> dict[str, list[int]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    by_key: dict[str, list[int]] = {}
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            while sum(map(len, by_key.values())) < want:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for msg in records:
                        key, seq = msg.value.decode().split(":")
                        by_key.setdefault(key, []).append(int(seq))
    finally:
        await consumer.stop()
    return by_key


async def until_registered(node: ClusterNode, done: Callable[[set[int]], bool], timeout_s: float) -> None:
    """Until the brokers `node` lists as registered satisfy `done`, within `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while (brokers := await metadata_brokers(node.host, node.port, 2)) is None or not done(brokers):  # noqa: ASYNC110 - polling another process, no event to await
            await asyncio.sleep(0.05)


@pytest.mark.kafka
@pytest.mark.multihost
def test_kafka_cluster_across_namespaces_survives_an_isolated_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = "readings"
    with Network(["k1", "k2", "k3"]) as net:
        cluster = LocalCluster(
            tmp_path / "cluster", specs=[NodeSpec(h.ip, 9092, 9093, tuple(h.prefix)) for h in net.hosts]
        )
        try:
            cluster.start(timeout_s=120)
            asyncio.run(create_topic(cluster.bootstrap, topic, partitions=3, replicas=3))

            async def scenario() -> tuple[list[tuple[str, int, float, float]], float, float, float]:
                stop = asyncio.Event()
                async with asyncio.TaskGroup() as tasks:
                    sending = tasks.create_task(keyed_sends_until(cluster.bootstrap, topic, stop))
                    await asyncio.sleep(1.5)
                    isolated = net.host("k1")
                    net.cut(isolated)  # node 1 keeps running, alone: a real partition
                    cut_at = time.monotonic()
                    node2 = cluster.node(2)
                    await until_registered(node2, lambda brokers: 1 not in brokers, 30)
                    fenced_at = time.monotonic()
                    # Sends go on without node 1, once the producer gave up on it: a request
                    # in flight to it (and a metadata request, if it asks node 1) gets no
                    # answer at all and takes the whole request_timeout_ms to fail.
                    await asyncio.sleep(10)
                    healed_at = time.monotonic()
                    net.heal(isolated)
                    await until_registered(node2, lambda brokers: brokers == {1, 2, 3}, 30)
                    await asyncio.sleep(1)
                    stop.set()
                return sending.result(), cut_at, fenced_at, healed_at

            acked, cut_at, fenced_at, healed_at = asyncio.run(scenario())
            without_node1 = [a for a in acked if fenced_at <= a[2] and a[3] < healed_at]
            assert len(without_node1) >= 10, "the two connected nodes did not take writes"
            by_key = asyncio.run(consume_everything(cluster.bootstrap, topic, len(acked)))
            for key, seqs in by_key.items():
                assert seqs == sorted(set(seqs)), f"{key}: out of order or twice"
            seen = {(key, seq) for key, seqs in by_key.items() for seq in seqs}
            assert {(key, seq) for key, seq, *_ in acked} <= seen
            with capsys.disabled():
                print(
                    f"\n[netns] node 1 cut off from the cluster: fenced after {fenced_at - cut_at:.1f} s, "
                    f"longest send {max(done - sent for *_, sent, done in acked):.1f} s; "
                    f"{len(without_node1)} of {len(acked)} sends acknowledged without node 1, none lost"
                )
        finally:
            cluster.stop()
    assert net.tag not in ip_state()
