"""`evcharge demo` as a user runs it: one real process that starts the others, on a real broker.

However it ends (its drivers done, q or Ctrl-C in its panel, SIGINT, SIGTERM, a closed
terminal, SIGKILL), nothing it started may outlive it, the Kafka it started included.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from evcharge.devtools.demo import driver_ids, driver_summary, engine_ports, generated_requests, status_line
from evcharge.driver.requests_file import parse_requests
from evcharge.runtime.ports import free_port, free_ports, port_free
from tests.harness import wait_until
from tests.test_lifetime import runs

# ---------------------------------------------------------------- pure helpers, no broker


def test_status_line_names_each_cp_and_who_charges_where() -> None:
    cps = [
        {"cp_id": "CP-001", "status": "ON", "session": None},
        {
            "cp_id": "CP-002",
            "status": "SUPPLYING",
            "session": {"driver_id": "driver-alice", "wh": 12},
        },
        {"cp_id": "CP-003", "status": None, "session": None},
    ]
    assert status_line(cps) == "CP-001 ON, CP-002 SUPPLYING (driver-alice 0.012 kWh), CP-003 ?"
    assert status_line([]) == "no charging point registered yet"


def test_driver_summary_comes_from_the_driver_s_own_summary_event(tmp_path) -> None:
    events = tmp_path / "driver-bob.events.jsonl"
    summary = {
        "event": "summary", "requests": 2, "wh": 48, "micro_eur": 14_400, "unanswered": 0,
        "outcomes": [
            {"index": 0, "cp_id": "CP-002", "outcome": "completed", "wh": 48, "micro_eur": 14_400},
            {"index": 1, "cp_id": "CP-009", "outcome": "denied", "wh": None, "micro_eur": None},
        ],
    }  # fmt: skip
    events.write_text(json.dumps({"event": "ready"}) + "\n" + json.dumps(summary) + "\n")
    lines = driver_summary(events, "driver-bob")
    assert lines[0] == "driver-bob: 2 requests, 0.048 kWh, 0.0144 EUR"
    assert "CP-002" in lines[1] and "0.048 kWh" in lines[1] and "denied" in lines[2]
    assert driver_summary(tmp_path / "none.jsonl", "driver-bob") == [
        "driver-bob gave no summary (it did not finish its requests)"
    ]


def test_drivers_beyond_the_named_ones_get_numbers_and_seeded_requests() -> None:
    assert driver_ids(3) == ["driver-alice", "driver-bob", "driver-carol"]
    assert driver_ids(12)[-1] == "driver-12"
    text = generated_requests("driver-carol", ["CP-001", "CP-002"], seed=2)
    assert text == generated_requests("driver-carol", ["CP-001", "CP-002"], seed=2)
    assert {line.cp_id for line in parse_requests(text)} <= {"CP-001", "CP-002"}


def test_an_engine_port_already_taken_is_replaced_by_a_free_one() -> None:
    taken = {5001}
    ports = engine_ports(2, taken)
    assert ports[0] != 5001 and ports[0] != ports[1]
    assert taken == {5001, *ports}


# ------------------------------------------------------------ the real thing, real processes

REQUESTS = {"driver-alice": ["CP-001", "CP-001"], "driver-bob": ["CP-002", "CP-002"]}
# More charges than a test waits for: a demo ended by a signal still has a driver at work.
LONG_REQUESTS = {"driver-alice": ["CP-001"] * 30}
# The demo, central, an engine, a monitor and a driver: what leftovers() must see at work.
ONE_CP_PROCESSES = 5
DEMO_START_S = 90.0  # its own Kafka included: formatting and starting it take about 5 s here
ORPHANS_END_S = 30.0


def processes(matches: Callable[[str, str], bool]) -> list[str]:
    """`pid: command line` of live processes for which `matches(cmdline, cwd)` holds."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone meanwhile, or not ours to look at
        if matches(cmdline, cwd):
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def leftovers(run_dir: Path) -> list[str]:
    """Live processes that belong to this demo: its run dir in their command line, or as cwd."""
    marker = str(run_dir)
    return processes(lambda cmdline, cwd: marker in cmdline or cwd == marker)


def kafka_jvms(data_dir: Path) -> list[str]:
    """Live JVMs of the Kafka whose data dir is `data_dir` (the broker, or its storage formatter)."""
    marker = str(data_dir)
    return processes(lambda cmdline, cwd: "java" in cmdline and marker in cmdline)


def kafka_pid(data_dir: Path) -> int:
    return int((data_dir / "broker.pid").read_text())


