"""The end-to-end journey with real processes on a real broker: central, CPs, drivers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from evcharge.devtools.supervisor import Child
from evcharge.protocol.units import cost_micro_eur, energy_wh
from tests.harness import wait_until

METER_LINE = re.compile(r"⚡ \S+: [\d.]+ kW\s+[\d.]+ kWh\s+[\d.]+ EUR")

pytestmark = [pytest.mark.kafka, pytest.mark.processes]


def test_two_cps_two_drivers_every_request_ends_with_a_matching_ticket(system) -> None:
    system.start_central()
    cp1 = system.add_cp(system.ident("CP-001"), location="Alicante")
    cp2 = system.add_cp(system.ident("CP-002"), location="Elche", price="0.45")
    alice, bob = system.ident("driver-alice"), system.ident("driver-bob")
    unknown = system.ident("CP-404")
    system.start_driver(alice, [cp1.cp_id, "# a comment", "", unknown, cp2.cp_id])
    system.start_driver(bob, [cp2.cp_id, cp1.cp_id])
    system.wait_driver_done(alice, 90)
    system.wait_driver_done(bob, 90)

    alice_screen = system.drivers[alice].output()
    assert f"{unknown} is not a known charging point [unknown_cp]" in alice_screen
    assert "summary: 3 requests" in alice_screen
    assert "summary: 2 requests" in system.drivers[bob].output()
    [summary] = [e for e in system.events(alice) if e["event"] == "summary"]
    assert [o["outcome"] for o in summary["outcomes"]] == ["completed", "denied", "completed"]
    tickets = {d: system.tickets(d) for d in (alice, bob)}
    assert [t.cp_id for t in tickets[alice]] == [cp1.cp_id, cp2.cp_id]
    assert sorted(t.cp_id for t in tickets[bob]) == sorted([cp1.cp_id, cp2.cp_id])
    # 22 kW for the whole session, billed exactly: energy to the Wh, cost to the micro-euro.
    seconds = int(system.max_session_s)
    for ticket in tickets[alice] + tickets[bob]:
        price = 450_000 if ticket.cp_id == cp2.cp_id else 300_000
        assert ticket.reason == "completed" and ticket.revision == 1 and not ticket.provisional
        assert ticket.wh == energy_wh(22_000, seconds * 1000)
        assert ticket.micro_eur == cost_micro_eur(ticket.wh, price)
    # One reading a second, cumulative, on the driver's event stream and screen.
    first = next(e for e in system.events(alice) if e["event"] == "accepted")["session_id"]
    readings = [
        e["wh"] for e in system.events(alice) if e["event"] == "progress" and e["session_id"] == first
    ]
    assert readings == [0] + [energy_wh(22_000, 1000 * k) for k in range(1, seconds + 1)]
    assert METER_LINE.search(alice_screen)
    audit = system.assert_invariants()
    assert audit.charged == 4
    assert system.unexpected_log_lines() == {}


def test_a_request_for_a_busy_cp_is_denied_with_the_reason(system) -> None:
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    status, body = system.post("/request/charge", {"driver_id": system.ident("driver-a"), "cp_id": cp.cp_id})
    assert status == 201 and body["outcome"] == "accepted"
    system.wait_status(cp.cp_id, "SUPPLYING", 10)
    status, body = system.post("/request/charge", {"driver_id": system.ident("driver-b"), "cp_id": cp.cp_id})
    assert status == 409
    assert body["error"] == "busy" and cp.cp_id in body["message"]
    system.wait_status(cp.cp_id, "ON", 30)


def test_a_cp_added_during_a_session_is_available_at_once_and_the_session_goes_on(system) -> None:
    """The guide's Test 5."""
    system.max_session_s = 6
    system.start_central()
    cp1 = system.add_cp(system.ident("CP-001"))
    alice = system.ident("driver-alice")
    system.start_driver(alice, [cp1.cp_id])
    system.wait_status(cp1.cp_id, "SUPPLYING", 20)
    cp5 = system.add_cp(system.ident("CP-005"))
    assert system.status(cp1.cp_id) == "SUPPLYING"
    status, body = system.post(
        "/request/charge", {"driver_id": system.ident("driver-bob"), "cp_id": cp5.cp_id}
    )
    assert status == 201, body
    system.wait_driver_done(alice, 60)
    (ticket,) = system.tickets(alice)
    assert ticket.reason == "completed"
    system.wait_status(cp5.cp_id, "ON", 30)
    system.assert_invariants()
    assert system.unexpected_log_lines() == {}


