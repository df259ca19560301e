"""The local Kafka broker manager against real JVMs: start, stop, restart, signals, CLI."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from evcharge.devtools.kafka import KAFKA_VERSION, LocalBroker, cache_dir
from evcharge.errors import BrokerError
from evcharge.runtime.ports import free_ports
from tests.kafka_fixture import ExternalBroker

CLI = "from evcharge.devtools.kafka.cli import app; app()"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EVCHARGE_KAFKA_")}
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**base, **(env or {})},
        check=False,
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A second broker on its own free ports, always stopped afterwards."""
    port, controller_port = free_ports(2)
    b = LocalBroker(data_dir=tmp_path / "kafka", port=port, controller_port=controller_port)
    try:
        yield b
    finally:
        b.stop(timeout_s=10)


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        return await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.kafka
def test_session_fixture_broker_round_trips_a_message(
    kafka_broker: LocalBroker | ExternalBroker,
) -> None:
    async def scenario() -> bytes | None:
        topic = f"fixture-{time.time_ns()}"
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"ping")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
        return msg.value

    assert asyncio.run(scenario()) == b"ping"


@pytest.mark.kafka
def test_start_status_already_running_and_stop(broker: LocalBroker) -> None:
    steps: list[str] = []
    result = broker.start(timeout_s=120, progress=steps.append)
    assert not result.already_running
    st = broker.status()
    assert st.running
    assert st.pid == result.status.pid
    assert st.bootstrap == broker.bootstrap
    assert broker.pid_path.read_text().strip() == str(st.pid)
    assert "kafka.Kafka" in cmdline(st.pid)
    assert "Starting broker…" in steps
    assert steps[-1].startswith(f"Kafka is up at {broker.bootstrap} after ")
    assert "Formatting KRaft storage…" in steps
    # It really speaks Kafka, not just accepts connections.
    assert isinstance(asyncio.run(list_topics(broker.bootstrap)), list)

    again = broker.start(timeout_s=120)
    assert again.already_running
    assert again.status.pid == st.pid
    # Another object (another process in real life) finds it through the pid file.
    twin = LocalBroker(data_dir=broker.data_dir, port=broker.port)
    assert twin.status().running
    assert twin.status().pid == st.pid

    cli = run_cli("start", "--data-dir", str(broker.data_dir), "--port", str(broker.port))
    assert cli.returncode == 0, cli.stderr
    assert f"Kafka is already running at {broker.bootstrap} (pid {st.pid})" in cli.stdout
    cli = run_cli("status", "--data-dir", str(broker.data_dir), "--port", str(broker.port))
    assert cli.returncode == 0, cli.stderr
    assert f"Kafka is running (pid {st.pid})" in cli.stdout

    assert broker.stop() is True
    assert not broker.status().running
    assert broker.status().pid is None
    assert not broker.pid_path.exists()
    assert not process_exists(st.pid)
    assert broker.stop() is False  # idempotent


