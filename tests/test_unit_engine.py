"""Unit tests for evcharge.cp.engine_state (the engine's state machine) and evcharge.cp.meter."""

from __future__ import annotations

import pytest

from evcharge.cp.engine_state import EngineState
from evcharge.cp.meter import EUR_DECIMALS, KWH_DECIMALS, Meter
from evcharge.messages import (
    CpEvent,
    EndReason,
    MeterReading,
    SessionEnded,
    SessionRefused,
    SessionStarted,
    StartSupply,
)

CP = "CP-1"
NOW = 10_000.0
KW = 36.0  # 0.01 kWh per second: exact figures
CP_PRICE = 0.30
DRIVER_PRICE = 0.25


def engine(max_session_s: float = 0.0, kw: float = KW) -> EngineState:
    return EngineState(cp_id=CP, power_kw=kw, price_eur_kwh=CP_PRICE, max_session_s=max_session_s)


def command(
    session_id: str = "s-1",
    expires_at: float = NOW + 30,
    driver: str = "alice",
    price: float = DRIVER_PRICE,
) -> StartSupply:
    return StartSupply(
        cp_id=CP,
        session_id=session_id,
        driver_id=driver,
        price_eur_kwh=price,
        expires_at=expires_at,
    )


def supplying(max_session_s: float = 0.0, kw: float = KW) -> EngineState:
    state = engine(max_session_s, kw)
    state.start(command(), NOW)
    return state


def only(events: list[CpEvent], kind: type) -> CpEvent:
    assert len(events) == 1, events
    assert isinstance(events[0], kind), events
    return events[0]


# ----------------------------------------------------------------- meter ----


def test_meter_starts_at_zero() -> None:
    meter = Meter(kw=11.0, price_eur_kwh=0.3)
    assert (meter.kwh, meter.eur) == (0.0, 0.0)


def test_meter_advance_adds_kw_times_hours() -> None:
    meter = Meter(kw=KW, price_eur_kwh=DRIVER_PRICE)
    meter.advance(1.0)
    assert meter.kwh == 0.01
    meter.advance(359.0)
    assert meter.kwh == pytest.approx(3.6)
    assert meter.eur == round(3.6 * DRIVER_PRICE, EUR_DECIMALS)


def test_meter_rounds_kwh_and_eur() -> None:
    meter = Meter(kw=11.0, price_eur_kwh=0.33)
    meter.advance(1.0)
    assert meter.kwh == round(11.0 / 3600, KWH_DECIMALS) == 0.00306
    assert meter.eur == round(0.00306 * 0.33, EUR_DECIMALS) == 0.001


def test_meter_at_zero_power_stays_at_zero() -> None:
    meter = Meter(kw=0.0, price_eur_kwh=0.3)
    for _ in range(10):
        meter.advance(1.0)
    assert (meter.kwh, meter.eur) == (0.0, 0.0)


@pytest.mark.parametrize("ticks", [2, 3600])
def test_meter_total_does_not_drift_with_many_ticks(ticks: int) -> None:
    meter = Meter(kw=7.4, price_eur_kwh=0.3)
    for _ in range(ticks):
        meter.advance(1.0)
    assert meter.kwh == pytest.approx(round(7.4 * ticks / 3600, KWH_DECIMALS), abs=1e-5)


# ----------------------------------------------------------- start/tick ----


def test_start_supply_produces_session_started_seq_0() -> None:
    state = engine()
    started = only(state.start(command(), NOW), SessionStarted)
    assert started.seq == 0
    assert (started.cp_id, started.session_id, started.driver_id) == (CP, "s-1", "alice")
    assert started.started_at == NOW
    assert started.price_eur_kwh == DRIVER_PRICE
    assert state.supply is not None
    assert state.supply.session_id == "s-1"
    assert "s-1" in state.known_sessions


def test_each_tick_produces_a_cumulative_reading_with_the_next_seq() -> None:
    state = supplying()
    for n in range(1, 11):
        reading = only(state.tick(1.0, NOW + n), MeterReading)
        assert reading.seq == n
        assert reading.session_id == "s-1"
        assert reading.kw == KW
        expected_kwh = round(KW * n / 3600, KWH_DECIMALS)
        assert reading.kwh == pytest.approx(expected_kwh, abs=1e-12)
        assert reading.eur == pytest.approx(round(expected_kwh * DRIVER_PRICE, EUR_DECIMALS), abs=1e-12)


