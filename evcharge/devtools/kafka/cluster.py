"""A real multi-node Apache Kafka cluster (KRaft) on this machine, for failover tests.

Every node is a combined broker+controller JVM from the same cached jars: a
`ClusterNode`, which is a `LocalBroker` with its own node id, ports and data dir. The
controllers form a static quorum (`controller.quorum.voters`), every node's storage is
formatted once with the cluster's one id. One data dir holds the whole cluster:

    <data_dir>/cluster.json   the layout: cluster id and each node's address, written once
    <data_dir>/node-<id>/     that node's data dir, laid out as a LocalBroker's
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from evcharge.devtools.kafka.fetch import (
    Progress,
    cached_libs,
    fetch_kafka,
    file_lock,
    kafka_home,
    require_java,
    say,
)
from evcharge.devtools.kafka.local import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    JVM_FLAGS,
    LocalBroker,
    _run_blocking,
    new_cluster_id,
)
from evcharge.devtools.procs import task_state
from evcharge.errors import BrokerError

LAYOUT_FILE = "cluster.json"

# Fast failover, as far as Kafka allows it without fencing healthy nodes on a busy
# 2-core machine (three JVMs and the tests share it).
FAILOVER_SETTINGS: dict[str, str] = {
    # A SIGKILLed broker keeps leading its partitions until the controller fences it when
    # its session runs out: this is most of a leader failover (9 s by default). It is also
    # how long a restarted broker is refused (DUPLICATE_BROKER_REGISTRATION) until its old
    # incarnation expires. Five missed heartbeats, so a GC pause does not fence anyone.
    "broker.heartbeat.interval.ms": "400",
    "broker.session.timeout.ms": "2000",
    # Controller followers long-poll the active controller for 500 ms (fixed in Kafka);
    # without an answer for three such polls they elect a new one (2 s by default).
    "controller.quorum.fetch.timeout.ms": "1500",
    # A candidate's wait for votes and the random backoff before it retries: short, as
    # only three voters on one machine compete (1 s each by default).
    "controller.quorum.election.timeout.ms": "500",
    "controller.quorum.election.backoff.max.ms": "500",
    # A follower that is alive (heartbeating) but stopped replicating leaves the ISR after
    # this long, so acks=all writes wait for it no longer (30 s by default). Well above
    # the followers' 500 ms fetch wait, so a merely slow follower stays in.
    "replica.lag.time.max.ms": "5000",
    # A restarted broker gets back the partitions it prefers to lead within seconds
    # (5 min by default), so the next fault hits a balanced cluster, not one node leading all.
    "leader.imbalance.check.interval.seconds": "5",
}


@dataclass(frozen=True)
class NodeSpec:
    """Where one node listens; `command_prefix` runs its JVM elsewhere (a network namespace)."""

    host: str
    port: int
    controller_port: int
    command_prefix: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeStatus:
    node_id: int
    running: bool
    paused: bool  # stopped by SIGSTOP: alive, but answering nothing
    pid: int | None
    address: str
    data_dir: Path
    log_path: Path

    @property
    def state(self) -> str:
        if not self.running:
            return "down"
        return "paused" if self.paused else "up"


@dataclass(frozen=True)
class ClusterStatus:
    nodes: tuple[NodeStatus, ...]
    bootstrap: str
    data_dir: Path

    @property
    def running_count(self) -> int:
        return sum(node.running for node in self.nodes)


@dataclass(frozen=True)
class ClusterStartResult:
    """What `LocalCluster.start` did: which nodes it started, or none as all were up."""

    status: ClusterStatus
    started: tuple[int, ...]  # node ids started by this call
    fetch_s: float | None  # None when the jars were cached already
    start_s: float  # 0.0 when already running

    @property
    def already_running(self) -> bool:
        return not self.started


async def metadata_brokers(host: str, port: int, timeout_s: float) -> set[int] | None:
    """The ids of the brokers one node lists as registered and unfenced; None if it does not answer.

    Asks that node alone (a client would go on to whichever node it likes best).
    """
    # Imported here so the CLI's stop/status stay fast and do not need aiokafka loaded.
    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaError
    from aiokafka.protocol.metadata import MetadataRequest

    conn = None
    try:
        async with asyncio.timeout(timeout_s):
            conn = await create_conn(host, port, request_timeout_ms=max(int(timeout_s * 1000), 500))
            response = await conn.send(MetadataRequest([]))
    except (KafkaError, OSError, TimeoutError):
        return None
    finally:
        if conn is not None:
            conn.close()
    return {broker[0] for broker in response.brokers}


@dataclass(frozen=True)
class PartitionState:
    """One partition as a node's metadata describes it."""

    topic: str
    partition: int
    leader: int  # -1 while it has none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]

    @property
    def under_replicated(self) -> bool:
        return len(self.isr) < len(self.replicas)


