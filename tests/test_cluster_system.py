"""The whole system on a real 3-node Kafka cluster while its brokers fail, under load.

Central, three charging points (engine + monitor) and their drivers run as real
processes on one `LocalCluster` shared by the module (topics: 3 replicas,
min.insync.replicas 2). While drivers charge and every meter reads each second:
the broker leading most request and event partitions is SIGKILLed; one is shut
down with SIGTERM; all three are restarted one at a time; two of three are down
at once. Each test asserts what the users see: every request ends with a ticket
or a business denial, the readings are shown in order and none twice, each what
the engine had metered (behind, central may show the latest rather than each step),
every ticket is exactly what the engine metered and is shown once, no process logs
an error, and no process of the system had to be restarted. How long the drivers'
screens waited is printed at the end (and goes into the chaos report's rows); no
timing is asserted beyond the bound of a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from evcharge.cp.settings import EngineSettings
from evcharge.devtools.kafka import LocalCluster, NodeSpec
from evcharge.protocol.topics import TOPICS, Topic
from evcharge.protocol.units import energy_wh
from evcharge.runtime.outbox import PUBLISH_TIMEOUT_S
from evcharge.runtime.ports import free_ports
from tests.chaos.conftest import REPORT, Scenario
from tests.harness import ChargePoint, System, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes, pytest.mark.chaos]

LOOPBACK = "127.0.0.1"
CORRECTNESS_TIMEOUT_S = 30.0  # the bound of a wrong answer, never a performance goal
BROKER_START_TIMEOUT_S = 120.0
SYNC_TIMEOUT_S = 60.0
DRIVER_TIMEOUT_S = 90.0
# The partitions whose leader matters most to a charge: requests in, engines' events in.
BUSY_TOPICS = (Topic.CP_EVENTS.value, Topic.DRIVER_REQUESTS.value)
# What must be fully replicated before the next broker may go: every topic of the system, the
# committed offsets every role resumes from, and the transaction log of central's relay. A
# transaction coordinator whose partition is left with one in-sync replica (min 2) can neither
# begin nor end a transaction, nor give a new producer its id, until the stopped broker is back.
SYNCED_TOPICS = (*(spec.name for spec in TOPICS), "__consumer_offsets", "__transaction_state")
POWER_W: int = next(f.default for f in dataclasses.fields(EngineSettings) if f.name == "power_w")
# What a topic needs on three brokers: a write on two of them before it is acknowledged, and
# never a leader that may lack an acknowledged write.
SAFETY = {"min.insync.replicas": "2", "unclean.leader.election.enable": "false"}
WARNING_LINE = re.compile(r"^\S+ (WARNING|ERROR|CRITICAL)\s")
# What an outbox relay says, once, when Kafka did not acknowledge what it published in time.
RELAY_WAITING = "WARNING evcharge.runtime.outbox: cannot reach Kafka"


# ------------------------------------------------------------------ figures


@dataclass
class Figures:
    """Measured figures, printed once the module is done (they are part of the report)."""

    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    found = Figures()
    yield found
    found.add(f"module wall time, cluster start and stop included: {time.monotonic() - found.started:.0f} s")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        for line in found.lines:
            reporter.write_line(f"[system on a 3-node cluster] {line}")


# ------------------------------------------------------------------ the cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, figures: Figures) -> Iterator[LocalCluster]:
    ports = free_ports(6)
    specs = [NodeSpec(LOOPBACK, ports[2 * i], ports[2 * i + 1]) for i in range(3)]
    # die_with_parent: a test run killed outright takes its brokers along.
    c = LocalCluster(tmp_path_factory.mktemp("cluster"), specs=specs, die_with_parent=True)
    try:
        result = c.start(timeout_s=BROKER_START_TIMEOUT_S)
        figures.add(f"cluster start (3 nodes, storage formatted): {result.start_s:.1f} s")
        yield c
    finally:
        c.stop()


def heal(cluster: LocalCluster) -> None:
    """Three running nodes, every partition fully replicated: how each test finds the cluster."""
    for node in cluster.members:
        if node.node_status().paused:
            node.kill(signal.SIGCONT)
    cluster.start(timeout_s=BROKER_START_TIMEOUT_S)
    wait_until(lambda: cluster.in_sync(SYNCED_TOPICS), SYNC_TIMEOUT_S, "every partition on all three nodes")


@pytest.fixture
def healthy_cluster(cluster: LocalCluster) -> Iterator[LocalCluster]:
    heal(cluster)
    yield cluster
    heal(cluster)


@pytest.fixture
def system(healthy_cluster: LocalCluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[System]:
    """A system of real processes on the cluster's bootstrap list; stopped before the cluster heals."""
    sut = System(tmp_path, healthy_cluster.bootstrap)
    yield sut
    sut.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\nlogs of the failed test: {sut.logs}")


