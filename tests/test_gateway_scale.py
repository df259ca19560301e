"""Many chargers on one gateway process: they join at once, the gateway is SIGKILLed and restarted
and they all come back with zero errors; then some charge, metering as fast as they are answered,
and every session is billed as the charger metered it.

`make test` runs it with 100 chargers (about a minute); `make gateway-scale` with 1,000
(EVCHARGE_GATEWAY_SCALE). Nothing here asserts a duration, only the bounds past which the run
has plainly failed: the gateway's figures (chargers per process, transaction messages per
second, call -> result p50/p99, the storm's time to all ON) are measured by `make bench`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from evcharge.gateway.sim import SimCharger
from evcharge.runtime.retry import Backoff
from tests.test_gateway import GatewayRun, running, until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]

CHARGERS = int(os.environ.get("EVCHARGE_GATEWAY_SCALE", "100"))
METERING = int(os.environ.get("EVCHARGE_GATEWAY_METERING", str(max(10, CHARGERS // 10))))
REPORT = os.environ.get("EVCHARGE_GATEWAY_REPORT")  # where to keep the figures as JSON, if anywhere


def _statuses(gateway: GatewayRun) -> dict[str, str]:
    listed = gateway.system.get("/cp")["charging_points"]
    return {cp["cp_id"]: cp["status"] for cp in listed}


async def _all_on(gateway: GatewayRun, chargers: list[SimCharger], timeout_s: float) -> float:
    started = time.monotonic()
    by_id = {c.cp_id: c for c in chargers}

    def on() -> bool:
        statuses = _statuses(gateway)
        return all(statuses.get(i) == "ON" for i in by_id)

    try:
        await until(on, timeout_s, f"all {len(by_id)} chargers ON at central", interval_s=0.25)
    except AssertionError:
        statuses = _statuses(gateway)
        late = [i for i in by_id if statuses.get(i) != "ON"][:5]
        seen = {i: (statuses.get(i), by_id[i].connected.is_set(), by_id[i].counters) for i in late}
        raise AssertionError(f"not ON at central (status, connected, counters): {seen}") from None
    return time.monotonic() - started


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _errors(chargers: list[SimCharger]) -> dict[str, int]:
    return {
        "refused handshakes": sum(len(c.counters.refusals) for c in chargers),
        "call errors": sum(len(c.counters.call_errors) for c in chargers),
        "unanswered calls": sum(c.counters.timeouts for c in chargers),
    }


def _latencies(chargers: list[SimCharger], action: str) -> list[float]:
    return [x for c in chargers for x in c.counters.latencies.get(action, [])]


@pytest.fixture
def gateway(system):
    system.central_overrides = {"require_auth": True, "join_token": "join", "operator_token": "op"}
    system.start_central()
    run = GatewayRun(system, join_token="join")
    run.start()
    yield run
    if run.process is not None:
        run.process.stop()


@pytest.mark.timeout(900)
async def test_every_charger_reconnects_at_once_after_a_gateway_restart_with_zero_errors(
    gateway: GatewayRun,
) -> None:
    system = gateway.system
    await gateway.ready()
    chargers = [
        gateway.charger(
            f"GW{i:04d}",
            "1.6" if i % 2 else "2.0.1",
            response_timeout_s=30,
            meter_interval_s=0.02,
            max_backlog=1,
            reconnect=Backoff(initial_delay_s=0.5, max_delay_s=3.0, jitter=0.9),
        )
        for i in range(CHARGERS)
    ]
    report: dict[str, Any] = {"chargers": CHARGERS}
    async with running(*chargers):
        report["join_all_on_s"] = round(await _all_on(gateway, chargers, 300), 2)
        await until(lambda: all(c.password != "join" for c in chargers), 120, "every charger's own password")
        await _all_on(gateway, chargers, 300)
        boots = _latencies(chargers, "BootNotification")
        report["boot_p50_ms"] = round(_percentile(boots, 0.5) * 1000, 1)
        report["boot_p99_ms"] = round(_percentile(boots, 0.99) * 1000, 1)
        assert "evcharge_gateway_chargers_connected" in gateway.metrics()
        before = _errors(chargers)
        assert before == {"refused handshakes": 0, "call errors": 0, "unanswered calls": 0}, before

        # The storm: every charger loses the gateway at once and comes back to a new process.
        assert gateway.process is not None
        gateway.process.kill()
        restarted = time.monotonic()
        gateway.start()
        await until(
            lambda: sum(1 for s in _statuses(gateway).values() if s == "DISCONNECTED") >= CHARGERS // 2,
            30,
            "central to see the chargers gone",
            interval_s=0.25,
        )
        report["storm_all_on_s"] = round(await _all_on(gateway, chargers, 300), 2)
        report["storm_all_on_from_restart_s"] = round(time.monotonic() - restarted, 2)
        report["storm_errors"] = _errors(chargers)
        report["gateway_log_errors"] = system.unexpected_log_lines()

        # Throughput: some chargers meter as fast as they are answered (one call at a time each).
        metering = chargers[:METERING]
        for charger in metering:
            charger.counters.latencies.clear()
        statuses = await asyncio.gather(*(c.swipe(system.ident(f"d{i}")) for i, c in enumerate(metering)))
        assert set(statuses) == {"Accepted"}, statuses
        window_s = 5.0
        answered_before = sum(c.counters.answered for c in metering)
        await asyncio.sleep(window_s)
        answered = sum(c.counters.answered for c in metering) - answered_before
        report["metering_chargers"] = METERING
        report["transaction_messages_per_s"] = round(answered / window_s, 1)
        meters = _latencies(metering, "MeterValues") + _latencies(metering, "TransactionEvent")
        report["meter_p50_ms"] = round(_percentile(meters, 0.5) * 1000, 1)
        report["meter_p99_ms"] = round(_percentile(meters, 0.99) * 1000, 1)
        for charger in metering:
            charger.end("Local")
        await until(lambda: all(c.settled() for c in metering), 120, "every stop answered")
        wanted = {c.cp_id for c in metering}

        def ended() -> list[dict[str, Any]] | None:
            listed = system.get("/sessions?limit=1000")["sessions"]
            done = [s for s in listed if s["cp_id"] in wanted and s["state"] == "ended"]
            return done if len(done) >= len(wanted) else None

        sessions = await until(ended, 60, "every metered session ended")
    assert len(sessions) == METERING, "one session per charger, no other"
    billed = {s["cp_id"]: s for s in sessions}
    mismatched = [c.cp_id for c in metering if billed.get(c.cp_id, {}).get("wh") != c.traces[-1].wh]
    report["sessions_billed_as_metered"] = f"{METERING - len(mismatched)}/{METERING}"
    print("\n" + json.dumps(report, indent=2))
    if REPORT:
        await asyncio.to_thread(Path(REPORT).write_text, json.dumps(report, indent=2))
    assert report["storm_errors"] == {"refused handshakes": 0, "call errors": 0, "unanswered calls": 0}
    assert report["gateway_log_errors"] == {}
    details = {
        c.cp_id: (billed.get(c.cp_id), c.traces[-1], len(c.traces)) for c in metering if c.cp_id in mismatched
    }
    assert mismatched == [], details