def kill(found: list[str]) -> None:
    for line in found:
        with suppress(ProcessLookupError):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


def free_kafka_port() -> int:
    """A free port whose next one is free too: the demo's Kafka puts its controller there."""
    while True:
        port = free_port()
        if port < 65535 and port_free("127.0.0.1", port + 1):
            return port


@dataclass(frozen=True)
class Place:
    """Where a demo runs: Kafka (and the data dir of the one it starts), central's ports."""

    kafka: str
    tcp_port: int
    http_port: int
    kafka_dir: Path | None = None

    @classmethod
    def on(cls, kafka: str, kafka_dir: Path | None = None) -> Place:
        tcp_port, http_port = free_ports(2)
        return cls(kafka, tcp_port, http_port, kafka_dir)

    @classmethod
    def with_own_kafka(cls, tmp_path: Path) -> Place:
        """Nothing answers at its Kafka address: the demo starts a Kafka there, in tmp_path."""
        return cls.on(f"127.0.0.1:{free_kafka_port()}", (tmp_path / "kafka").resolve())


class Terminal:
    """A pseudo-terminal as a terminal emulator sees it: what is drawn, keys typed, closed."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        self._screen = bytearray()
        self._closing = threading.Event()
        # Drained all along, as an emulator does: a full pty would block the panel's writes.
        self._reader = threading.Thread(target=self._read, name="test-terminal", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            readable, _, _ = select.select([self.master], [], [], 0.1)
            if not readable:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every process on the terminal has let go of it
                return
            if not data:
                return
            self._screen += data

    def screen(self) -> bytes:
        return bytes(self._screen)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        """As closing the window does: the kernel hangs the terminal up. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._reader.join(5)  # a read in progress would keep the terminal open
        os.close(self.master)
        os.close(self.slave)


# Runs the demo as the terminal's session leader, as a login shell would be: the kernel
# sends it SIGHUP when the terminal is closed, and typed Ctrl-C reaches its process group.
_ON_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@dataclass
class RunningDemo:
    process: subprocess.Popen[str]
    run_dir: Path
    place: Place
    terminal: Terminal | None  # the one it runs on with its panel, else its output is piped

    def wait_started(self, cps: int = 1, drivers: int = 1) -> None:
        """Every CP ON at its central and every driver ready: the whole demo at work."""
        want = {f"CP-{i:03d}": "ON" for i in range(1, cps + 1)}
        logs = [self.run_dir / "logs" / f"{driver_id}.log" for driver_id in driver_ids(drivers)]

        def at_work() -> bool:
            ready = all(log.is_file() and " ready (Kafka " in log.read_text() for log in logs)
            return ready and cp_statuses(self.place.http_port) == want

        try:
            wait_until(at_work, DEMO_START_S, f"{cps} CP(s) ON and {drivers} driver(s) ready", interval_s=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.progress()}") from None

    def progress(self) -> str:
        """What the demo said so far (logs/demo.log), for a failure's message."""
        path = self.run_dir / "logs" / "demo.log"
        return f"{path}:\n{path.read_text()}" if path.is_file() else f"no {path}"

    def assert_nothing_left(self) -> None:
        assert leftovers(self.run_dir) == []
        if self.place.kafka_dir is not None:
            assert kafka_jvms(self.place.kafka_dir) == []