@pytest.fixture
def scenario(system: System, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    """A row of the chaos suite's report (printed when tests/chaos runs in the same session),
    written whatever happens, as tests/chaos does: `finish` settles, audits, then asserts."""
    recorded = Scenario(request.node.name, system)
    yield recorded
    report = getattr(request.node, "rep_call", None)
    failure = None
    if report is not None and report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        failure = str(crash.message if crash is not None else report.longrepr)
    if recorded.row is None:
        REPORT.append(recorded.compute(failure or "the scenario did not finish"))
    elif failure is not None:
        recorded.row["result"] = f"FAILED: {failure[:2000]}"


def leaders(cluster: LocalCluster, topics: Iterable[str] = BUSY_TOPICS) -> dict[tuple[str, int], int]:
    partitions = cluster.partitions(list(topics)) or []
    return {(p.topic, p.partition): p.leader for p in partitions}


def busiest_broker(cluster: LocalCluster) -> tuple[int, int, int]:
    """(node, partitions it leads, partitions in all) over the requests and events topics."""
    led = leaders(cluster)
    counts = Counter(led.values())
    node = max(sorted(n.node_id for n in cluster.members), key=lambda n: counts[n])
    return node, counts[node], len(led)


def led_only_by_others(cluster: LocalCluster, gone: int) -> bool:
    """Every partition of the busy topics has a leader, and it is not `gone`."""
    now = leaders(cluster)
    return bool(now) and all(leader not in (-1, gone) for leader in now.values())


def role_of(cluster: LocalCluster, node_id: int) -> str:
    return "broker and active controller" if cluster.active_controller() == node_id else "broker"


# ------------------------------------------------------------------ the system under load


def start_cps(system: System, count: int, session_s: int) -> list[ChargePoint]:
    """Central and `count` CPs whose supplies end by themselves after `session_s`, all ON."""
    system.max_session_s = session_s
    system.start_central()
    cps = [system.add_cp(system.ident(f"CP-{n:03d}"), wait=False) for n in range(1, count + 1)]
    for cp in cps:
        system.wait_status(cp.cp_id, "ON", CORRECTNESS_TIMEOUT_S)
        system.wait_engine_ready(cp)
    return cps


def start_drivers(system: System, plans: dict[str, list[str]]) -> None:
    for driver_id, plan in plans.items():
        system.start_driver(driver_id, plan)


def charging(system: System, driver_id: str, reading: int = 1) -> bool:
    """The driver's screen shows meter reading number `reading` (or a later one) of a session
    that has not ended."""
    events = system.events(driver_id)
    ended = {e["session_id"] for e in events if e["event"] == "ticket"}
    return any(
        e["event"] == "progress" and e["seq"] >= reading and e["session_id"] not in ended for e in events
    )


def wait_charging(system: System, drivers: Iterable[str], reading: int = 1) -> None:
    drivers = list(drivers)
    wait_until(
        lambda: all(charging(system, d, reading) for d in drivers),
        CORRECTNESS_TIMEOUT_S,
        f"every driver to be shown meter reading {reading} of a charge",
    )


def moved_on_since(system: System, drivers: Iterable[str], since_wall: float) -> bool:
    """Every driver's screen has shown something new since `since_wall`."""
    return all(any(e["ts"] > since_wall for e in system.events(d)) for d in drivers)


@dataclass(frozen=True)
class Wait:
    """A driver's screen waiting for its next word: a request for its answer, or a charge for
    its next step (supply started, the next reading, the ticket). Wall-clock times, as the
    driver stamped its events."""

    driver_id: str
    what: str  # "answer"; or "start", "reading", "ticket": what the charge's next step was
    began: float
    ended: float

    @property
    def seconds(self) -> float:
        return self.ended - self.began

    def overlaps(self, since: float, until: float) -> bool:
        return self.began < until and self.ended > since


def screen_waits(system: System, drivers: Iterable[str]) -> list[Wait]:
    waits = []
    for driver_id in drivers:
        asked: dict[str, float] = {}
        last: dict[str, float] = {}
        for e in system.events(driver_id):
            kind, ts = e["event"], e["ts"]
            if kind == "requested":
                asked[e["request_id"]] = ts
            elif kind in ("accepted", "denied") and e["request_id"] in asked:
                waits.append(Wait(driver_id, "answer", asked.pop(e["request_id"]), ts))
            if kind in ("accepted", "progress") or (kind == "ticket" and e["revision"] == 1):
                session_id = e["session_id"]
                if session_id in last:
                    step = "ticket" if kind == "ticket" else "start" if e["seq"] == 0 else "reading"
                    waits.append(Wait(driver_id, step, last[session_id], ts))
                last[session_id] = ts
    return waits


@dataclass(frozen=True)
class Blip:
    """How the drivers' screens waited around a fault, in seconds."""

    longest_reading: float  # the longest wait for a charge's next step that overlapped the fault
    usual_reading: float  # the median wait from one reading to the next: the meter's interval, jitter
    slowest_answer: float  # the slowest answer to a request that overlapped the fault
    all_served: float  # fault → every screen that was waiting at the fault had its next word

    def text(self) -> str:
        return (
            f"longest wait for the next reading {self.longest_reading:.2f} s "
            f"(usually {self.usual_reading:.2f} s), slowest answer to a request {self.slowest_answer:.2f} s, "
            f"every screen waiting at the fault served {self.all_served:.2f} s after it"
        )


def blip(system: System, drivers: Iterable[str], since: float, until: float) -> Blip:
    waits = screen_waits(system, drivers)
    usual = [w.seconds for w in waits if w.what == "reading"] or [0.0]
    during = [w for w in waits if w.overlaps(since, until)]
    spanning = [w.ended - since for w in waits if w.began <= since < w.ended]
    return Blip(
        longest_reading=max((w.seconds for w in during if w.what != "answer"), default=0.0),
        usual_reading=statistics.median(usual),
        slowest_answer=max((w.seconds for w in during if w.what == "answer"), default=0.0),
        all_served=max(spanning, default=0.0),
    )


# ------------------------------------------------------------------ what the users see


def assert_every_request_answered(system: System, plans: dict[str, list[str]], unknown: str = "") -> None:
    """Each request ended with a ticket, or (the unknown CP) with a business denial; none unanswered."""
    for driver_id, plan in plans.items():
        system.wait_driver_done(driver_id, DRIVER_TIMEOUT_S)
        events = system.events(driver_id)
        assert not [e for e in events if e["event"] == "no_answer"], f"{driver_id}: a request went unanswered"
        (summary,) = [e for e in events if e["event"] == "summary"]
        expected = ["denied" if cp_id == unknown else "completed" for cp_id in plan]
        assert [o["outcome"] for o in summary["outcomes"]] == expected, f"{driver_id}: {summary}"
        denials = [e["code"] for e in events if e["event"] == "denied"]
        assert denials == ["unknown_cp"] * plan.count(unknown), f"{driver_id}: denied {denials}"


def assert_readings_shown_in_order_and_the_meters(
    system: System, drivers: Iterable[str], session_s: int
) -> None:
    """Every session showed its readings in order, none twice, each exactly what the engine had
    metered by then, and its ticket is what the engine metered over the whole supply, to the Wh.
    A reading may be passed over only for a later one: central, behind after an outage, tells a
    driver where its charge stands rather than every step it missed."""
    expected = [energy_wh(POWER_W, 1000 * k) for k in range(session_s + 1)]
    for driver_id in drivers:
        events = system.events(driver_id)
        tickets = [e for e in events if e["event"] == "ticket"]
        assert tickets, f"{driver_id} was shown no ticket"
        for ticket in tickets:
            shown = [
                (e["seq"], e["wh"])
                for e in events
                if e["event"] == "progress" and e["session_id"] == ticket["session_id"]
            ]
            seqs = [seq for seq, _ in shown]
            assert shown and seqs == sorted(set(seqs)), (
                f"{driver_id}, session {ticket['session_id']}: readings shown {shown}"
            )
            assert all(seq < len(expected) and wh == expected[seq] for seq, wh in shown), (
                f"{driver_id}, session {ticket['session_id']}: readings shown {shown}, metered {expected}"
            )
            assert (ticket["end_reason"], ticket["revision"], ticket["wh"]) == ("completed", 1, expected[-1])


def log_sizes(system: System) -> dict[Path, int]:
    return {log: log.stat().st_size for log in system.logs.glob("*.log")}


def warnings_since(sizes: dict[Path, int], system: System) -> dict[str, list[str]]:
    """The WARNING (and worse) lines each process logged since `sizes` was taken."""
    found: dict[str, list[str]] = {}
    for log in system.logs.glob("*.log"):
        with log.open("rb") as f:
            f.seek(sizes.get(log, 0))
            text = f.read().decode(errors="replace")
        found[log.name] = [line for line in text.splitlines() if WARNING_LINE.match(line)]
    return found


def repeated(lines: list[str]) -> list[str]:
    """Lines said more than once, times and numbers aside: a process that is not calm."""
    kinds = Counter(re.sub(r"\d+", "#", line.split(" ", 1)[1]) for line in lines)
    return [kind for kind, count in kinds.items() if count > 1]


# ------------------------------------------------------------------ the tests


def test_topics_have_three_replicas_and_min_insync_two(system: System, cluster: LocalCluster) -> None:
    names = [spec.name for spec in TOPICS]
    system.start_central()
    wait_until(
        lambda: {p.topic for p in cluster.partitions(names) or []} == set(names),
        CORRECTNESS_TIMEOUT_S,
        "central to create the system's topics",
    )

    async def configs() -> dict[str, dict[str, str]]:
        """The topics' settings that make them safe on a cluster, as one broker describes them."""
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=10000)
        await admin.start()
        try:
            described = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, spec.name) for spec in TOPICS]
            )
        finally:
            await admin.close()
        found = {}
        for response in described:
            for code, _msg, _type, name, entries in response.resources:
                settings = {entry[0]: entry[1] for entry in entries}
                if code == 0 and SAFETY.keys() <= settings.keys():
                    found[name] = {key: settings[key] for key in SAFETY}
        return found

    # A broker that has not yet caught up with the new topics' metadata describes none of them.
    def every_topic_described() -> dict[str, dict[str, str]] | None:
        found = asyncio.run(configs())
        return found if found.keys() == set(names) else None

    described = wait_until(
        every_topic_described, CORRECTNESS_TIMEOUT_S, "a broker to describe every topic", interval_s=0.5
    )
    assert described == dict.fromkeys(names, SAFETY)
    partitions = cluster.partitions(names) or []
    assert all(p.replicas == (1, 2, 3) and p.isr == (1, 2, 3) for p in partitions), partitions