def test_operator_stop_ends_the_supply_with_a_ticket_and_resume_brings_it_back(system) -> None:
    system.max_session_s = 30
    system.start_central()
    cp1 = system.add_cp(system.ident("CP-001"))
    cp2 = system.add_cp(system.ident("CP-002"))
    alice = system.ident("driver-alice")
    system.start_driver(alice, [cp1.cp_id])
    system.wait_status(cp1.cp_id, "SUPPLYING", 20)
    wait_until(
        lambda: any(e["event"] == "progress" and e["seq"] > 0 for e in system.events(alice)),
        10,
        "a live meter reading on the driver's screen",
    )
    status, body = system.post(f"/cp/{cp1.cp_id}/stop")
    assert status == 200 and body["status"] == "STOPPED"
    system.wait_driver_done(alice, 30)
    (ticket,) = system.tickets(alice)
    assert ticket.reason == "operator" and ticket.wh > 0
    status, body = system.post("/request/charge", {"driver_id": alice, "cp_id": cp1.cp_id})
    assert status == 409 and body["error"] == "stopped"

    status, body = system.post("/cp/stop-all")
    assert {c["status"] for c in body["charging_points"]} == {"STOPPED"}
    status, body = system.post("/cp/resume-all")
    assert {c["status"] for c in body["charging_points"]} == {"ON"}
    assert system.status(cp2.cp_id) == "ON"
    system.assert_invariants()


def test_engine_fault_shows_broken_with_why_and_clearing_it_restores_the_cp(system) -> None:
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))

    def ctl(action: str) -> str:
        process = Child(
            "ctl", ["ctl", "engine", cp.cp_id, action, "--port", str(cp.engine_port)], system.logs / "ctl.log"
        ).start()
        assert process.wait(15) == 0
        return process.output()

    ctl("fault")
    system.wait_status(cp.cp_id, "BROKEN", 10)
    wait_until(
        lambda: system.get(f"/cp/{cp.cp_id}")["detail"] == "fault raised at the CP", 5, "why it is broken"
    )
    status, body = system.post("/request/charge", {"driver_id": system.ident("d"), "cp_id": cp.cp_id})
    assert status == 409 and body["error"] == "broken"
    ctl("clear")
    system.wait_status(cp.cp_id, "ON", 10)
    assert "health restored" in cp.monitor.output()


def test_central_restarted_loads_its_registry_and_shows_cps_disconnected_until_monitors_return(
    system,
) -> None:
    system.start_central()
    cp1 = system.add_cp(system.ident("CP-001"), location="Alicante")
    cp2 = system.add_cp(system.ident("CP-002"), location="Elche")
    for cp in (cp1, cp2):
        cp.monitor.stop()
    system.central.stop()
    system.start_central()
    listed = {c["cp_id"]: c for c in system.get("/cp")["charging_points"]}
    assert {listed[cp1.cp_id]["status"], listed[cp2.cp_id]["status"]} == {"DISCONNECTED"}
    assert listed[cp1.cp_id]["location"] == "Alicante"
    for cp in (cp1, cp2):
        cp.monitor.start()
        system.wait_status(cp.cp_id, "ON", 15)


def test_a_silent_monitor_shows_disconnected_after_the_heartbeat_timeout_and_comes_back(system) -> None:
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    cp.monitor.freeze()
    try:
        # Its last heartbeat was at most a second before the freeze: the 3 s timeout, plus the
        # watch's 0.25 s cadence and slack for a busy machine; well before a read deadline (6 s).
        system.wait_status(cp.cp_id, "DISCONNECTED", 3.0 + 1.5, since=cp.monitor.signalled_at)
    finally:
        cp.monitor.thaw()
    system.wait_status(cp.cp_id, "ON", 15)


