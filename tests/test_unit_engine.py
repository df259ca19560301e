"""Unit tests for the engine's pure parts: the meter and the units it bills in, the state machine,
and the command dispatch the real engine and the simulator share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evcharge.cp import engine_commands
from evcharge.cp.engine_state import CpEvent, EngineState
from evcharge.cp.meter import Meter
from evcharge.protocol.messages import (
    EndReason,
    MeterReading,
    ResumeCp,
    SessionEnded,
    SessionRefused,
    SessionStarted,
    StartSupply,
    StopCp,
    StopSupply,
)
from evcharge.protocol.units import (
    cost_micro_eur,
    energy_wh,
    eur_text,
    kw_text,
    kwh_text,
    parse_power,
    parse_price,
    price_text,
)

CP = "CP-1"
NOW = 10_000.0
POWER_W = 36_000  # 10 Wh per second: exact figures
CP_PRICE = 300_000
DRIVER_PRICE = 250_000


def engine(max_session_ms: int = 0, power_w: int = POWER_W) -> EngineState:
    return EngineState(cp_id=CP, power_w=power_w, price=CP_PRICE, max_session_ms=max_session_ms)


def command(session_id: str = "s-1", engine_id: str | None = None) -> StartSupply:
    return StartSupply(
        cp_id=CP, session_id=session_id, driver_id="alice", price=DRIVER_PRICE, engine=engine_id
    )


def supplying(max_session_ms: int = 0) -> EngineState:
    state = engine(max_session_ms)
    state.start(command(), NOW)
    return state


def only(events: list[CpEvent], kind: type) -> CpEvent:
    assert len(events) == 1 and isinstance(events[0], kind), events
    return events[0]


# ------------------------------------------------------------ units and meter ----


def test_prices_and_powers_typed_by_people_become_exact_integers() -> None:
    assert (
        parse_price("0.32") == 320_000
        and parse_price(0.3) == 300_000
        and parse_price("1.234567") == 1_234_567
    )
    assert parse_power("22") == 22_000 and parse_power("7.4") == 7_400
    for bad in ("abc", "0.1234567", "-1", "101", "nan"):
        with pytest.raises(ValueError):
            parse_price(bad)
    for bad in ("0", "-3", "0.0001"):
        with pytest.raises(ValueError):
            parse_power(bad)


def test_figures_are_shown_exactly_as_integers_say() -> None:
    assert (kwh_text(48), kwh_text(12_345), kwh_text(0)) == ("0.048", "12.345", "0.000")
    assert (eur_text(15_360), eur_text(15_360, 2), eur_text(5_000, 2)) == ("0.0154", "0.02", "0.01")
    assert (price_text(320_000), price_text(300_000), price_text(1_234_567)) == ("0.32", "0.30", "1.234567")
    assert kw_text(22_000) == "22.0"


@given(st.integers(1, 10**6), st.integers(0, 10**9), st.integers(0, 10**8))
def test_energy_is_truncated_to_the_wh_and_cost_rounded_half_up(power_w: int, ms: int, price: int) -> None:
    wh = energy_wh(power_w, ms)
    assert wh * 3_600_000 <= power_w * ms < (wh + 1) * 3_600_000
    micro = cost_micro_eur(wh, price)
    assert abs(micro * 1000 - wh * price) <= 500


def test_the_meter_bills_from_the_total_time_not_from_rounded_steps() -> None:
    meter = Meter(power_w=22_000, price=320_000)
    for _ in range(8):
        meter.advance(1000)
    assert meter.wh == 48  # 22 kW for 8 s = 48.9 Wh, truncated once, not 8 x 6
    assert meter.micro_eur == cost_micro_eur(48, 320_000) == 15_360


# ------------------------------------------------------------ state machine ----


def test_a_start_supplies_at_the_drivers_price_from_seq_0() -> None:
    state = engine()
    started = only(state.start(command(), NOW), SessionStarted)
    assert (started.seq, started.price, started.driver_id, started.started_at) == (
        0,
        DRIVER_PRICE,
        "alice",
        NOW,
    )
    assert state.supply is not None and state.supply.meter.price == DRIVER_PRICE


def test_the_same_start_delivered_twice_starts_once() -> None:
    state = supplying()
    assert state.start(command(), NOW + 1) == []


def test_a_start_is_refused_when_busy_stopped_faulty_or_unable_to_record() -> None:
    cases = {
        "busy with session": supplying(),
        "stopped by the operator": engine(),
        "engine fault": engine(),
        "cannot record": engine(),
    }
    cases["stopped by the operator"].stopped = True
    cases["engine fault"].fault = True
    cases["cannot record"].recording = False
    for why, state in cases.items():
        refused = only(state.start(command("s-9"), NOW), SessionRefused)
        assert why in refused.reason


def test_each_tick_is_a_cumulative_reading_and_the_configured_length_completes_it() -> None:
    state = supplying(max_session_ms=3000)
    first = only(state.tick(1000, NOW + 1), MeterReading)
    second = only(state.tick(1000, NOW + 2), MeterReading)
    assert (first.seq, first.wh, second.seq, second.wh) == (1, 10, 2, 20)
    reading, ended = state.tick(1000, NOW + 3)
    assert isinstance(reading, MeterReading) and isinstance(ended, SessionEnded)
    assert (ended.seq, ended.wh, ended.micro_eur, ended.reason) == (
        4,
        30,
        cost_micro_eur(30, DRIVER_PRICE),
        EndReason.COMPLETED,
    )
    assert state.supply is None


def test_ending_bills_the_meter_and_a_stop_for_another_session_does_nothing() -> None:
    state = supplying()
    state.tick(2500, NOW + 2.5)
    assert state.end(EndReason.DRIVER, NOW, "someone-else") == []
    ended = only(state.end(EndReason.DRIVER, NOW + 3, "s-1"), SessionEnded)
    assert (ended.wh, ended.reason) == (25, EndReason.DRIVER)


def test_operator_stop_fault_and_a_full_disk_end_the_supply_with_their_reason() -> None:
    for act, reason in (
        (lambda s: s.stop_cp(NOW), EndReason.OPERATOR),
        (lambda s: s.raise_fault(NOW), EndReason.FAULT),
        (lambda s: s.cannot_record(NOW), EndReason.CANNOT_RECORD),
    ):
        state = supplying()
        ended = only(act(state), SessionEnded)
        assert ended.reason is reason and state.supply is None
    state = engine()
    state.cannot_record(NOW)
    assert not state.healthy and "disk full" in state.detail


def test_a_local_plug_in_supplies_at_the_cps_own_price() -> None:
    state = engine()
    started = only(state.plug_in(NOW), SessionStarted)
    assert (started.driver_id, started.price) == ("local", CP_PRICE)
    assert state.plug_in(NOW) == [], "one supply at a time"


# ------------------------------------------------------------ command dispatch ----


def test_a_start_addressed_to_another_engine_instance_is_left_alone() -> None:
    state = engine()
    step = engine_commands.handle(state, command(engine_id="other"), instance="mine", now=NOW)
    assert step.events == [] and step.warning and "second engine" in step.note
    mine = engine_commands.handle(state, command(engine_id="mine"), instance="mine", now=NOW)
    assert isinstance(mine.events[0], SessionStarted)


def test_a_start_central_withdrew_in_the_same_batch_is_refused_not_started() -> None:
    batch = [command("s-1"), StopSupply(cp_id=CP, session_id="s-1", reason=EndReason.NOT_STARTED)]
    withdrawn = engine_commands.withdrawn(batch)
    state = engine()
    step = engine_commands.handle(state, batch[0], instance="", now=NOW, withdrawn=withdrawn)
    refused = only(step.events, SessionRefused)
    assert "withdrawn" in refused.reason and state.supply is None
    assert engine_commands.handle(state, batch[1], instance="", now=NOW, withdrawn=withdrawn).events == []


def test_operator_commands_record_the_stop_flag() -> None:
    state = supplying()
    stop = engine_commands.handle(state, StopCp(cp_id=CP), instance="", now=NOW)
    assert stop.stopped is True and isinstance(stop.events[0], SessionEnded)
    resume = engine_commands.handle(state, ResumeCp(cp_id=CP), instance="", now=NOW)
    assert resume.stopped is False and not state.stopped