def one_broker_goes(
    cluster: LocalCluster, system: System, scenario: Scenario, figures: Figures, *, controlled: bool
) -> None:
    """The busiest broker goes (SIGTERM or SIGKILL) while three drivers charge; it comes back under load."""
    how = "SIGTERM" if controlled else "SIGKILL"
    scenario.name = f"cluster: the busiest broker {how}"
    session_s = 6
    cps = start_cps(system, 3, session_s)
    unknown = system.ident("CP-404")
    plans = {system.ident(f"driver-{n}"): [cp.cp_id, unknown, cp.cp_id] for n, cp in enumerate(cps, 1)}
    start_drivers(system, plans)
    # Near the end of the first charges: the tickets, the denials of the unknown CP and the
    # second requests then travel while the leaders move.
    wait_charging(system, plans, reading=session_s - 2)
    before = system.identities()
    victim, led, total = busiest_broker(cluster)
    role = role_of(cluster, victim)

    fault_wall = time.time()
    fault = scenario.mark("fault_at")
    node = cluster.node(victim)
    if controlled:
        node.stop(timeout_s=30)  # SIGTERM: it hands its leadership over, then exits
    else:
        node.kill(signal.SIGKILL)
        wait_until(lambda: not node.node_status().running, CORRECTNESS_TIMEOUT_S, f"broker {victim} gone")
    gone_s = time.monotonic() - fault
    wait_until(
        lambda: led_only_by_others(cluster, victim),
        CORRECTNESS_TIMEOUT_S,
        f"new leaders for broker {victim}'s partitions",
    )
    failover_s = time.monotonic() - fault
    wait_until(
        lambda: moved_on_since(system, plans, fault_wall),
        CORRECTNESS_TIMEOUT_S,
        "every driver's screen to move on after the fault",
    )
    # It comes back while the drivers still charge: its return, and the leadership it takes
    # back, happen under load too.
    restart_wall = time.time()
    restarted = time.monotonic()
    node.start(timeout_s=BROKER_START_TIMEOUT_S)
    rejoin_s = time.monotonic() - restarted

    assert_every_request_answered(system, plans, unknown)
    wait_until(lambda: cluster.in_sync(SYNCED_TOPICS), SYNC_TIMEOUT_S, "every partition on all three nodes")
    synced_wall = time.time()
    assert_readings_shown_in_order_and_the_meters(system, plans, session_s)
    system.assert_only_restarted(before, set())

    lost = blip(system, plans, fault_wall, restart_wall)
    back = blip(system, plans, restart_wall, synced_wall)
    gone = f" (gone after {gone_s:.1f} s)" if controlled else ""
    figures.add(
        f"{how}{gone} broker {victim} ({role}, leader of {led} of the {total} request and event partitions): "
        f"new leaders after {failover_s:.2f} s; {lost.text()}"
    )
    figures.add(
        f"  restarted: registered after {rejoin_s:.1f} s; while it rejoined and took its leadership back, "
        f"longest wait for the next reading {back.longest_reading:.2f} s, "
        f"slowest answer {back.slowest_answer:.2f} s"
    )
    assert lost.longest_reading < CORRECTNESS_TIMEOUT_S
    scenario.name = f"cluster: broker {victim} ({role}) {how}"
    row = scenario.finish(served_at=fault + lost.all_served, restarted=[])
    row.update(longest_reading_wait_s=lost.longest_reading, failover_s=failover_s)


