"""`evcharge sim`: the report's arithmetic, the simulated engines and drivers in memory, and a
real run of the simulator against a real central on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from pathlib import Path

import pytest
from rich.console import Console

from evcharge.central.provenance import event_forgery, request_unproven
from evcharge.central.state import CentralState
from evcharge.cp.engine_key import EventSigner, keep_key
from evcharge.cp.engine_state import EngineState
from evcharge.cp.settings import engine_key_path
from evcharge.devtools.procs import running
from evcharge.devtools.sim.drivers import DriverSettings, SimDriver
from evcharge.devtools.sim.fleet import Fleet, FleetSettings, Publisher, SimEngine
from evcharge.devtools.sim.report import LatencySummary, SimStats, percentile, render
from evcharge.devtools.supervisor import Child
from evcharge.protocol import signing
from evcharge.protocol.messages import (
    ChargeRequest,
    ChargingProgress,
    DenyCode,
    EndReason,
    Health,
    HealthCheck,
    HealthStatus,
    MeterReading,
    RequestAccepted,
    RequestDenied,
    SessionEnded,
    SessionStarted,
    StartSupply,
    StopCp,
    Ticket,
)
from evcharge.protocol.topics import Topic, route
from evcharge.runtime.shutdown import EXIT_INTERRUPTED
from evcharge.runtime.tcp import FramedConnection
from tests.harness import wait_until

# ------------------------------------------------------------------ the report, pure


def test_percentile_is_nearest_rank_and_every_figure_is_a_real_sample() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    random.Random(3).shuffle(values)
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([0.25, 0.1, 0.4], 50) == 0.25
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary_of_few_and_no_samples() -> None:
    summary = LatencySummary.of([0.3, 0.1, 0.2, 0.9])
    assert (summary.count, summary.p50, summary.p95, summary.p99, summary.max) == (4, 0.2, 0.9, 0.9, 0.9)
    assert LatencySummary.of([]) == LatencySummary(0, None, None, None, None)


def test_counters_add_up_and_the_json_and_text_say_the_same() -> None:
    stats = SimStats(cps=3, drivers=2)
    stats.cps_started = stats.cps_registered = 3
    stats.registration_s = 1.5
    stats.requests_sent = 5
    stats.accepted = 3
    stats.denied.update(["busy", "busy", "broken"])
    stats.tickets.update(["completed", "completed", "fault"])
    stats.error("no answer to a request within 30 s")
    stats.error("Kafka delivery failed: [boom]", 2)
    for seconds in (0.01, 0.02, 0.03):
        stats.record("accepted", seconds)
    assert (stats.total_denied, stats.total_tickets, stats.total_errors) == (3, 3, 3)
    assert stats.registrations_per_s == 2.0
    report = stats.to_json({"cps": 3})
    assert report["cps"]["registered"] == 3
    assert report["requests"]["denied"] == {"busy": 2, "broken": 1}
    assert report["errors"]["total"] == 3
    assert report["latency_s"]["accepted"]["p50"] == 0.02
    assert report["latency_s"]["ticket"]["count"] == 0
    json.dumps(report)  # serialisable as it is
    console = Console(record=True, width=160)
    console.print(render(stats))
    text = console.export_text()
    assert "3 of 3" in text and "(2.0 CPs/s)" in text
    assert "busy 2, broken 1" in text
    assert "Kafka delivery failed: [boom]" in text  # markup in an error is shown, not parsed
    assert "errors 3" in stats.progress_line(10)


# ------------------------------------------------ simulated engines and drivers, in memory


class _Recorder:
    """Stands in for the shared producer: keeps what was published, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, object]] = []
        self._published = asyncio.Event()

    async def publish(self, message: object, proof: object = None) -> bool:
        self.sent.append((*route(message), message))  # type: ignore[arg-type]
        self._published.set()
        return True

    async def wait_for(self, kind: type) -> object:
        while True:
            for _, _, message in self.sent:
                if isinstance(message, kind):
                    return message
            self._published.clear()
            await self._published.wait()