@contextmanager
def running_demo(
    tmp_path: Path,
    place: Place,
    *extra: str,
    cps: int = 2,
    drivers: int = 2,
    requests: dict[str, list[str]] = REQUESTS,
    name: str = "run",
    panel: bool = False,
) -> Iterator[RunningDemo]:
    """`evcharge demo` with short requests files: `--no-panel` with its output piped, or
    `--panel` on a `Terminal` of its own.

    Whatever the test did, nothing of it outlives it: not the demo, its children or its Kafka.
    """
    requests_dir = tmp_path / f"{name}-requests"
    requests_dir.mkdir()
    for driver_id, cps_asked in requests.items():
        (requests_dir / f"{driver_id}.txt").write_text("\n".join(cps_asked) + "\n")
    run_dir = (tmp_path / name).resolve()
    kafka_dir = ["--kafka-dir", str(place.kafka_dir)] if place.kafka_dir is not None else []
    demo_args = [
        "-m", "evcharge", "demo", "--panel" if panel else "--no-panel", "--kafka", place.kafka,
        *kafka_dir, "--cps", str(cps), "--drivers", str(drivers), "--session-seconds", "2",
        "--interval", "0.5", "--tcp-port", str(place.tcp_port), "--http-port", str(place.http_port),
        "--run-dir", str(run_dir), "--requests-dir", str(requests_dir), *extra,
    ]  # fmt: skip
    with ExitStack() as cleanup:
        terminal = None
        if panel:
            terminal = Terminal()
            cleanup.callback(terminal.close)
            demo = subprocess.Popen(
                [sys.executable, "-c", _ON_TERMINAL, *demo_args],
                stdin=terminal.slave,
                stdout=terminal.slave,
                stderr=terminal.slave,
                env={**os.environ, "TERM": "xterm-256color"},
                text=True,
                start_new_session=True,
            )
        else:
            demo = subprocess.Popen(
                [sys.executable, *demo_args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        cleanup.callback(_end_everything, demo, run_dir, place.kafka_dir)
        yield RunningDemo(demo, run_dir, place, terminal)


def _end_everything(demo: subprocess.Popen[str], run_dir: Path, kafka_dir: Path | None) -> None:
    if demo.poll() is None:
        os.killpg(demo.pid, signal.SIGKILL)  # the demo and central's panel beside it
        demo.wait(10)
    if demo.stdout is not None:
        demo.stdout.close()
    kill(leftovers(run_dir))
    if kafka_dir is not None:
        kill(kafka_jvms(kafka_dir))


def cp_statuses(http_port: int) -> dict[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/cp", timeout=2) as response:
        return {cp["cp_id"]: cp["status"] for cp in json.load(response)["charging_points"]}


@pytest.mark.kafka
@pytest.mark.processes
def test_the_demo_runs_every_driver_to_its_summary_and_leaves_no_process_behind(
    kafka_broker, tmp_path
) -> None:
    with running_demo(tmp_path, Place.on(kafka_broker.bootstrap)) as demo:
        output, _ = demo.process.communicate(timeout=60)
        assert demo.process.returncode == 0, output
        assert f"logs: {demo.run_dir / 'logs'}" in output
        for driver_id in REQUESTS:
            screen = (demo.run_dir / "logs" / f"{driver_id}.log").read_text()
            assert "summary: 2 requests" in screen, screen
            events_file = demo.run_dir / "logs" / f"{driver_id}.events.jsonl"
            events = [json.loads(line) for line in events_file.read_text().splitlines()]
            assert sum(e["event"] == "ticket" for e in events) == 2, screen
            assert f"{driver_id}: 2 requests" in output  # shown again in the demo's own summary
        demo.assert_nothing_left()


@pytest.mark.kafka
@pytest.mark.processes
def test_the_secure_demo_charges_over_tls_scram_and_signatures_on_a_broker_of_its_own(tmp_path) -> None:
    place = Place.with_own_kafka(tmp_path)
    requests = {"driver-alice": ["CP-001"]}
    with running_demo(tmp_path, place, "--secure", cps=1, drivers=1, requests=requests) as demo:
        output, _ = demo.process.communicate(timeout=150)
        assert demo.process.returncode == 0, output
        screen = (demo.run_dir / "logs" / "driver-alice.log").read_text()
        assert "summary: 1 requests" in screen, screen
        central = (demo.run_dir / "logs" / "central.log").read_text()
        assert "HTTP API on https://" in central and "as central" in central, central
        assert "(TLS)" in central
        assert place.kafka_dir is not None
        properties = (place.kafka_dir / "server.properties").read_text()
        assert "advertised.listeners=SASL_SSL://" in properties, "clients reach the broker only over SASL_SSL"
        demo.assert_nothing_left()


@pytest.mark.kafka
@pytest.mark.processes
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_to_the_demo_stops_every_process_of_it(kafka_broker, tmp_path, signum) -> None:
    place = Place.on(kafka_broker.bootstrap)
    with running_demo(tmp_path, place, cps=1, drivers=1, requests=LONG_REQUESTS) as demo:
        demo.wait_started()
        assert len(leftovers(demo.run_dir)) >= ONE_CP_PROCESSES
        demo.process.send_signal(signum)
        output, _ = demo.process.communicate(timeout=30)
        assert demo.process.returncode == 128 + signum, output
        assert f"{signum.name} received: stopping everything" in output
        demo.assert_nothing_left()


@pytest.mark.kafka
@pytest.mark.processes
def test_a_second_signal_kills_every_process_of_the_demo_at_once(kafka_broker, tmp_path) -> None:
    place = Place.on(kafka_broker.bootstrap)
    with running_demo(tmp_path, place, cps=1, drivers=1, requests=LONG_REQUESTS) as demo:
        demo.wait_started()
        # Two different signals: two of the same kind may reach the demo as one.
        demo.process.send_signal(signal.SIGTERM)
        demo.process.send_signal(signal.SIGINT)
        output, _ = demo.process.communicate(timeout=30)
        assert demo.process.returncode == 130, output
        assert "second signal: killing every process of the demo" in output
        wait_until(lambda: not leftovers(demo.run_dir), 10, "the SIGKILLed children to be gone")


@pytest.mark.kafka
@pytest.mark.processes
def test_a_sigkilled_demo_takes_every_child_and_its_kafka_along_and_its_ports_serve_again(
    tmp_path,
) -> None:
    place = Place.with_own_kafka(tmp_path)
    assert place.kafka_dir is not None
    with running_demo(tmp_path, place, cps=1, drivers=1, requests=LONG_REQUESTS, name="first") as demo:
        demo.wait_started()
        jvm = kafka_pid(place.kafka_dir)
        assert kafka_jvms(place.kafka_dir) and len(leftovers(demo.run_dir)) >= ONE_CP_PROCESSES
        demo.process.kill()  # the demo alone: nothing of it can stop anything now
        demo.process.wait(10)
        # Each child is told by the kernel (SIGTERM) and stops in its own orderly way.
        wait_until(
            lambda: not leftovers(demo.run_dir) and not kafka_jvms(place.kafka_dir) and not runs(jvm),
            ORPHANS_END_S,
            "the SIGKILLed demo's children and its Kafka to end",
            interval_s=0.1,
        )
    # The next demo on the same ports and Kafka data dir starts as on a fresh machine.
    with running_demo(tmp_path, place, cps=1, drivers=1, requests=LONG_REQUESTS, name="second") as demo:
        demo.wait_started()
        assert kafka_pid(place.kafka_dir) != jvm
        demo.process.send_signal(signal.SIGTERM)
        output, _ = demo.process.communicate(timeout=60)
        assert demo.process.returncode == 128 + signal.SIGTERM, output
        assert "Kafka stopped" in output
        demo.assert_nothing_left()


@pytest.mark.kafka
@pytest.mark.processes
@pytest.mark.parametrize("ending", ["q", "ctrl-c", "SIGKILL"])
def test_the_panel_demo_ends_by_q_ctrl_c_or_sigkill_with_every_process_of_it(
    kafka_broker, tmp_path, ending
) -> None:
    place = Place.on(kafka_broker.bootstrap)
    with running_demo(tmp_path, place, cps=1, drivers=1, requests=LONG_REQUESTS, panel=True) as demo:
        terminal = demo.terminal
        assert terminal is not None
        demo.wait_started()
        wait_until(lambda: b"q quit central" in terminal.screen(), 30, "the panel and its keys")
        if ending == "SIGKILL":
            # Central's panel shares the demo's terminal and process group, but not its death.
            demo.process.kill()
            demo.process.wait(10)
            wait_until(lambda: not leftovers(demo.run_dir), ORPHANS_END_S, "the demo's children to end")
        else:
            # Ctrl-C reaches the demo and central's panel both, the terminal's foreground group.
            terminal.type(b"q" if ending == "q" else b"\x03")
            code = 0 if ending == "q" else 128 + signal.SIGINT
            assert demo.process.wait(30) == code, demo.progress()
            demo.assert_nothing_left()


@pytest.mark.kafka
@pytest.mark.processes
def test_closing_the_panels_terminal_stops_the_demo_its_children_and_its_kafka(tmp_path) -> None:
    place = Place.with_own_kafka(tmp_path)
    assert place.kafka_dir is not None
    with running_demo(tmp_path, place, cps=1, drivers=1, requests=LONG_REQUESTS, panel=True) as demo:
        terminal = demo.terminal
        assert terminal is not None
        demo.wait_started()
        wait_until(lambda: b"q quit central" in terminal.screen(), 30, "the panel and its keys")
        jvm = kafka_pid(place.kafka_dir)
        # A shell whose terminal closes hangs up its job (the demo and central's panel),
        # then the kernel hangs up the terminal's session leader (here the demo) again.
        os.killpg(demo.process.pid, signal.SIGHUP)
        terminal.close()
        assert demo.process.wait(60) == 128 + signal.SIGHUP, demo.progress()
        log = (demo.run_dir / "logs" / "demo.log").read_text()
        assert "SIGHUP received: stopping everything" in log
        assert "Kafka stopped" in log
        assert not runs(jvm)
        demo.assert_nothing_left()