async def partition_states(
    host: str, port: int, topics: Sequence[str], timeout_s: float
) -> list[PartitionState] | None:
    """The partitions of `topics` as one node alone sees them; None if it does not answer.

    A topic that does not exist (yet) is left out rather than failing the answer.
    """
    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaError
    from aiokafka.protocol.metadata import MetadataRequest

    conn = None
    try:
        async with asyncio.timeout(timeout_s):
            conn = await create_conn(host, port, request_timeout_ms=max(int(timeout_s * 1000), 500))
            response = await conn.send(MetadataRequest(list(topics)))
    except (KafkaError, OSError, TimeoutError):
        return None
    finally:
        if conn is not None:
            conn.close()
    return [
        PartitionState(
            entry["topic"], p["partition"], p["leader"], tuple(sorted(p["replicas"])), tuple(sorted(p["isr"]))
        )
        for entry in response.to_object()["topics"]
        if entry["error_code"] == 0
        for p in entry["partitions"]
    ]


@dataclass
class ClusterNode(LocalBroker):
    """One node of a LocalCluster: broker and controller in one JVM, one of the quorum's voters."""

    node_id: int = 1
    cluster_id: str = ""
    voters: str = ""  # controller.quorum.voters: "1@host:port,2@host:port,..."
    cluster_size: int = 1
    # Only the quick JIT (C1): three JVMs starting at once on two cores spend about half
    # their start compiling with C2; C1 alone halves the cluster's start (12 s to 6 s here),
    # and a test cluster never runs long or hard enough to miss C2's faster code.
    jvm_flags: ClassVar[tuple[str, ...]] = (*JVM_FLAGS, "-XX:TieredStopAtLevel=1")

    @property
    def address(self) -> str:
        return self.bootstrap

    def registered_brokers(self, timeout_s: float = 3.0) -> set[int] | None:
        """The broker ids this node lists as registered and unfenced (None: it does not answer)."""
        return _run_blocking(lambda: metadata_brokers(self.host, self.port, timeout_s))

    def partitions(self, topics: Sequence[str], timeout_s: float = 3.0) -> list[PartitionState] | None:
        """The partitions of `topics` as this node sees them (None: it does not answer)."""
        return _run_blocking(lambda: partition_states(self.host, self.port, topics, timeout_s))

    def node_status(self) -> NodeStatus:
        pid = self._live_pid()
        paused = pid is not None and task_state(Path(f"/proc/{pid}")) == "T"
        return NodeStatus(
            node_id=self.node_id,
            running=pid is not None,
            paused=paused,
            pid=pid,
            address=self.address,
            data_dir=self.data_dir,
            log_path=self.log_path,
        )

    def _properties(self) -> dict[str, str]:
        props = super()._properties()
        # A static quorum: every voter is named in the config, none is added at run time.
        del props["controller.quorum.bootstrap.servers"]
        replicas = str(min(3, self.cluster_size))
        min_isr = str(min(2, self.cluster_size))
        props.update(
            {
                "node.id": str(self.node_id),
                "controller.quorum.voters": self.voters,
                "default.replication.factor": replicas,
                # With acks=all a write is acknowledged once on two replicas: one node
                # may fail at any moment without losing anything acknowledged.
                "min.insync.replicas": min_isr,
                # Never make a replica leader that may lack acknowledged writes.
                "unclean.leader.election.enable": "false",
                "offsets.topic.replication.factor": replicas,
                "transaction.state.log.replication.factor": replicas,
                "transaction.state.log.min.isr": min_isr,
                **FAILOVER_SETTINGS,
            }
        )
        return props

    def _format_args(self) -> list[str]:
        # No --standalone: the voters are fixed by controller.quorum.voters.
        return [f"--cluster-id={self.cluster_id}"]

    def _answers(self, timeout_s: float) -> bool:
        """Ready once this node answers metadata and lists itself: registered and unfenced."""
        brokers = self.registered_brokers(timeout_s)
        return brokers is not None and self.node_id in brokers


