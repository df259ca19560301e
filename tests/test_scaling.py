"""Adding charging points and drivers at any moment never causes an error (S1-S5),
with real processes on a real broker."""

from __future__ import annotations

import sqlite3
import time

import pytest

from evcharge.devtools.probes import engine_status
from evcharge.devtools.supervisor import Child
from evcharge.runtime.ports import free_port
from tests.harness import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]


def test_cps_added_1_5_10_and_20_at_once_register_and_serve_while_a_session_runs(system) -> None:
    system.max_session_s = 3
    system.start_central()
    cp1 = system.add_cp(system.ident("CP-001"))
    status, body = system.post(
        "/request/charge", {"driver_id": system.ident("driver-long"), "cp_id": cp1.cp_id}
    )
    assert status == 201
    running = body["session_id"]
    system.max_session_s = 2
    number = 100
    timings = {}
    for batch in (1, 5, 10, 20):
        started = time.monotonic()
        new = []
        for _ in range(batch):
            number += 1
            new.append(system.add_cp(system.ident(f"CP-{number}"), wait=False))
        for cp in new:
            system.wait_status(cp.cp_id, "ON", 90)
            system.wait_engine_ready(cp)
        timings[batch] = time.monotonic() - started
        for cp in new:
            status, body = system.post(
                "/request/charge", {"driver_id": system.ident("driver-new"), "cp_id": cp.cp_id}
            )
            assert status == 201, f"{cp.cp_id} takes a charge at once: {body}"
        if system.status(cp1.cp_id) == "SUPPLYING":
            assert system.get(f"/cp/{cp1.cp_id}")["session"]["session_id"] == running, "untouched"
    listed = system.get("/cp")["charging_points"]
    assert len(listed) == 1 + 1 + 5 + 10 + 20
    wait_until(lambda: all(s["state"] == "ended" for s in system.sessions()), 60, "every session to end")
    assert {s["end_reason"] for s in system.sessions()} == {"completed"}
    assert system.unexpected_log_lines() == {}
    print(f"\nseconds until a batch of new CPs was all ON: {timings}")


def test_five_then_ten_drivers_added_at_once_are_all_served(system) -> None:
    system.max_session_s = 2
    system.start_central()
    cps = [system.add_cp(system.ident(f"CP-00{i}")) for i in range(1, 4)]
    for count in (5, 10):
        names = [system.ident(f"driver-{count}-{i}") for i in range(count)]
        for i, name in enumerate(names):
            # Two requests each, spread over the CPs; a busy CP is a denial, not an error.
            system.start_driver(name, [cps[i % 3].cp_id, cps[(i + 1) % 3].cp_id], interval_s=0.2)
        for name in names:
            system.wait_driver_done(name, 120)
            assert "summary: 2 requests" in system.drivers[name].output()
    served = [t for d in system.drivers for t in system.tickets(d)]
    assert len(served) >= 3, "several drivers charged"
    system.assert_invariants()
    assert system.unexpected_log_lines() == {}


def test_duplicate_ids_are_refused_and_the_live_instance_keeps_working(system) -> None:
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    alice = system.ident("driver-alice")
    system.start_driver(alice, [cp.cp_id], interval_s=0.2)

    second_engine = Child(
        "engine twin",
        [
            "engine",
            "--cp-id",
            cp.cp_id,
            "--port",
            "0",
            "--kafka",
            system.kafka,
            "--state-dir",
            str(system.state_dir),
            "--no-keys",
        ],
        system.logs / "engine-twin.log",
    ).start()
    assert second_engine.wait(30) == 2
    assert "another engine is already running" in second_engine.output()

    # A second engine with the same id elsewhere (another state dir, another port) is
    # not the one the CP's monitor vouches for: it must stay out of the CP's sessions.
    stray_port = free_port()
    stray = Child(
        "engine stray",
        ["engine", "--cp-id", cp.cp_id, "--port", str(stray_port), "--kafka", system.kafka,
         "--state-dir", str(system.root / "elsewhere"), "--no-keys"],
        system.logs / "engine-stray.log",
    ).start()  # fmt: skip
    wait_until(lambda: engine_status("127.0.0.1", stray_port), 30, "the stray engine to read its commands")

    second_monitor = Child(
        "monitor twin",
        [
            "monitor",
            "--cp-id",
            cp.cp_id,
            "--engine",
            f"127.0.0.1:{cp.engine_port}",
            "--central",
            f"127.0.0.1:{system.tcp_port}",
            "--claim-timeout",
            "1",
        ],
        system.logs / "monitor-twin.log",
    ).start()
    assert second_monitor.wait(30) == 2
    assert "already has a live monitor" in second_monitor.output()

    second_driver = Child(
        "driver twin",
        [
            "driver",
            "--id",
            alice,
            "--kafka",
            system.kafka,
            "--state-dir",
            str(system.state_dir),
            "--requests",
            "/dev/null",
        ],
        system.logs / "driver-twin.log",
    )
    system.wait_driver_done(
        alice, 60
    )  # first let the live one finish, then prove the lock while it runs again
    system.start_driver(alice, [cp.cp_id, cp.cp_id])  # a new file: a new plan for the same driver
    wait_until(
        lambda: sum(e["event"] == "ready" for e in system.events(alice)) == 2, 30, "alice running again"
    )
    second_driver.start()
    assert second_driver.wait(30) == 2
    assert "already running" in second_driver.output()
    system.wait_driver_done(alice, 60)
    assert [t.reason for t in system.tickets(alice)] == ["completed"] * 3, "the live driver was served"
    assert system.status(cp.cp_id) == "ON", "the live CP kept working"
    assert cp.engine.alive and cp.monitor.alive
    assert [s["state"] for s in system.sessions()] == ["ended"] * 3
    system.assert_invariants()
    assert "authorised for another engine of this CP" in stray.output()
    stray_db = sqlite3.connect(system.root / "elsewhere" / f"engine-{cp.cp_id}.sqlite")
    assert stray_db.execute("SELECT COUNT(*) FROM sessions").fetchone() == (0,), "it supplied nothing"
    stray_db.close()
    stray.stop()

    # A crashed instance restarting with its id is welcome.
    cp.monitor.kill()
    cp.monitor.start()
    system.wait_status(cp.cp_id, "ON", 15)


def test_a_removed_cp_shows_disconnected_and_can_be_forgotten(system) -> None:
    system.start_central()
    keep = system.add_cp(system.ident("CP-001"))
    gone = system.add_cp(system.ident("CP-009"))
    gone.monitor.stop()
    gone.engine.stop()
    system.wait_status(gone.cp_id, "DISCONNECTED", 10)
    assert system.status(keep.cp_id) == "ON"
    ctl = Child(
        "ctl", ["ctl", "cp", "forget", gone.cp_id, "--central-url", system.url], system.logs / "ctl.log"
    ).start()
    assert ctl.wait(20) == 0, ctl.output()
    assert system.status(gone.cp_id) is None
    assert [c["cp_id"] for c in system.get("/cp")["charging_points"]] == [keep.cp_id]
    # A new CP with a new id joins as if nothing happened.
    system.add_cp(system.ident("CP-010"))