def test_readings_use_the_price_of_the_command_not_the_cp() -> None:
    state = engine()
    state.start(command(price=0.5), NOW)
    reading = only(state.tick(100.0, NOW + 100), MeterReading)
    assert reading.kwh == 1.0
    assert reading.eur == 0.5


def test_readings_never_decrease() -> None:
    state = supplying(kw=7.4)
    figures = [only(state.tick(1.0, NOW + n), MeterReading) for n in range(1, 50)]
    kwh = [r.kwh for r in figures]
    assert kwh == sorted(kwh)
    assert [r.seq for r in figures] == list(range(1, 50))


def test_tick_while_idle_does_nothing() -> None:
    assert engine().tick(1.0, NOW) == []


def test_session_ends_by_itself_at_max_session_s() -> None:
    state = supplying(max_session_s=5.0)
    for n in range(1, 5):
        only(state.tick(1.0, NOW + n), MeterReading)
    last, end = state.tick(1.0, NOW + 5)
    assert isinstance(last, MeterReading) and last.seq == 5
    assert isinstance(end, SessionEnded)
    assert end.seq == 6
    assert end.reason is EndReason.COMPLETED
    assert (end.kwh, end.eur) == (last.kwh, last.eur)
    assert end.kwh == pytest.approx(0.05)
    assert end.ended_at == NOW + 5
    assert state.supply is None
    assert state.tick(1.0, NOW + 6) == []


def test_max_session_s_with_fractional_ticks() -> None:
    state = supplying(max_session_s=1.0)
    events: list[CpEvent] = []
    for n in range(10):
        events += state.tick(0.1, NOW + n / 10)
    assert isinstance(events[-1], SessionEnded)
    assert events[-1].reason is EndReason.COMPLETED
    assert sum(isinstance(e, MeterReading) for e in events) == 10


def test_no_max_session_runs_until_stopped() -> None:
    state = supplying()
    for n in range(1, 500):
        only(state.tick(1.0, NOW + n), MeterReading)
    assert state.supply is not None


def test_the_same_start_supply_twice_is_ignored() -> None:
    state = supplying()
    state.tick(1.0, NOW + 1)
    assert state.start(command(), NOW + 2) == []
    assert state.supply is not None and state.supply.seq == 1


def test_a_refused_start_delivered_again_is_ignored() -> None:
    state = engine()
    state.raise_fault(NOW)
    only(state.start(command(), NOW), SessionRefused)
    state.clear_fault()
    assert state.start(command(), NOW + 1) == []
    assert state.supply is None


# -------------------------------------------------------------- refusals ----


def test_start_while_busy_is_refused() -> None:
    state = supplying()
    refused = only(state.start(command("s-2"), NOW + 1), SessionRefused)
    assert refused.session_id == "s-2"
    assert refused.cp_id == CP
    assert "busy" in refused.reason
    assert state.supply is not None and state.supply.session_id == "s-1"


def test_start_while_stopped_is_refused() -> None:
    state = engine()
    assert state.stop_cp(NOW) == []
    refused = only(state.start(command(), NOW), SessionRefused)
    assert "stopped" in refused.reason
    assert state.supply is None


def test_start_while_in_fault_is_refused() -> None:
    state = engine()
    assert state.raise_fault(NOW) == []
    assert not state.healthy
    refused = only(state.start(command(), NOW), SessionRefused)
    assert "fault" in refused.reason
    assert state.supply is None


def test_start_after_expires_at_is_refused() -> None:
    state = engine()
    refused = only(state.start(command(expires_at=NOW - 0.001), NOW), SessionRefused)
    assert "expired" in refused.reason
    assert state.supply is None


def test_start_exactly_at_expires_at_is_accepted() -> None:
    only(engine().start(command(expires_at=NOW), NOW), SessionStarted)


def test_every_refusal_has_a_reason() -> None:
    for prepare in (
        lambda s: s.raise_fault(NOW),
        lambda s: s.stop_cp(NOW),
        lambda s: s.start(command("other"), NOW),
    ):
        state = engine()
        prepare(state)
        refused = only(state.start(command(), NOW), SessionRefused)
        assert refused.reason


# ------------------------------------------------------- stop/fault/end ----


