"""Central's Prometheus metrics move when what they count happens, with real processes.

The consumer-lag gauge is proven where lag really builds up: a central whose disk is
full holds what it reads (tests/chaos/test_faults.py).
"""

from __future__ import annotations

import signal

import pytest

from evcharge.devtools.supervisor import Child
from tests.harness import scrape, value, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]


def test_every_metric_moves_with_what_central_sees_decides_and_bills(system, kafka_broker) -> None:
    system.max_session_s = 6
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    idle = scrape(system)
    assert value(idle, "evcharge_charging_points", status="ON") == 1
    assert value(idle, "evcharge_charging_points", status="SUPPLYING") == 0
    assert value(idle, "evcharge_monitors_connected") == 1
    assert value(idle, "evcharge_central_leader") == 1
    assert value(idle, "evcharge_sessions_active") == 0

    alice, ghost = system.ident("driver-alice"), system.ident("CP-404")
    system.start_driver(alice, [cp.cp_id, ghost])
    wait_until(
        lambda: value(scrape(system), "evcharge_charging_points", status="SUPPLYING") == 1,
        20,
        "the CP counted as SUPPLYING",
    )
    assert value(scrape(system), "evcharge_sessions_active") == 1
    system.wait_driver_done(alice, 60)
    (ticket,) = system.tickets(alice)
    done = scrape(system)
    assert value(done, "evcharge_requests_total", outcome="accepted", code="") == 1
    assert value(done, "evcharge_requests_total", outcome="denied", code="unknown_cp") == 1
    assert value(done, "evcharge_request_decision_seconds_count") == 2
    assert value(done, "evcharge_sessions_active") == 0
    assert value(done, "evcharge_sessions_ended_total", reason="completed") == 1
    # Billed exactly what the driver's ticket says: integers, to the Wh and the micro-euro.
    assert value(done, "evcharge_billed_energy_wh_total") == ticket.wh > 0
    assert value(done, "evcharge_billed_revenue_micro_eur_total") == ticket.micro_eur > 0
    readings = value(done, "evcharge_event_apply_seconds_count")
    assert readings >= system.max_session_s, "every batch of meter readings applied is timed"

    # A second monitor claiming the same CP is refused, and counted by why.
    impostor = Child(
        "impostor",
        ["monitor", "--cp-id", cp.cp_id, "--engine", f"127.0.0.1:{cp.engine_port}",
         "--central", f"127.0.0.1:{system.tcp_port}", "--state-dir", str(system.root / "other")],
        system.logs / "impostor.log",
    ).start()  # fmt: skip
    try:
        wait_until(
            lambda: value(scrape(system), "evcharge_registrations_refused_total", code="duplicate_cp") >= 1,
            20,
            "the refused registration counted",
        )
    finally:
        impostor.stop()

    # Kafka frozen: a decision central commits waits in the outbox, and the gauges show it.
    assert value(scrape(system), "evcharge_outbox_rows") == 0
    kafka_broker.kill(signal.SIGSTOP)
    try:
        status, body = system.post("/request/charge", {"driver_id": system.ident("bob"), "cp_id": cp.cp_id})
        assert status == 201, body
        waiting = scrape(system)
        assert value(waiting, "evcharge_outbox_rows") >= 1
        wait_until(
            lambda: value(scrape(system), "evcharge_outbox_oldest_age_seconds") >= 1.0,
            10,
            "the oldest outbox row ageing",
        )
    finally:
        kafka_broker.kill(signal.SIGCONT)

    def drained() -> bool:  # in one scrape: bob's charge keeps adding rows that are gone at once
        samples = scrape(system)
        rows, age = (value(samples, f"evcharge_outbox_{m}") for m in ("rows", "oldest_age_seconds"))
        return rows == age == 0

    wait_until(drained, 60, "the outbox drained once Kafka is back")

    # Every partition central consumes is a series of the lag gauge.
    lags = {
        dict(labels)["topic"]: v
        for (name, labels), v in scrape(system).items()
        if name == "evcharge_kafka_consumer_lag"
    }
    assert {"evcharge.cp.events", "evcharge.driver.requests"} <= set(lags), lags
    system.assert_invariants()