def test_sigkill_of_the_busiest_broker_fails_no_request_and_loses_no_reading(
    healthy_cluster: LocalCluster, system: System, scenario: Scenario, figures: Figures
) -> None:
    one_broker_goes(healthy_cluster, system, scenario, figures, controlled=False)


def test_sigterm_of_the_busiest_broker_is_only_jitter_to_the_drivers(
    healthy_cluster: LocalCluster, system: System, scenario: Scenario, figures: Figures
) -> None:
    one_broker_goes(healthy_cluster, system, scenario, figures, controlled=True)


def test_rolling_restart_of_all_three_brokers_errs_nowhere_and_loses_nothing(
    healthy_cluster: LocalCluster, system: System, scenario: Scenario, figures: Figures
) -> None:
    cluster = healthy_cluster
    scenario.name = "cluster: rolling restart of the 3 brokers"
    session_s = 4
    cps = start_cps(system, 3, session_s)
    before = system.identities()
    everyone: dict[str, list[str]] = {}
    scenario.mark("fault_at")
    worst = 0.0
    for wave, node_id in enumerate((1, 2, 3), start=1):
        # A fresh wave of charges for each broker: each one goes away and comes back under load,
        # and each driver's second request is sent while it is away or rejoining.
        plans = {system.ident(f"driver-{n}-w{wave}"): [cp.cp_id, cp.cp_id] for n, cp in enumerate(cps, 1)}
        everyone.update(plans)
        start_drivers(system, plans)
        wait_charging(system, plans)
        node = cluster.node(node_id)
        role = role_of(cluster, node_id)
        down_wall = time.time()
        down = time.monotonic()
        node.stop(timeout_s=30)
        stop_s = time.monotonic() - down
        node.start(timeout_s=BROKER_START_TIMEOUT_S)
        start_s = time.monotonic() - down - stop_s
        wait_until(
            lambda: cluster.in_sync(SYNCED_TOPICS),
            SYNC_TIMEOUT_S,
            f"every partition on all three nodes after broker {node_id}'s restart",
        )
        sync_s = time.monotonic() - down - stop_s - start_s
        synced_wall = time.time()
        assert_every_request_answered(system, plans)
        seen = blip(system, plans, down_wall, synced_wall)
        worst = max(worst, seen.longest_reading)
        figures.add(
            f"rolling restart, broker {node_id} ({role}): stopped in {stop_s:.1f} s, registered "
            f"{start_s:.1f} s after, in sync {sync_s:.1f} s later; longest wait for the next reading "
            f"{seen.longest_reading:.2f} s (usually {seen.usual_reading:.2f} s), "
            f"slowest answer to a request {seen.slowest_answer:.2f} s"
        )
    assert_readings_shown_in_order_and_the_meters(system, everyone, session_s)
    system.assert_only_restarted(before, set())
    errors = sum(map(len, system.unexpected_log_lines().values()))
    figures.add(f"rolling restart: {len(everyone) * 2} requests answered, errors logged {errors}")
    row = scenario.finish(restarted=[])
    row.update(longest_reading_wait_s=worst)