def _start(cp_id: str, session_id: str = "s1") -> StartSupply:
    return StartSupply(
        cp_id=cp_id,
        session_id=session_id,
        driver_id="d1",
        price=300_000,
    )


async def test_simulated_engine_answers_the_real_health_protocol() -> None:
    stats = SimStats(cps=1, drivers=0)
    engine = SimEngine(EngineState("SIMT-1", 22_000, 300_000), _Recorder(), stats, lambda e, s: None)  # type: ignore[arg-type]
    port = await engine.start()
    try:
        conn = await FramedConnection.open("127.0.0.1", port, timeout_s=2)
        reply = await conn.request(HealthCheck(), timeout_s=2)
        assert isinstance(reply, HealthStatus)
        assert (reply.cp_id, reply.health, reply.supplying) == ("SIMT-1", Health.OK, False)
        assert engine.checked
        await engine.raise_fault(5.0)
        reply = await conn.request(HealthCheck(), timeout_s=2)
        assert isinstance(reply, HealthStatus) and reply.health is Health.KO
        await conn.close()
    finally:
        await engine.close()
    assert stats.faults_injected == 1 and not stats.errors


async def test_the_fleet_clock_meters_each_session_on_its_own_cadence_until_it_ends() -> None:
    stats = SimStats(cps=1, drivers=0)
    recorder = _Recorder()
    settings = FleetSettings(
        1, "SIMT", (("127.0.0.1", 1),), 0, session_s=0.3, meter_interval_s=0.1, fault_rate_per_min=0
    )
    fleet = Fleet(settings, recorder, stats, random.Random(1))  # type: ignore[arg-type]
    engine = SimEngine(
        EngineState("SIMT-1", 22_000, 300_000, max_session_ms=300), recorder, stats, fleet._supply_began
    )  # type: ignore[arg-type]
    fleet.engines["SIMT-1"] = engine
    stop = asyncio.Event()
    clock = asyncio.create_task(fleet._clock(stop))
    try:
        await engine.apply(_start("SIMT-1"), set())
        await engine.apply(_start("SIMT-1"), set())  # delivered twice: still one session, one schedule
        async with asyncio.timeout(5):
            await recorder.wait_for(SessionEnded)
    finally:
        stop.set()
        await clock
    events = [m for _, _, m in recorder.sent]
    assert [type(e) for e in events] == [
        SessionStarted,
        MeterReading,
        MeterReading,
        MeterReading,
        SessionEnded,
    ]
    assert [e.seq for e in events] == [0, 1, 2, 3, 4]  # type: ignore[attr-defined]
    assert events[-1].reason is EndReason.COMPLETED  # type: ignore[attr-defined]
    assert {key for _, key, _ in recorder.sent} == {"SIMT-1"}
    await engine.apply(StopCp(cp_id="SIMT-1"), set())
    assert engine.state.stopped and stats.commands == {"StartSupply": 2, "StopCp": 1}