async def write_topic_message_and_offset(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("sessions", num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait("sessions", b"session-1 started", key=b"cp-1")
    finally:
        await producer.stop()
    tp = TopicPartition("sessions", 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id="central",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        msg = await asyncio.wait_for(consumer.getone(), 30)
        assert msg.value == b"session-1 started"
        await consumer.commit({tp: msg.offset + 1})
    finally:
        await consumer.stop()


async def read_topic_message_and_offset(bootstrap: str) -> tuple[list[str], bytes | None, int]:
    tp = TopicPartition("sessions", 0)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = await admin.list_topics()
        # Right after a restart the group coordinator may still be loading its offsets
        # and answer with none: ask again until they are there (or the deadline passes).
        async with asyncio.timeout(30):
            while tp not in (offsets := await admin.list_consumer_group_offsets("central")):  # noqa: ASYNC110 - polling the broker, no event to await
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([tp])
        msg = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    return topics, msg.value, offsets[tp].offset


@pytest.mark.kafka
def test_topics_messages_and_offsets_survive_stop_and_start(broker: LocalBroker) -> None:
    broker.start(timeout_s=120)
    meta = (broker.kafka_log_dir / "meta.properties").read_text()
    asyncio.run(write_topic_message_and_offset(broker.bootstrap))
    assert broker.stop() is True

    steps: list[str] = []
    result = broker.start(timeout_s=120, progress=steps.append)
    assert not result.already_running
    assert "Formatting KRaft storage…" not in steps
    assert (broker.kafka_log_dir / "meta.properties").read_text() == meta  # same cluster id
    topics, value, committed = asyncio.run(read_topic_message_and_offset(broker.bootstrap))
    assert "sessions" in topics
    assert value == b"session-1 started"
    assert committed == 1


@pytest.mark.kafka
def test_signals_pause_stop_and_kill(broker: LocalBroker) -> None:
    first = broker.start(timeout_s=120).status.pid
    assert first is not None

    # A paused broker still counts as running and is still stopped gracefully.
    assert broker.kill(signal.SIGSTOP) == first
    assert broker.status().running
    began = time.monotonic()
    assert broker.stop(timeout_s=20) is True
    assert time.monotonic() - began < 20, "SIGTERM was not acted on: SIGKILL was needed"
    assert not process_exists(first)

    second = broker.start(timeout_s=120).status.pid
    assert second is not None and second != first
    broker.kill(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while broker.status().running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not broker.status().running
    assert broker.pid_path.exists()  # kill() does no cleanup
    with pytest.raises(BrokerError, match="not running"):
        broker.kill(signal.SIGKILL)

    # The stale pid file is ignored and the broker recovers its data after the crash.
    result = broker.start(timeout_s=120)
    assert not result.already_running
    assert result.status.pid not in (None, first, second)
    assert isinstance(asyncio.run(list_topics(broker.bootstrap)), list)


@pytest.mark.kafka
def test_port_taken_by_something_else_is_reported(broker: LocalBroker) -> None:
    with socket.socket() as squatter:
        squatter.bind((broker.host, broker.port))
        squatter.listen()
        with pytest.raises(BrokerError, match=rf"{broker.bootstrap} is already in use"):
            broker.start(timeout_s=30)
        assert not broker.pid_path.exists()
        assert not broker.status().running

        cli = run_cli("start", "--data-dir", str(broker.data_dir), "--port", str(broker.port))
    assert cli.returncode == 1
    assert cli.stderr.startswith(f"error: {broker.bootstrap} is already in use")
    assert "Traceback" not in cli.stderr + cli.stdout


@pytest.mark.kafka
def test_fetch_is_cached_and_needs_no_tools_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    libs = LocalBroker(data_dir=tmp_path).fetch()
    assert libs == cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"
    jars = {p.name for p in libs.glob("*.jar")}
    assert f"kafka_2.13-{KAFKA_VERSION}.jar" in jars
    assert "log4j-slf4j2-impl-2.25.3.jar" in jars
    assert "slf4j-api-2.0.17.jar" in jars
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert LocalBroker(data_dir=tmp_path).fetch() == libs


def test_missing_java_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    cache = tmp_path / "cache"
    # A half-finished fetch (jars but no completion marker) must not count as fetched.
    half = cache / f"kafka-{KAFKA_VERSION}" / "libs"
    half.mkdir(parents=True)
    (half / f"kafka_2.13-{KAFKA_VERSION}.jar").write_bytes(b"")
    broker = LocalBroker(data_dir=tmp_path / "kafka", cache=cache)

    with pytest.raises(BrokerError, match=r"^Java 17 or newer is needed") as err:
        broker.fetch()
    assert "apt-get install openjdk-17-jre-headless" in str(err.value)
    with pytest.raises(BrokerError, match=r"^Java 17 or newer is needed"):
        broker.start(timeout_s=5)
    assert not broker.pid_path.exists()


def test_missing_maven_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("java is not installed")
    only_java = tmp_path / "bin"
    only_java.mkdir()
    (only_java / "java").symlink_to(java)
    monkeypatch.setenv("PATH", str(only_java))
    broker = LocalBroker(data_dir=tmp_path / "kafka", cache=tmp_path / "cache")
    with pytest.raises(BrokerError, match=r"^Maven is needed to fetch Kafka"):
        broker.fetch()
    assert not (tmp_path / "cache" / f"kafka-{KAFKA_VERSION}").exists()


def test_cli_status_of_empty_data_dir_says_not_running(tmp_path: Path) -> None:
    cli = run_cli("status", "--data-dir", str(tmp_path / "nothing-here"))
    assert cli.returncode == 3, cli.stderr
    assert "Kafka is not running" in cli.stdout
    assert str(tmp_path / "nothing-here") in cli.stdout
    assert "Traceback" not in cli.stderr


def test_maven_failure_shows_its_output_and_leaves_no_half_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("java is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(java)
    # A Maven that dies halfway: one jar copied, then a resolution error.
    fake_mvn = bin_dir / "mvn"
    fake_mvn.write_text(
        "#!/bin/sh\n"
        "mkdir -p libs && touch libs/kafka-clients-4.1.1.jar\n"
        "echo '[ERROR] Failed to execute goal on project kafka-runtime' >&2\n"
        "echo '[ERROR] Could not transfer artifact from central: Network is unreachable' >&2\n"
        "exit 1\n"
    )
    fake_mvn.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    cache = tmp_path / "cache"
    broker = LocalBroker(data_dir=tmp_path / "kafka", cache=cache)

    with pytest.raises(BrokerError, match=r"^Maven could not fetch Kafka 4\.1\.1 \(exit code 1\)"):
        broker.fetch()
    with pytest.raises(BrokerError, match="Network is unreachable"):
        broker.fetch()
    # Neither the final folder nor the temp folder is left behind.
    assert [p.name for p in cache.iterdir() if p.is_dir()] == []