def test_http_api_errors_are_json_with_the_right_status(system) -> None:
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))

    def raw(method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(system.url + path, data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert raw("POST", "/request/charge", b"{not json")[0] == 400
    assert raw("POST", "/request/charge", b'{"driver_id": "d"}')[0] == 400
    assert raw("POST", "/request/charge", b'{"driver_id": 5, "cp_id": "x"}')[0] == 400
    assert raw("POST", "/request/charge", b'{"driver_id": "has spaces", "cp_id": "CP-1"}')[0] == 400
    status, body = raw("POST", "/request/charge", b'{"driver_id": "d-1", "cp_id": "CP-nope"}')
    assert status == 404 and body["error"] == "unknown_cp"
    status, body = raw("GET", "/cp/CP-nope")
    assert status == 404 and "CP-nope" in body["message"]
    assert raw("POST", "/cp/CP-nope/stop")[0] == 404
    assert raw("GET", "/sessions/nope")[0] == 404
    assert raw("GET", "/sessions?limit=abc")[0] == 400
    assert raw("GET", "/sessions?since=yesterday")[0] == 400
    assert raw("DELETE", "/request/charge")[0] == 405
    assert raw("POST", "/request/charge", b"x" * 200_000)[0] == 413
    assert raw("GET", f"/cp/{cp.cp_id}")[1]["status"] == "ON"
    assert system.get("/health")["status"] == "ok"


def test_the_interactive_driver_lists_requests_stops_and_quits(system) -> None:
    system.max_session_s = 60
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"), location="Alicante")
    driver = system.ident("driver-i")
    log_path = system.logs / "interactive.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "evcharge", "driver", "--id", driver, "--kafka", system.kafka,
             "--state-dir", str(system.state_dir), "--central-url", system.url],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdin is not None
        try:
            wait_until(lambda: "ready" in log_path.read_text(), 30, "the interactive driver")
            process.stdin.write(b"list\n")
            process.stdin.flush()
            wait_until(lambda: "Alicante" in log_path.read_text(), 10, "the CP list")
            process.stdin.write(f"request {cp.cp_id}\n".encode())
            process.stdin.flush()
            system.wait_status(cp.cp_id, "SUPPLYING", 15)
            wait_until(lambda: METER_LINE.search(log_path.read_text()), 10, "a live reading")
            process.stdin.write(b"stop\n")
            process.stdin.flush()
            wait_until(
                lambda: "ended=driver" in log_path.read_text(), 15, "the ticket of the stopped session"
            )
            process.stdin.write(b"quit\n")
            process.stdin.flush()
            assert process.wait(20) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdin.close()
    screen = log_path.read_text()
    assert f"✔ {cp.cp_id}" in screen and "ON" in screen
    [session] = system.sessions()
    assert session["driver_id"] == driver and session["end_reason"] == "driver" and session["wh"] > 0


def test_an_engine_restarted_after_a_crash_closes_the_session_at_its_last_recorded_reading(system) -> None:
    system.max_session_s = 60
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    alice = system.ident("driver-alice")
    system.start_driver(alice, [cp.cp_id], settle_timeout_s=60)
    wait_until(
        lambda: sum(e["event"] == "progress" and e["seq"] > 1 for e in system.events(alice)) >= 2,
        20,
        "readings",
    )
    cp.engine.kill()
    (recorded,) = cp.engine_sessions().values()
    assert not recorded["ended"] and recorded["seq"] >= 3
    cp.engine.start()
    system.wait_driver_done(alice, 60)
    (closed,) = cp.engine_sessions().values()
    assert closed["end_reason"] == "interrupted"
    assert (closed["wh"], closed["micro_eur"]) == (recorded["wh"], recorded["micro_eur"]), (
        "the last recorded reading"
    )
    assert closed["seq"] == recorded["seq"] + 1
    [ticket] = system.final_tickets(alice).values()
    assert (ticket.wh, ticket.micro_eur) == (recorded["wh"], recorded["micro_eur"])
    system.assert_invariants()


def test_a_session_the_engine_never_starts_gets_a_zero_ticket_from_central(system) -> None:
    system.central_overrides = {"start_timeout_s": 1.0}
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    alice = system.ident("driver-alice")
    cp.engine.freeze()  # alive to the kernel, so the CP still shows ON for a moment: the start goes unread
    try:
        status, body = system.post("/request/charge", {"driver_id": alice, "cp_id": cp.cp_id})
        assert status == 201, body
        wait_until(lambda: system.sessions()[0]["state"] == "ended", 30, "central to give up on the start")
        [session] = system.sessions()
        assert (session["end_reason"], session["wh"], session["micro_eur"]) == ("not_started", 0, 0)
    finally:
        cp.engine.thaw()
    # The thawed engine reads the start and central's withdrawal: it refuses the start (both in one
    # batch) or ends it at once (two batches); either way it supplied nothing.
    wait_until(lambda: [s for s in cp.engine_sessions().values() if s["ended"]], 30, "the engine to close it")
    [record] = cp.engine_sessions().values()
    assert record["end_reason"] in ("refused", "not_started") and record["wh"] == 0
    system.wait_status(cp.cp_id, "ON", 30)