async def test_a_simulated_driver_records_each_step_and_ignores_what_is_not_its_own() -> None:
    stats = SimStats(cps=1, drivers=1)
    recorder = _Recorder()
    settings = DriverSettings(drivers=1, driver_prefix="d", request_rate=1, ramp_up_s=0, session_s=1)
    driver = SimDriver("d-0001", settings, recorder, lambda: "SIMT-1", stats, random.Random(1))  # type: ignore[arg-type]

    async def central() -> None:
        request = await recorder.wait_for(ChargeRequest)
        assert isinstance(request, ChargeRequest)
        driver.on_update(
            RequestDenied(
                driver_id="d-0001", request_id="old", cp_id="SIMT-1", code=DenyCode.BUSY, reason="x"
            )
        )
        driver.on_update(
            RequestAccepted(
                driver_id="d-0001",
                request_id=request.request_id,
                session_id="s1",
                cp_id="SIMT-1",
                price=300_000,
            )
        )
        progress = dict(
            driver_id="d-0001", session_id="s1", cp_id="SIMT-1", power_w=22_000, wh=0, micro_eur=0
        )
        driver.on_update(ChargingProgress(seq=0, **progress))
        driver.on_update(ChargingProgress(seq=1, **progress))
        driver.on_update(
            Ticket(
                driver_id="d-0001",
                session_id="s1",
                request_id=request.request_id,
                cp_id="SIMT-1",
                started_at=1,
                ended_at=2,
                wh=100,
                micro_eur=30_000,
                price=300_000,
                end_reason=EndReason.COMPLETED,
            )
        )

    async with asyncio.timeout(5):
        await asyncio.gather(driver._request("SIMT-1"), central())
    assert (stats.requests_sent, stats.accepted, stats.total_denied) == (1, 1, 0)
    assert stats.tickets == {"completed": 1}
    assert {k: len(v) for k, v in stats.latencies.items() if v} == {
        "accepted": 1,
        "first_reading": 1,
        "ticket": 1,
    }
    assert stats.late_updates == 1 and not stats.errors


class _Producer:
    """Stands in for aiokafka's producer under the real `Publisher`: keeps each record as sent."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, signing.Headers | None]] = []
        self.sent = asyncio.Event()

    async def send(
        self, topic: str, payload: bytes, key: bytes, headers: signing.Headers | None = None
    ) -> asyncio.Future[None]:
        self.records.append((topic, payload, headers))
        self.sent.set()
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


async def test_simulated_engines_sign_their_events_and_drivers_prove_their_requests_as_central_checks(
    tmp_path,
) -> None:
    """What a secure central would accept: judged by central's own checks, not re-derived here."""
    cp_key, token = signing.new_key(), signing.new_token()
    keep_key(engine_key_path(tmp_path, "SIMT-9"), cp_key)
    central = CentralState(engine_keys={"SIMT-9": cp_key}, driver_keys={"d-0001": signing.driver_key(token)})
    stats = SimStats(cps=1, drivers=1)
    producer = _Producer()
    publisher = Publisher(producer, stats)  # type: ignore[arg-type]
    signer = EventSigner(engine_key_path(tmp_path, "SIMT-9"), required=True)
    engine = SimEngine(EngineState("SIMT-9", 22_000, 300_000), publisher, stats, lambda e, s: None, signer)
    await engine.apply(_start("SIMT-9"), set())
    assert producer.records and all(topic == Topic.CP_EVENTS for topic, _, _ in producer.records)
    assert [event_forgery(central, "SIMT-9", payload, h) for _, payload, h in producer.records] == [
        None
    ] * len(producer.records)
    # The check is not vacuous: the same event signed with another key is a forgery to central.
    other = [(signing.SIGNATURE_HEADER, signing.sign(signing.new_key(), producer.records[0][1]))]
    assert event_forgery(central, "SIMT-9", producer.records[0][1], other)

    producer.records.clear()
    settings = DriverSettings(drivers=1, driver_prefix="d", request_rate=1, ramp_up_s=0, session_s=1)
    for driver_token, verdict in ((token, None), (signing.new_token(), "bad_proof")):
        producer.sent.clear()
        driver = SimDriver(
            "d-0001", settings, publisher, lambda: "SIMT-9", stats, random.Random(1), driver_token
        )
        asking = asyncio.ensure_future(driver._request("SIMT-9"))
        async with asyncio.timeout(5):
            await producer.sent.wait()
        asking.cancel()
        await asyncio.gather(asking, return_exceptions=True)
        topic, payload, headers = producer.records.pop()
        refused = request_unproven(central, "d-0001", payload, headers)
        assert topic == Topic.DRIVER_REQUESTS
        assert (refused[0].value if refused else None) == verdict