def _default_specs(nodes: int, host: str, base_port: int) -> list[NodeSpec]:
    """Node i (from 1) listens on base_port + 2(i-1), its controller on the port after."""
    if base_port + 2 * nodes - 1 > 65535:
        raise BrokerError(f"{nodes} nodes need ports {base_port}..{base_port + 2 * nodes - 1}")
    return [NodeSpec(host, base_port + 2 * i, base_port + 2 * i + 1) for i in range(nodes)]


@dataclass
class LocalCluster:
    """A cluster of `nodes` combined broker+controller JVMs owned by one data dir.

    By default node i listens on `host`:`base_port + 2(i-1)` and its controller on the
    next port; `specs` gives each node its own address (and command prefix) instead.
    """

    data_dir: Path
    nodes: int = 3
    host: str = DEFAULT_HOST
    base_port: int = DEFAULT_PORT
    specs: Sequence[NodeSpec] | None = None
    cache: Path | None = None
    # The nodes' JVMs get SIGTERM when the process that started them ends, even a SIGKILLed one
    # (start and restart them from the main thread then).
    die_with_parent: bool = False
    _members: dict[int, ClusterNode] = field(default_factory=dict, init=False, repr=False)
    cluster_id: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        specs = list(self.specs) if self.specs is not None else None
        if specs is None:
            specs = _default_specs(self.nodes, self.host, self.base_port)
        self.specs = tuple(specs)
        self.nodes = len(specs)
        if self.nodes < 2:
            raise BrokerError("a cluster needs at least 2 nodes (one broker is a LocalBroker)")
        endpoints = [(s.host, p) for s in specs for p in (s.port, s.controller_port)]
        if len(set(endpoints)) != len(endpoints):
            raise BrokerError(f"the nodes' ports must all differ: {endpoints}")
        layout = self._read_layout()
        self.cluster_id = str(layout["cluster_id"]) if layout else new_cluster_id()
        voters = ",".join(f"{i}@{s.host}:{s.controller_port}" for i, s in enumerate(specs, start=1))
        for node_id, spec in enumerate(specs, start=1):
            self._members[node_id] = ClusterNode(
                data_dir=self.data_dir / f"node-{node_id}",
                host=spec.host,
                port=spec.port,
                controller_port=spec.controller_port,
                cache=self.cache,
                die_with_parent=self.die_with_parent,
                command_prefix=spec.command_prefix,
                node_id=node_id,
                cluster_id=self.cluster_id,
                voters=voters,
                cluster_size=self.nodes,
            )

    @classmethod
    def open(cls, data_dir: Path, cache: Path | None = None) -> LocalCluster | None:
        """The cluster an earlier start laid out in `data_dir`, or None if it holds none."""
        path = Path(data_dir).expanduser().resolve() / LAYOUT_FILE
        try:
            layout = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot read the cluster layout {path}: {exc}") from exc
        specs = [
            NodeSpec(n["host"], n["port"], n["controller_port"], tuple(n.get("command_prefix", ())))
            for n in layout["nodes"]
        ]
        return cls(data_dir=Path(data_dir), specs=specs, cache=cache)

    @property
    def bootstrap(self) -> str:
        """Every node's listener, comma-separated: what any client takes as bootstrap_servers."""
        return ",".join(node.bootstrap for node in self.members)

    @property
    def members(self) -> tuple[ClusterNode, ...]:
        return tuple(self._members.values())

    def node(self, node_id: int) -> ClusterNode:
        """Node `node_id` (1..nodes): `.kill(sig)`, `.start()` (waits until rejoined), `.stop()`."""
        try:
            return self._members[node_id]
        except KeyError:
            raise BrokerError(f"no node {node_id}: the nodes are 1..{self.nodes}") from None

    def status(self) -> ClusterStatus:
        return ClusterStatus(
            nodes=tuple(node.node_status() for node in self.members),
            bootstrap=self.bootstrap,
            data_dir=self.data_dir,
        )

    def start(self, timeout_s: float = 120, progress: Progress | None = None) -> ClusterStartResult:
        """Start every node that is not running and wait until all are registered.

        All JVMs are spawned before any is waited for: a node is ready only once a
        majority of the quorum runs. On any failure, or Ctrl-C, the nodes this call
        spawned are stopped again, so no half-started cluster is left behind.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as locks:
            locks.enter_context(file_lock(self.data_dir / ".lock"))
            for node in self.members:
                locks.enter_context(file_lock(node.data_dir / ".lock"))
            self._write_layout()
            down = [node for node in self.members if node._live_pid() is None]
            if not down:
                return ClusterStartResult(self.status(), started=(), fetch_s=None, start_s=0.0)
            java = require_java()
            fetch_started = time.monotonic()
            fetched = cached_libs(kafka_home(self.cache)) is None
            libs = fetch_kafka(self.cache, progress)
            fetch_s = time.monotonic() - fetch_started if fetched else None
            for node in down:
                node._check_ports_free()
            started = time.monotonic()
            deadline = started + timeout_s
            try:
                self._format(down, java, libs, progress)
                offsets = []
                for node in down:
                    node.pid_path.unlink(missing_ok=True)  # stale: its process is gone
                    offsets.append(node._launch(_prefixed(progress, f"node {node.node_id}: ")).log_offset)
                for node, offset in zip(down, offsets, strict=True):
                    node._wait_ready(deadline, offset)
                self._wait_all_registered(deadline)
            except BaseException:
                _stop_nodes(down, grace_s=5)
                raise
            start_s = time.monotonic() - started
            say(
                progress,
                f"Kafka cluster of {self.nodes} nodes is up at {self.bootstrap} after {start_s:.1f} s",
            )
            return ClusterStartResult(
                self.status(), started=tuple(n.node_id for n in down), fetch_s=fetch_s, start_s=start_s
            )

    def stop(self, timeout_s: float = 30) -> bool:
        """Stop every node at once: SIGTERM, then SIGKILL after `timeout_s`. Idempotent.

        Returns True when at least one node was running. Returns only once every JVM is gone.
        """
        if not self.data_dir.is_dir():
            return False
        with contextlib.ExitStack() as locks:
            locks.enter_context(file_lock(self.data_dir / ".lock"))
            for node in self.members:
                locks.enter_context(file_lock(node.data_dir / ".lock"))
            return bool(_stop_nodes(self.members, grace_s=timeout_s))

    def registered_brokers(self, timeout_s: float = 3.0) -> set[int] | None:
        """The registered, unfenced broker ids as the first node that answers lists them."""
        for node in self.members:
            if node._live_pid() is None:
                continue
            brokers = node.registered_brokers(timeout_s)
            if brokers is not None:
                return brokers
        return None

    def _format(self, nodes: Sequence[ClusterNode], java: str, libs: Path, progress: Progress | None) -> None:
        """Format the nodes' storage that is not formatted yet, in parallel (a JVM start each)."""
        todo = [node for node in nodes if not (node.kafka_log_dir / "meta.properties").is_file()]
        if not todo:
            return
        say(progress, f"Formatting KRaft storage of node {', '.join(str(n.node_id) for n in todo)}…")
        for node in todo:
            node._write_config()
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(todo)) as pool:
            for done in [pool.submit(node._format, java, libs) for node in todo]:
                done.result()

    def active_controller(self) -> int | None:
        """The quorum's leader (the active controller) as the running nodes last recorded it.

        Read from each node's `quorum-state` file, which Kafka rewrites on every election:
        the leader of the newest epoch any running node knows. None before the first election.
        """
        best: tuple[int, int] | None = None
        for node in self.members:
            if node._live_pid() is None:
                continue
            try:
                state = json.loads((node.kafka_log_dir / "__cluster_metadata-0" / "quorum-state").read_text())
            except (OSError, ValueError):
                continue
            epoch, leader = int(state.get("leaderEpoch", -1)), int(state.get("leaderId", -1))
            if leader >= 0 and (best is None or epoch > best[0]):
                best = (epoch, leader)
        return best[1] if best is not None else None

    def partitions(self, topics: Sequence[str], timeout_s: float = 3.0) -> list[PartitionState] | None:
        """The partitions of `topics` as the first running node that answers sees them."""
        for node in self.members:
            if node._live_pid() is None:
                continue
            found = node.partitions(topics, timeout_s)
            if found is not None:
                return found
        return None

    def in_sync(self, topics: Sequence[str], timeout_s: float = 3.0) -> bool:
        """Every node registered, and every partition of `topics` led and fully replicated
        (no under-replicated partition) in the eyes of every node: safe to take the next one down."""
        if self.registered_brokers(timeout_s) != set(self._members):
            return False
        for node in self.members:
            seen = node.partitions(topics, timeout_s)
            if seen is None or any(p.leader < 0 or p.under_replicated for p in seen):
                return False
        return True

    def _wait_all_registered(self, deadline: float) -> None:
        want = set(self._members)
        while True:
            seen = self.registered_brokers(timeout_s=min(3.0, max(deadline - time.monotonic(), 0.5)))
            if seen is not None and want <= seen:
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"the cluster at {self.bootstrap} did not register all {self.nodes} nodes in time "
                    f"(registered: {sorted(seen) if seen is not None else 'no node answered'})"
                )
            time.sleep(0.2)

    def _layout(self) -> dict[str, object]:
        assert self.specs is not None  # set in __post_init__
        return {
            "cluster_id": self.cluster_id,
            "nodes": [
                {
                    "node_id": node_id,
                    "host": spec.host,
                    "port": spec.port,
                    "controller_port": spec.controller_port,
                    "command_prefix": list(spec.command_prefix),
                }
                for node_id, spec in enumerate(self.specs, start=1)
            ],
        }

    def _read_layout(self) -> dict[str, object] | None:
        try:
            layout: dict[str, object] = json.loads((self.data_dir / LAYOUT_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot read the cluster layout in {self.data_dir}: {exc}") from exc
        return layout

    def _write_layout(self) -> None:
        """Record the layout on the first start; refuse a later start that wants another one.

        The voters' addresses are part of each node's formatted identity: moving them
        would need the quorum to be reconfigured, which a static quorum does not do.
        """
        layout = self._layout()
        existing = self._read_layout()
        if existing is None:
            if (self.data_dir / "logs" / "meta.properties").is_file():
                raise BrokerError(f"{self.data_dir} holds a single-node broker, not a cluster")
            tmp = self.data_dir / (LAYOUT_FILE + ".tmp")
            tmp.write_text(json.dumps(layout, indent=2) + "\n")
            tmp.replace(self.data_dir / LAYOUT_FILE)
            return

        def addresses(lay: dict[str, object]) -> list[tuple[object, ...]]:
            nodes = lay["nodes"]
            assert isinstance(nodes, list)
            return [(n["node_id"], n["host"], n["port"], n["controller_port"]) for n in nodes]

        if addresses(existing) != addresses(layout):
            raise BrokerError(
                f"{self.data_dir} holds a cluster of {len(addresses(existing))} nodes at "
                f"{_describe_layout(existing)}, not {_describe_layout(layout)}: "
                "start it as it was created, or delete its data dir"
            )


def _describe_layout(layout: dict[str, object]) -> str:
    nodes = layout["nodes"]
    assert isinstance(nodes, list)
    return ",".join(f"{n['host']}:{n['port']}" for n in nodes)


def _prefixed(progress: Progress | None, prefix: str) -> Progress | None:
    if progress is None:
        return None
    return lambda message: progress(prefix + message)


def _stop_nodes(nodes: Iterable[ClusterNode], grace_s: float) -> list[int]:
    """SIGTERM every running node at once, wait until all are gone; the ids that ran.

    Signalled together, they shut down in parallel rather than one grace period each.
    """
    nodes = list(nodes)
    deadline = time.monotonic() + grace_s
    for node in nodes:
        pid = node._live_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)  # a paused JVM acts on SIGTERM only once resumed
    stopped = []
    for node in nodes:
        if node._terminate(grace_s=max(deadline - time.monotonic(), 0)):
            stopped.append(node.node_id)
        node.pid_path.unlink(missing_ok=True)
    return stopped
