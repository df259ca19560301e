"""Unit tests for evcharge.central.ledger: engine events applied exactly once, and the ticket."""

from __future__ import annotations

import pytest

from evcharge.central.ledger import (
    Applied,
    Ignored,
    Session,
    SessionState,
    apply_event,
    end_session,
)
from evcharge.messages import (
    ChargingProgress,
    CpEvent,
    EndReason,
    MeterReading,
    SessionEnded,
    SessionRefused,
    SessionStarted,
    Ticket,
)

SID = "sess-0001"
CP = "CP-1"
PRICE = 0.4
CREATED = 1_000.0
STARTED = 1_005.0
ENDED = 1_065.0


def new_session() -> Session:
    return Session(
        session_id=SID,
        request_id="req-1",
        cp_id=CP,
        driver_id="alice",
        price_eur_kwh=PRICE,
        created_at=CREATED,
    )


def started(seq: int = 0) -> SessionStarted:
    return SessionStarted(
        cp_id=CP,
        session_id=SID,
        driver_id="alice",
        seq=seq,
        started_at=STARTED,
        price_eur_kwh=PRICE,
    )


def reading(seq: int, kwh: float, kw: float = 11.0) -> MeterReading:
    return MeterReading(cp_id=CP, session_id=SID, seq=seq, kw=kw, kwh=kwh, eur=round(kwh * PRICE, 4))


def ended(seq: int, kwh: float, reason: EndReason = EndReason.DRIVER) -> SessionEnded:
    return SessionEnded(
        cp_id=CP,
        session_id=SID,
        seq=seq,
        kwh=kwh,
        eur=round(kwh * PRICE, 4),
        ended_at=ENDED,
        reason=reason,
    )


def full_sequence() -> list[CpEvent]:
    return [started(), reading(1, 0.1), reading(2, 0.2), reading(3, 0.3), ended(4, 0.3)]


def tickets(results: list[Applied | Ignored]) -> list[Ticket]:
    return [u for r in results if isinstance(r, Applied) for u in r.updates if isinstance(u, Ticket)]


def apply_all(session: Session, events: list[CpEvent]) -> list[Applied | Ignored]:
    return [apply_event(session, e) for e in events]


def snapshot(session: Session) -> tuple:
    return (
        session.state,
        session.started_at,
        session.ended_at,
        session.last_seq,
        session.kw,
        session.kwh,
        session.eur,
        session.end_reason,
    )


# -------------------------------------------------------------- the happy path ----


def test_new_session_is_authorised_and_active() -> None:
    session = new_session()
    assert session.state is SessionState.AUTHORISED
    assert session.active
    assert session.last_seq == -1


def test_session_started_moves_to_supplying_and_reports_progress() -> None:
    session = new_session()
    result = apply_event(session, started())
    assert isinstance(result, Applied)
    assert session.state is SessionState.SUPPLYING
    assert session.started_at == STARTED
    assert session.last_seq == 0
    [progress] = result.updates
    assert isinstance(progress, ChargingProgress)
    assert (progress.seq, progress.kwh, progress.eur) == (0, 0.0, 0.0)
    assert (progress.driver_id, progress.session_id, progress.cp_id) == ("alice", SID, CP)


def test_meter_reading_takes_its_figures_and_reports_them() -> None:
    session = new_session()
    apply_event(session, started())
    result = apply_event(session, reading(1, 0.25, kw=7.4))
    assert isinstance(result, Applied)
    assert (session.kw, session.kwh, session.eur) == (7.4, 0.25, 0.1)
    [progress] = result.updates
    assert isinstance(progress, ChargingProgress)
    assert (progress.seq, progress.kw, progress.kwh, progress.eur) == (1, 7.4, 0.25, 0.1)


def test_full_session_ends_with_a_ticket_of_the_last_figures() -> None:
    session = new_session()
    results = apply_all(session, full_sequence())
    assert all(isinstance(r, Applied) for r in results)
    [ticket] = tickets(results)
    assert results[-1].updates == [ticket]
    assert ticket.kwh == 0.3
    assert ticket.eur == round(0.3 * PRICE, 4)
    assert ticket.end_reason is EndReason.DRIVER
    assert ticket.started_at == STARTED
    assert ticket.ended_at == ENDED
    assert ticket.price_eur_kwh == PRICE
    assert (ticket.driver_id, ticket.session_id, ticket.request_id, ticket.cp_id) == (
        "alice",
        SID,
        "req-1",
        CP,
    )
    assert session.state is SessionState.ENDED
    assert not session.active
    assert session.kw == 0.0
    assert session.end_reason is EndReason.DRIVER


def test_ticket_figures_come_from_session_ended_not_the_last_reading() -> None:
    session = new_session()
    apply_all(session, [started(), reading(1, 0.1)])
    [ticket] = tickets([apply_event(session, ended(2, 0.15, EndReason.UNPLUGGED))])
    assert ticket.kwh == 0.15
    assert ticket.eur == round(0.15 * PRICE, 4)
    assert ticket.end_reason is EndReason.UNPLUGGED


# ----------------------------------------------------------- exactly once ----


@pytest.mark.parametrize("index", range(5))
def test_duplicate_events_are_ignored(index: int) -> None:
    events = full_sequence()
    session = new_session()
    for event in events[: index + 1]:
        apply_event(session, event)
    before = snapshot(session)
    again = apply_event(session, events[index])
    assert isinstance(again, Ignored)
    assert again.why
    assert snapshot(session) == before


