"""Faults beyond process death, each with real processes: a full disk, a crash at an exact point
inside a critical window, and clocks that disagree between hosts.

A full disk is a small tmpfs the test mounts under the component's state dir and
fills; a crash point is `EVCHARGE_CRASH_AT` (inert otherwise); a skewed clock is
Debian's libfaketime under the process. Every scenario ends with the same audit
as the recovery scenarios: one final ticket per session, equal to what the engine
metered, to the Wh and the micro-euro.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.conftest import Scenario
from tests.harness import System, scrape, value, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes, pytest.mark.chaos]

BOUND_S = 30.0
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m") -> Iterator[Path]:
    """A filesystem of `size` mounted at `path` for the test, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk`; what was there stays readable."""
    filler = disk / "filler"
    with filler.open("ab", buffering=0) as handle:
        chunk = b"\0" * 65536
        while True:
            try:
                handle.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]
                if not chunk:
                    return filler


def reading(system: System, driver_id: str, after: int = 0) -> bool:
    return sum(e["event"] == "progress" and e["seq"] > 0 for e in system.events(driver_id)) > after


def faketime(offset: str) -> dict[str, str]:
    if not FAKETIME_LIB.exists():
        pytest.fail("libfaketime is missing: `make test` installs Debian's faketime package")
    return {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


# ------------------------------------------------------------------ disk full


def test_an_engine_whose_disk_fills_stops_supplying_says_why_and_recovers_by_itself(
    system: System, scenario: Scenario
) -> None:
    scenario.name = "engine disk full"
    system.max_session_s = 30
    system.start_central()
    with small_disk(system.root / "engine-disk") as disk:
        cp = system.add_cp(system.ident("CP-001"), state_dir=disk)
        alice = system.ident("driver-alice")
        system.start_driver(alice, [cp.cp_id], settle_timeout_s=60)
        wait_until(lambda: reading(system, alice, 1), 20, "alice's meter running")
        before = system.identities()

        filler = fill(disk)
        fault = scenario.mark("fault_at")
        system.wait_status(cp.cp_id, "BROKEN", BOUND_S, since=fault)
        scenario.mark("detected_at")
        assert "cannot record" in system.get(f"/cp/{cp.cp_id}")["detail"], "central shows why"
        wait_until(lambda: system.tickets(alice), BOUND_S, "the ticket for what was metered until then")
        assert system.tickets(alice)[0].provisional
        status, body = system.ask_charge(system.ident("bob"), cp.cp_id)
        assert status == 409 and body["error"] == "broken", "no new session it could not record"
        assert "cannot record its meter" in cp.engine.output()

        scenario.mark("restart_at")
        filler.unlink()
        system.wait_status(cp.cp_id, "ON", BOUND_S)
        scenario.mark("served_at")
        assert "records again" in cp.engine.output()
        system.wait_driver_done(alice, 60)
        final = system.final_tickets(alice)
        (record,) = cp.engine_sessions().values()
        [ticket] = final.values()
        assert ticket.revision == 2 and (ticket.wh, ticket.micro_eur) == (record["wh"], record["micro_eur"])
        assert record["end_reason"] == "cannot_record"
        system.assert_only_restarted(before, set())
        scenario.finish(restarted=[])


def test_central_whose_disk_fills_holds_what_it_reads_and_decides_it_when_space_returns(
    system: System, scenario: Scenario
) -> None:
    scenario.name = "central disk full"
    system.max_session_s = 12
    with small_disk(system.root / "central-disk") as disk:
        system.store = str(disk / "central.sqlite")
        system.start_central()
        cp1 = system.add_cp(system.ident("CP-001"))
        cp2 = system.add_cp(system.ident("CP-002"))
        alice, bob = system.ident("driver-alice"), system.ident("driver-bob")
        system.start_driver(alice, [cp1.cp_id])
        wait_until(lambda: reading(system, alice), 20, "alice charging")
        system.enrol(bob)  # with security on: an enrolment is a write, made while central can record
        before = system.identities()

        filler = fill(disk)
        scenario.mark("fault_at")
        system.start_driver(bob, [cp2.cp_id])  # a request central cannot record yet
        wait_until(
            lambda: system.get("/health")["store"].startswith("cannot record"), BOUND_S, "central saying so"
        )
        scenario.mark("detected_at")
        status, body = system.ask_charge(system.ident("carol"), cp2.cp_id)
        assert status == 503 and body["error"] == "unavailable" and "cannot record" in body["message"]
        assert not any(e["event"] in ("accepted", "denied") for e in system.events(bob)), "held, not decided"
        assert "cannot record what it read" in system.central.output()
        # What central holds is lag on the broker, and the lag gauge says so.
        wait_until(
            lambda: (
                sum(
                    v
                    for (name, labels), v in scrape(system).items()
                    if name == "evcharge_kafka_consumer_lag"
                    and ("topic", "evcharge.driver.requests") in labels
                )
                >= 1
            ),
            BOUND_S,
            "the held request counted as consumer lag",
        )

        scenario.mark("restart_at")
        filler.unlink()
        wait_until(lambda: system.get("/health")["store"] == "ok", BOUND_S, "central recording again")
        scenario.mark("served_at")
        system.wait_driver_done(alice, 60)
        system.wait_driver_done(bob, 60)
        assert value(scrape(system), "evcharge_requests_total", outcome="accepted", code="") == 2
        assert [t.reason for t in system.tickets(bob)] == ["completed"], "the held request was decided, once"
        assert [t.reason for t in system.tickets(alice)] == ["completed"]
        system.assert_only_restarted(before, set())
        scenario.finish(restarted=[])


# ---------------------------------------------------------------- crash points


def test_central_killed_inside_its_commit_loses_nothing(system: System, scenario: Scenario) -> None:
    scenario.name = "central killed inside a commit"
    system.max_session_s = 5
    system.start_central(env={"EVCHARGE_CRASH_AT": "central.commit@5"})
    cp = system.add_cp(system.ident("CP-001"))
    alice = system.ident("driver-alice")
    system.start_driver(alice, [cp.cp_id, cp.cp_id])
    wait_until(lambda: not system.central.alive, BOUND_S, "central to reach its crash point")
    scenario.mark("fault_at")
    assert "crash point central.commit" in system.central.output()
    scenario.mark("restart_at")
    system.start_central()
    wait_until(lambda: system.status(cp.cp_id) in ("ON", "SUPPLYING"), BOUND_S, f"{cp.cp_id} back at central")
    scenario.mark("served_at")
    system.wait_driver_done(alice, 60)
    assert [t.reason for t in system.tickets(alice)] == ["completed", "completed"]
    scenario.finish(restarted=["central"])


def test_central_killed_between_its_commit_and_the_publish_loses_nothing(
    system: System, scenario: Scenario
) -> None:
    scenario.name = "central killed between commit and publish"
    system.max_session_s = 4
    # The first commit with something to publish: the decision on alice's first request.
    system.start_central(env={"EVCHARGE_CRASH_AT": "central.committed"})
    cp = system.add_cp(system.ident("CP-001"))
    cp2 = system.add_cp(system.ident("CP-002"))
    alice = system.ident("driver-alice")
    system.start_driver(alice, [cp.cp_id, cp2.cp_id])
    wait_until(lambda: not system.central.alive, BOUND_S, "central to reach its crash point")
    scenario.mark("fault_at")
    assert "crash point central.committed" in system.central.output()
    scenario.mark("restart_at")
    system.start_central()
    scenario.mark("served_at")
    system.wait_driver_done(alice, 60)
    assert [t.reason for t in system.tickets(alice)] == ["completed", "completed"], "decided once, sent after"
    scenario.finish(restarted=["central"])


def test_an_engine_killed_between_recording_a_reading_and_publishing_it_bills_that_reading(
    system: System, scenario: Scenario
) -> None:
    scenario.name = "engine killed between record and publish"
    system.max_session_s = 20
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"), engine_env={"EVCHARGE_CRASH_AT": "engine.recorded@3"})
    alice = system.ident("driver-alice")
    system.start_driver(alice, [cp.cp_id], settle_timeout_s=60)
    wait_until(lambda: not cp.engine.alive, BOUND_S, "the engine to reach its crash point")
    fault = scenario.mark("fault_at")
    system.wait_status(cp.cp_id, "BROKEN", BOUND_S, since=fault)
    scenario.mark("detected_at")
    wait_until(lambda: system.tickets(alice), BOUND_S, "the provisional ticket")
    first = system.tickets(alice)[0]
    assert first.provisional and first.reason == "engine_failure"
    scenario.mark("restart_at")
    cp.engine.env = None
    cp.engine.start()
    system.wait_status(cp.cp_id, "ON", BOUND_S)
    scenario.mark("served_at")
    system.wait_driver_done(alice, 60)
    (record,) = cp.engine_sessions().values()
    final = system.final_tickets(alice)[first.session_id]
    assert record["seq"] >= 3 and record["end_reason"] == "interrupted"
    assert final.wh == record["wh"] > first.wh, (
        "the reading central never saw is billed: one corrected ticket"
    )
    scenario.finish(restarted=["engine"])


def test_a_driver_killed_between_showing_a_ticket_and_noting_it_shows_it_again_never_loses_it(
    system: System, scenario: Scenario
) -> None:
    scenario.name = "driver killed between show and mark"
    system.max_session_s = 3
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    alice = system.ident("driver-alice")
    system.start_driver(alice, [cp.cp_id, cp.cp_id], env={"EVCHARGE_CRASH_AT": "driver.shown"})
    wait_until(lambda: not system.drivers[alice].alive, BOUND_S, "the driver to reach its crash point")
    scenario.mark("fault_at")
    shown = system.tickets(alice)
    assert len(shown) == 1 and system.events(alice)[-1]["event"] == "ticket", "shown, then the crash"
    scenario.mark("restart_at")
    system.drivers[alice].env = None
    system.drivers[alice].start()
    system.wait_driver_done(alice, 60)
    scenario.mark("served_at")
    sessions = [t.session_id for t in system.tickets(alice)]
    assert sessions[0] == sessions[1] != sessions[2] and len(sessions) == 3, "at least once, then on"
    scenario.finish(restarted=["driver"])


# ------------------------------------------------------------------ clocks


def test_engine_and_driver_clocks_tens_of_seconds_off_change_no_decision(
    system: System, scenario: Scenario
) -> None:
    scenario.name = "clock skew: engine +30 s, driver -90 s"
    system.max_session_s = 3
    system.central_overrides = {"request_ttl_s": 20.0}
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"), engine_env=faketime("+30s"))
    alice = system.ident("driver-alice")
    system.start_driver(alice, [cp.cp_id, cp.cp_id], env=faketime("-90s"))
    scenario.mark("fault_at")
    system.wait_driver_done(alice, 60)
    scenario.mark("served_at")
    tickets = system.tickets(alice)
    assert [t.reason for t in tickets] == ["completed", "completed"], "nothing expired, nothing refused"
    assert all(t.wh > 0 for t in tickets)
    ready = next(e for e in system.events(alice) if e["event"] == "ready")
    assert ready["ts"] < scenario.system.get("/health")["started_at"], "the driver's clock really was behind"
    scenario.finish(restarted=[])