def test_two_of_three_brokers_down_the_system_waits_calmly_then_delivers_everything_once(
    healthy_cluster: LocalCluster, system: System, scenario: Scenario, figures: Figures
) -> None:
    cluster = healthy_cluster
    scenario.name = "cluster: 2 of 3 brokers SIGKILLed, one back"
    session_s = 5
    cps = start_cps(system, 3, session_s)
    plans = {system.ident(f"driver-{n}"): [cp.cp_id, cp.cp_id] for n, cp in enumerate(cps[:2], 1)}
    start_drivers(system, plans)
    wait_charging(system, plans)
    before = system.identities()
    busiest, _, _ = busiest_broker(cluster)
    victims = [busiest, *(n.node_id for n in cluster.members if n.node_id != busiest)][:2]

    sizes = log_sizes(system)
    fault_wall = time.time()
    scenario.mark("fault_at")
    for victim in victims:
        cluster.node(victim).kill(signal.SIGKILL)
    charging_at_fault = {
        session_id
        for cp in cps[:2]
        for session_id, record in cp.engine_sessions().items()
        if not record["ended"]
    }
    # A driver that comes along during the outage: its request must wait, then be served.
    late = {system.ident("driver-3"): [cps[2].cp_id, cps[2].cp_id]}
    start_drivers(system, late)
    plans.update(late)

    # The supplies go on and end at the CPs; what their meters said waits in their outboxes,
    # until each engine has said that it cannot publish (its relay gave up one attempt).
    wait_until(
        lambda: all(
            record["ended"]
            for cp in cps[:2]
            for session_id, record in cp.engine_sessions().items()
            if session_id in charging_at_fault
        ),
        CORRECTNESS_TIMEOUT_S,
        "the supplies to end at their CPs while two brokers are down",
    )
    wait_until(
        lambda: all(RELAY_WAITING in cp.engine.output() for cp in cps[:2]),
        CORRECTNESS_TIMEOUT_S + PUBLISH_TIMEOUT_S,
        "each engine to say that it cannot publish to Kafka",
    )
    buffered = {cp.cp_id: cp.engine_outbox() for cp in cps[:2]}
    assert all(buffered.values()), f"the engines' outboxes hold what they metered: {buffered}"
    shown = {t.session_id for d in plans for t in system.tickets(d)}
    assert not shown & charging_at_fault, "a ticket cannot reach a driver while two of three are down"
    assert not [e for d in late for e in system.events(d) if e["event"] == "accepted"]
    outage_s = time.time() - fault_wall

    returned_wall = time.time()
    returned = scenario.mark("restart_at")
    cluster.node(victims[0]).start(timeout_s=BROKER_START_TIMEOUT_S)
    rejoin_s = time.monotonic() - returned
    wait_until(
        lambda: (
            charging_at_fault <= {t.session_id for d in plans for t in system.tickets(d)}
            and any(e["event"] == "accepted" for d in late for e in system.events(d))
        ),
        CORRECTNESS_TIMEOUT_S,
        "the tickets of the supplies that ended meanwhile, and the late driver's request accepted",
    )
    served = scenario.mark("served_at")
    said = warnings_since(sizes, system)
    assert_every_request_answered(system, plans)
    cluster.node(victims[1]).start(timeout_s=BROKER_START_TIMEOUT_S)
    wait_until(lambda: cluster.in_sync(SYNCED_TOPICS), SYNC_TIMEOUT_S, "every partition on all three nodes")
    assert_readings_shown_in_order_and_the_meters(system, plans, session_s)
    system.assert_only_restarted(before, set())

    # Calm: whatever a process said from the fault until all was delivered, it said once
    # (and, as `finish` checks, without a traceback or an error).
    assert not {name: repeated(lines) for name, lines in said.items() if repeated(lines)}, said
    warnings = {name.removesuffix(".log"): len(lines) for name, lines in said.items() if lines}
    waited = blip(system, plans, fault_wall, returned_wall)
    figures.add(
        f"SIGKILL brokers {victims[0]} and {victims[1]}: {outage_s:.1f} s with one broker; meanwhile "
        f"the engines' outboxes held {sum(buffered.values())} events; warnings logged until all was "
        f"delivered: {warnings or 'none'}"
    )
    figures.add(
        f"  broker {victims[0]} back: registered after {rejoin_s:.1f} s; every ticket of the outage shown "
        f"and the late request accepted {served - returned:.1f} s after its restart; longest wait for "
        f"the next reading {waited.longest_reading:.2f} s"
    )
    row = scenario.finish(restarted=[])
    row.update(longest_reading_wait_s=waited.longest_reading, outage_s=outage_s)