def test_each_event_delivered_twice_in_a_row_gives_the_same_result_and_one_ticket() -> None:
    once, twice = new_session(), new_session()
    apply_all(once, full_sequence())
    doubled = [e for e in full_sequence() for _ in range(2)]
    results = apply_all(twice, doubled)
    assert [isinstance(r, Applied) for r in results] == [True, False] * 5
    assert len(tickets(results)) == 1
    assert snapshot(twice) == snapshot(once)


def test_replaying_the_whole_sequence_changes_nothing_and_gives_no_second_ticket() -> None:
    session = new_session()
    first = apply_all(session, full_sequence())
    after_first = snapshot(session)
    second = apply_all(session, full_sequence())
    assert len(tickets(first)) == 1
    assert tickets(second) == []
    assert all(isinstance(r, Ignored) for r in second)
    assert snapshot(session) == after_first


def test_replaying_a_prefix_mid_session_changes_nothing() -> None:
    session = new_session()
    apply_all(session, full_sequence()[:4])
    before = snapshot(session)
    results = apply_all(session, full_sequence()[:4])
    assert all(isinstance(r, Ignored) for r in results)
    assert snapshot(session) == before
    assert session.active


def test_events_after_the_end_are_ignored() -> None:
    session = new_session()
    apply_all(session, full_sequence())
    before = snapshot(session)
    late = [
        reading(5, 9.9),
        ended(6, 9.9, EndReason.FAULT),
        SessionRefused(cp_id=CP, session_id=SID, reason="late"),
    ]
    results = apply_all(session, late)
    assert all(isinstance(r, Ignored) for r in results)
    assert snapshot(session) == before
    assert session.kwh == 0.3
    assert session.end_reason is EndReason.DRIVER


def test_an_older_reading_out_of_order_is_ignored_and_does_not_lower_kwh() -> None:
    session = new_session()
    apply_all(session, [started(), reading(1, 0.1), reading(3, 0.3)])
    result = apply_event(session, reading(2, 0.2))
    assert isinstance(result, Ignored)
    assert session.kwh == 0.3
    assert session.last_seq == 3
    [ticket] = tickets([apply_event(session, ended(4, 0.3))])
    assert ticket.kwh == 0.3


def test_a_reading_before_session_started_still_counts_and_started_is_then_ignored() -> None:
    # Readings are cumulative: a missing SessionStarted does not lose energy.
    session = new_session()
    assert isinstance(apply_event(session, reading(1, 0.1)), Applied)
    assert session.state is SessionState.SUPPLYING
    assert isinstance(apply_event(session, started()), Ignored)
    assert session.kwh == 0.1


def test_session_ended_without_session_started_uses_the_creation_time() -> None:
    session = new_session()
    [ticket] = tickets([apply_event(session, ended(3, 0.05, EndReason.INTERRUPTED))])
    assert ticket.started_at == CREATED
    assert ticket.kwh == 0.05
    assert ticket.end_reason is EndReason.INTERRUPTED


# -------------------------------------------------------------- refusals ----


def test_session_refused_on_an_authorised_session_ends_it_not_started() -> None:
    session = new_session()
    refusal = SessionRefused(cp_id=CP, session_id=SID, reason="engine fault", ts=1_002.5)
    result = apply_event(session, refusal)
    assert isinstance(result, Applied)
    [ticket] = result.updates
    assert isinstance(ticket, Ticket)
    assert ticket.end_reason is EndReason.NOT_STARTED
    assert ticket.kwh == 0.0
    assert ticket.eur == 0.0
    assert ticket.ended_at == 1_002.5
    assert ticket.started_at == CREATED
    assert session.state is SessionState.ENDED
    assert isinstance(apply_event(session, refusal), Ignored)
    assert isinstance(apply_event(session, started()), Ignored)


# ----------------------------------------------------------- end_session ----


@pytest.mark.parametrize("reason", list(EndReason))
def test_end_session_returns_one_ticket_with_the_given_reason(reason: EndReason) -> None:
    session = new_session()
    apply_all(session, [started(), reading(1, 0.12)])
    ticket = end_session(session, reason, 2_000.0)
    assert isinstance(ticket, Ticket)
    assert ticket.end_reason is reason
    assert ticket.ended_at == 2_000.0
    assert ticket.kwh == 0.12
    assert ticket.eur == round(0.12 * PRICE, 4)
    assert session.state is SessionState.ENDED
    assert not session.active
    assert session.kw == 0.0
    # Nothing the engine sends afterwards produces another ticket.
    later = apply_all(session, [reading(2, 0.2), ended(3, 0.2)])
    assert tickets(later) == []
    assert session.kwh == 0.12


def test_end_session_of_an_authorised_session_bills_nothing() -> None:
    session = new_session()
    ticket = end_session(session, EndReason.NOT_STARTED, 1_030.0)
    assert (ticket.kwh, ticket.eur, ticket.started_at) == (0.0, 0.0, CREATED)
    assert ticket.end_reason is EndReason.NOT_STARTED


def test_ticket_round_trips_the_wire_format() -> None:
    from evcharge.messages import DriverUpdate, decode, encode

    session = new_session()
    [ticket] = tickets(apply_all(session, full_sequence()))
    assert decode(encode(ticket), DriverUpdate) == ticket
