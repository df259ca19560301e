"""`evcharge demo` as a user runs it: one real process that starts the others, on a real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from evcharge.devtools.demo import driver_ids, driver_summary, engine_ports, generated_requests, status_line
from evcharge.driver.requests_file import parse_requests
from tests.harness import wait_until
from tests.kafka_fixture import free_ports

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
    assert driver_summary(tmp_path / "none.jsonl", "driver-bob") == ["driver-bob gave no summary (it did not finish its requests)"]


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


def leftovers(run_dir: Path) -> list[str]:
    """Live processes that belong to this demo: its run dir in their command line, or as cwd."""
    found = []
    marker = str(run_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone meanwhile, or not ours to look at
        if marker in cmdline or cwd == marker:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@contextmanager
def running_demo(
    kafka: str, tmp_path: Path, *extra: str
) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    """`evcharge demo --no-panel` on 2 CPs and 2 drivers with short request files.

    Yields (process, run dir, HTTP port). Whatever the test did, nothing of it outlives it.
    """
    requests_dir = tmp_path / "requests"
    requests_dir.mkdir()
    for driver_id, cps in REQUESTS.items():
        (requests_dir / f"{driver_id}.txt").write_text("\n".join(cps) + "\n")
    run_dir = (tmp_path / "run").resolve()
    tcp_port, http_port = free_ports(2)
    command = [
        sys.executable, "-m", "evcharge", "demo", "--no-panel", "--kafka", kafka,
        "--cps", "2", "--drivers", "2", "--session-seconds", "2", "--interval", "0.5",
        "--tcp-port", str(tcp_port), "--http-port", str(http_port),
        "--run-dir", str(run_dir), "--requests-dir", str(requests_dir), *extra,
    ]  # fmt: skip
    demo = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        yield demo, run_dir, http_port
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
        for line in leftovers(run_dir):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


def cp_statuses(http_port: int) -> dict[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/cp", timeout=2) as response:
        return {cp["cp_id"]: cp["status"] for cp in json.load(response)["charging_points"]}


@pytest.mark.kafka
@pytest.mark.processes
def test_the_demo_runs_every_driver_to_its_summary_and_leaves_no_process_behind(
    kafka_broker, tmp_path
) -> None:
    with running_demo(kafka_broker.bootstrap, tmp_path) as (demo, run_dir, _):
        output, _ = demo.communicate(timeout=60)
        assert demo.returncode == 0, output
        assert f"logs: {run_dir / 'logs'}" in output
        for driver_id in REQUESTS:
            screen = (run_dir / "logs" / f"{driver_id}.log").read_text()
            assert "summary: 2 requests" in screen, screen
            events = [json.loads(line) for line in (run_dir / "logs" / f"{driver_id}.events.jsonl").read_text().splitlines()]
            assert sum(e["event"] == "ticket" for e in events) == 2, screen
            assert f"{driver_id}: 2 requests" in output  # shown again in the demo's own summary
        assert leftovers(run_dir) == []


@pytest.mark.kafka
@pytest.mark.processes
def test_ctrl_c_stops_every_process_of_the_demo(kafka_broker, tmp_path) -> None:
    with running_demo(kafka_broker.bootstrap, tmp_path, "--duration", "600") as started:
        demo, run_dir, http = started
        wait_until(
            lambda: cp_statuses(http) == {"CP-001": "ON", "CP-002": "ON"},
            30,
            "both CPs ON at the demo's central",
            interval_s=0.2,
        )
        # The demo, central, 2 engines, 2 monitors (and drivers): the check below can see them.
        assert len(leftovers(run_dir)) >= 6
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=30)
        assert demo.returncode in (0, 130), output
        assert "SIGINT received" in output
        assert leftovers(run_dir) == []