# ------------------------------------------------------------- real central, real Kafka


@pytest.mark.kafka
@pytest.mark.processes
def test_the_simulator_registers_its_fleet_and_charges_without_an_error(system) -> None:
    system.start_central()
    prefix = system.ident("SIM")
    report_path = system.root / "sim.json"
    sim = Child(
        "sim",
        [
            "sim",
            "--cps", "30",
            "--drivers", "20",
            "--duration", "10",
            "--ramp-up", "3",
            "--request-rate", "4",
            "--session-seconds", "2",
            "--kafka", system.kafka,
            "--central", f"127.0.0.1:{system.tcp_port}",
            "--central-url", system.url,
            "--cp-prefix", prefix,
            "--driver-prefix", system.ident("sim-driver"),
            "--seed", "7",
            "--json", str(report_path),
        ],
        system.logs / "sim.log",
    )  # fmt: skip
    sim.start()
    try:
        code = sim.wait(90)
    finally:
        sim.stop()
    output = sim.output()
    assert code == 0, f"sim exited with {code}:\n{output[-3000:]}"
    assert "30 of 30" in output and "errors" in output
    report = json.loads(report_path.read_text())
    assert report["cps"]["registered"] == 30
    assert report["cps"]["listed_at_central"] == 30
    assert report["errors"] == {"total": 0, "by_kind": {}}
    assert report["tickets"]["total"] > 0
    assert report["tickets"]["by_end_reason"].keys() <= {"completed"}
    assert report["requests"]["accepted"] == report["tickets"]["total"]
    listed = [cp for cp in system.get("/cp")["charging_points"] if cp["cp_id"].startswith(prefix + "-")]
    assert len(listed) == 30
    assert system.unexpected_log_lines() == {}


def _sim_args(system, prefix: str, *flags: str) -> list[str]:
    return [
        "sim",
        "--kafka", system.kafka,
        "--central", f"127.0.0.1:{system.tcp_port}",
        "--central-url", system.url,
        "--cp-prefix", prefix,
        "--driver-prefix", system.ident("sim-driver"),
        *flags,
    ]  # fmt: skip


def _children(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (from /proc: what the kernel says, not a log)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid) and fields[0] != "Z":  # ppid; a zombie has exited already
            found.add(int(stat.parent.name))
    return found