def test_raise_fault_while_supplying_ends_with_fault() -> None:
    state = supplying()
    reading = only(state.tick(1.0, NOW + 1), MeterReading)
    end = only(state.raise_fault(NOW + 1.5), SessionEnded)
    assert end.reason is EndReason.FAULT
    assert end.seq == 2
    assert (end.kwh, end.eur) == (reading.kwh, reading.eur)
    assert end.ended_at == NOW + 1.5
    assert state.supply is None
    assert not state.healthy


def test_clear_fault_allows_new_sessions() -> None:
    state = engine()
    state.raise_fault(NOW)
    assert state.clear_fault() == []
    assert state.healthy
    only(state.start(command(), NOW), SessionStarted)


def test_stop_cp_ends_with_operator_and_refuses_until_resume() -> None:
    state = supplying()
    state.tick(1.0, NOW + 1)
    end = only(state.stop_cp(NOW + 2), SessionEnded)
    assert end.reason is EndReason.OPERATOR
    assert end.session_id == "s-1"
    assert state.stopped
    assert state.supply is None
    only(state.start(command("s-2"), NOW + 3), SessionRefused)
    assert state.plug_in(NOW + 3) == []
    assert state.resume_cp() == []
    assert not state.stopped
    started = only(state.start(command("s-3"), NOW + 4), SessionStarted)
    assert started.session_id == "s-3"


def test_end_with_another_session_id_does_nothing() -> None:
    state = supplying()
    assert state.end(EndReason.DRIVER, NOW + 1, session_id="someone-else") == []
    assert state.supply is not None and state.supply.session_id == "s-1"


def test_end_with_the_session_id_ends_it() -> None:
    state = supplying()
    state.tick(1.0, NOW + 1)
    end = only(state.end(EndReason.DRIVER, NOW + 2, session_id="s-1"), SessionEnded)
    assert end.reason is EndReason.DRIVER
    assert end.seq == 2
    assert state.supply is None


def test_end_while_idle_does_nothing() -> None:
    state = engine()
    assert state.end(EndReason.UNPLUGGED, NOW) == []
    assert state.end(EndReason.DRIVER, NOW, session_id="s-1") == []


def test_end_twice_gives_one_session_ended() -> None:
    state = supplying()
    only(state.end(EndReason.UNPLUGGED, NOW + 1), SessionEnded)
    assert state.end(EndReason.UNPLUGGED, NOW + 1) == []


def test_session_seqs_are_strictly_increasing() -> None:
    state = engine(max_session_s=3.0)
    events = state.start(command(), NOW)
    for n in range(1, 4):
        events += state.tick(1.0, NOW + n)
    assert [type(e) for e in events] == [
        SessionStarted,
        MeterReading,
        MeterReading,
        MeterReading,
        SessionEnded,
    ]
    assert [e.seq for e in events] == [0, 1, 2, 3, 4]


# --------------------------------------------------------------- plug in ----


def test_plug_in_starts_a_local_session_at_the_cp_price() -> None:
    state = engine()
    started = only(state.plug_in(NOW), SessionStarted)
    assert started.driver_id == "local"
    assert started.price_eur_kwh == CP_PRICE
    assert started.seq == 0
    assert started.started_at == NOW
    assert started.session_id in state.known_sessions
    reading = only(state.tick(100.0, NOW + 100), MeterReading)
    assert reading.session_id == started.session_id
    assert reading.eur == round(1.0 * CP_PRICE, EUR_DECIMALS)


def test_plug_in_sessions_get_fresh_ids() -> None:
    state = engine()
    first = only(state.plug_in(NOW), SessionStarted)
    state.end(EndReason.UNPLUGGED, NOW + 1)
    second = only(state.plug_in(NOW + 2), SessionStarted)
    assert first.session_id != second.session_id


def test_plug_in_with_a_named_driver() -> None:
    started = only(engine().plug_in(NOW, driver_id="bob"), SessionStarted)
    assert started.driver_id == "bob"


def test_plug_in_while_busy_faulty_or_stopped_does_nothing() -> None:
    busy = supplying()
    assert busy.plug_in(NOW) == []
    assert busy.supply is not None and busy.supply.session_id == "s-1"
    faulty = engine()
    faulty.raise_fault(NOW)
    assert faulty.plug_in(NOW) == []
    stopped = engine()
    stopped.stop_cp(NOW)
    assert stopped.plug_in(NOW) == []