def _worker_number(pid: int) -> int:
    """Which worker `pid` runs: its `--worker K` (from its command line in /proc)."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return int(args[args.index("--worker") + 1])


@pytest.mark.kafka
@pytest.mark.processes
def test_the_simulator_split_over_two_processes_reports_one_fleet_and_its_own_cpu(system) -> None:
    system.start_central()
    prefix = system.ident("SIMP")
    report_path = system.root / "sim.json"
    sim = Child(
        "sim",
        _sim_args(
            system, prefix,
            "--processes", "2",
            "--cps", "20",
            "--drivers", "6",
            "--duration", "6",
            "--ramp-up", "2",
            "--request-rate", "3",
            "--session-seconds", "2",
            "--seed", "7",
            "--json", str(report_path),
        ),
        system.logs / "sim.log",
    ).start()  # fmt: skip
    try:
        code = sim.wait(90)
    finally:
        sim.stop()
    output = sim.output()
    assert code == 0, f"sim exited with {code}:\n{output[-3000:]}"
    assert "20 of 20" in output and "sim processes" in output
    report = json.loads(report_path.read_text())
    assert report["cps"]["started"] == report["cps"]["registered"] == 20
    assert report["cps"]["listed_at_central"] == 20
    assert report["latency_s"]["cp_registered"]["count"] == 20
    assert report["errors"] == {"total": 0, "by_kind": {}}
    assert report["requests"]["accepted"] == report["tickets"]["total"] > 0
    assert report["tickets"]["by_end_reason"].keys() <= {"completed"}
    # Readings reached central and came back to the drivers as progress.
    assert report["latency_s"]["first_reading"]["count"] > 0
    assert report["central_counters"]["events_applied"] > 0
    workers = report["sim_workers"]
    assert [w["name"] for w in workers] == ["worker 1", "worker 2", "parent"]
    assert [w["cps"] for w in workers[:2]] == [
        f"{prefix}-0001..{prefix}-0010",
        f"{prefix}-0011..{prefix}-0020",
    ]
    assert len({w["pid"] for w in workers}) == 3 and sim.pid == workers[2]["pid"]
    assert all(
        w["cpu_s"] > 0 and w["user_s"] + w["sys_s"] == pytest.approx(w["cpu_s"], abs=0.02)
        for w in workers[:2]
    )
    process = report["sim_process"]
    assert process["processes"] == 2
    # The kernel's count of each worker, whole (its start too): at least what each said of its run.
    assert process["cpu_s"] >= sum(w["cpu_s"] for w in workers) - 0.05
    assert process["cpu_percent"] > 0
    listed = sorted(
        cp["cp_id"] for cp in system.get("/cp")["charging_points"] if cp["cp_id"].startswith(prefix)
    )
    # Each id once, none missing: the workers' ranges are disjoint and cover the fleet.
    assert listed == [f"{prefix}-{n:04d}" for n in range(1, 21)]
    assert system.unexpected_log_lines() == {}


@pytest.mark.kafka
@pytest.mark.processes
@pytest.mark.parametrize("ending", ["parent SIGTERM", "parent SIGKILL", "worker SIGKILL"])
def test_no_worker_outlives_the_simulator_and_a_dead_worker_fails_the_run_by_name(system, ending) -> None:
    system.start_central()
    prefix = system.ident("SIMK")
    sim = Child(
        "sim",
        _sim_args(system, prefix, "--processes", "2", "--cps", "4", "--drivers", "0", "--duration", "120"),
        system.logs / "sim.log",
    ).start()  # fmt: skip
    workers: dict[int, int] = {}
    try:
        # Every CP ON at central: both workers were told to go and run their fleets.
        wait_until(
            lambda: (
                sum(
                    cp["status"] == "ON"
                    for cp in system.get("/cp")["charging_points"]
                    if cp["cp_id"].startswith(prefix)
                )
                == 4
            ),
            60,
            "the fleet of both workers ON",
        )
        workers = {_worker_number(pid): pid for pid in _children(sim.pid)}
        assert sorted(workers) == [1, 2]
        # To the parent alone, not its process group: the workers hear of it only from their parent.
        if ending == "parent SIGTERM":
            os.kill(sim.pid, signal.SIGTERM)
        elif ending == "parent SIGKILL":
            os.kill(sim.pid, signal.SIGKILL)
        else:
            os.kill(workers[1], signal.SIGKILL)
        code = sim.wait(60)
        if ending == "parent SIGKILL":
            # Nobody is left to wait for them: each sees its stdin end (and the kernel's SIGTERM) and stops.
            wait_until(
                lambda: not any(running(pid) for pid in workers.values()), 60, "the orphaned workers to end"
            )
    finally:
        sim.stop()
        left = [pid for pid in workers.values() if running(pid)]
        for pid in left:  # a failed test leaves nothing behind either
            os.kill(pid, signal.SIGKILL)
    output = sim.output()
    assert not left, output[-3000:]
    if ending == "parent SIGKILL":
        assert code == -signal.SIGKILL
    elif ending == "parent SIGTERM":
        assert code == EXIT_INTERRUPTED, output[-3000:]
        assert "interrupted before the end" in output
    else:
        assert code == 1, output[-3000:]
        named = f"sim worker 1 (pid {workers[1]}, CPs {prefix}-0001..{prefix}-0002)"
        assert f"{named} exited with code -9 before its report" in output, output[-3000:]
