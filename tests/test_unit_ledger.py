"""Unit tests for evcharge.central.ledger: engine events applied exactly once, the ticket, and the
meter's revision of a ticket central issued itself."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evcharge.central.ledger import (
    Applied,
    Ignored,
    Session,
    SessionState,
    apply_event,
    close_by_central,
)
from evcharge.protocol.messages import (
    ChargingProgress,
    EndReason,
    MeterReading,
    SessionEnded,
    SessionRefused,
    SessionStarted,
    StopSupply,
    Ticket,
)
from evcharge.protocol.units import cost_micro_eur

SID = "sess-0001"
CP = "CP-1"
PRICE = 400_000  # 0.40 EUR/kWh
CREATED, STARTED, ENDED, NOW = 1_000.0, 1_005.0, 1_065.0, 2_000.0
CpEvent = SessionStarted | MeterReading | SessionEnded | SessionRefused


def ids():
    counter = itertools.count(1)
    return lambda: f"id-{next(counter)}"


def new_session() -> Session:
    return Session(
        session_id=SID, request_id="req-1", cp_id=CP, driver_id="alice", price=PRICE, created_at=CREATED
    )


def started(seq: int = 0) -> SessionStarted:
    return SessionStarted(
        cp_id=CP, session_id=SID, driver_id="alice", seq=seq, started_at=STARTED, price=PRICE
    )


def reading(seq: int, wh: int, power_w: int = 11_000) -> MeterReading:
    return MeterReading(
        cp_id=CP, session_id=SID, seq=seq, power_w=power_w, wh=wh, micro_eur=cost_micro_eur(wh, PRICE)
    )


def ended(seq: int, wh: int, reason: EndReason = EndReason.DRIVER) -> SessionEnded:
    return SessionEnded(
        cp_id=CP,
        session_id=SID,
        seq=seq,
        wh=wh,
        micro_eur=cost_micro_eur(wh, PRICE),
        ended_at=ENDED,
        reason=reason,
    )


def full_sequence() -> list[CpEvent]:
    return [started(), reading(1, 100), reading(2, 200), reading(3, 300), ended(4, 300)]


def run(session: Session, events: list[CpEvent]) -> tuple[Session, list[object]]:
    """Apply events in order like central does; the final session and every update sent."""
    new_id = ids()
    sent: list[object] = []
    for event in events:
        result = apply_event(session, event, new_id, NOW)
        if isinstance(result, Applied):
            session = result.session
            sent += result.updates
    return session, sent


def tickets(sent: list[object]) -> list[Ticket]:
    return [u for u in sent if isinstance(u, Ticket)]


# -------------------------------------------------------------- the happy path ----


def test_a_new_session_is_authorised_and_active() -> None:
    session = new_session()
    assert session.state is SessionState.AUTHORISED and session.active and session.last_seq == -1


def test_started_moves_to_supplying_and_reports_progress_without_changing_the_original() -> None:
    session = new_session()
    result = apply_event(session, started(), ids(), NOW)
    assert isinstance(result, Applied)
    assert session.state is SessionState.AUTHORISED, "sessions are immutable: the caller swaps"
    assert result.session.state is SessionState.SUPPLYING and result.session.started_at == STARTED
    [progress] = result.updates
    assert isinstance(progress, ChargingProgress)
    assert (progress.seq, progress.wh, progress.micro_eur) == (0, 0, 0)


def test_readings_take_the_meters_figures_and_the_end_bills_them_exactly() -> None:
    session, sent = run(new_session(), full_sequence())
    [ticket] = tickets(sent)
    assert session.state is SessionState.ENDED and session.meter_final
    assert (ticket.wh, ticket.micro_eur) == (300, 120_000)
    assert (ticket.revision, ticket.provisional, ticket.replaces) == (1, False, None)
    assert (ticket.started_at, ticket.ended_at, ticket.end_reason) == (STARTED, ENDED, EndReason.DRIVER)
    assert [type(u).__name__ for u in sent] == ["ChargingProgress"] * 4 + ["Ticket"]


def test_a_refused_start_ends_the_session_not_started_with_a_zero_ticket() -> None:
    refused = SessionRefused(cp_id=CP, session_id=SID, reason="engine fault", ts=1_001.0)
    _, sent = run(new_session(), [refused])
    [ticket] = tickets(sent)
    assert (ticket.end_reason, ticket.wh, ticket.micro_eur) == (EndReason.NOT_STARTED, 0, 0)


# ------------------------------------------------------------ exactly once ----


def test_a_replayed_or_out_of_order_event_changes_nothing() -> None:
    events = full_sequence()
    once, _ = run(new_session(), events)
    twice, sent_twice = run(new_session(), [*events[:3], events[1], events[0], *events[3:], *events])
    assert (once.wh, once.micro_eur, once.last_seq) == (twice.wh, twice.micro_eur, twice.last_seq)
    assert len(tickets(sent_twice)) == 1


def test_an_older_reading_arriving_after_a_newer_one_changes_nothing_and_tells_nobody() -> None:
    session, _ = run(new_session(), [started(), reading(3, 300)])
    result = apply_event(session, reading(1, 100), ids(), NOW)
    assert isinstance(result, Ignored), "the bill never goes backwards"
    again = apply_event(session, reading(3, 300), ids(), NOW)
    assert isinstance(again, Ignored), "the same reading twice is applied once"
    assert (session.wh, session.last_seq) == (300, 3)


@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=30))
def test_any_redelivery_of_the_events_bills_what_the_in_order_run_bills(order: list[int]) -> None:
    events = full_sequence()
    replayed = [events[i] for i in order] + events  # whatever came first, everything arrives at least once
    reference, _ = run(new_session(), events)
    session, sent = run(new_session(), replayed)
    assert (session.wh, session.micro_eur) == (reference.wh, reference.micro_eur)
    assert len(tickets(sent)) == 1


# -------------------------------------------------------- the meter is the truth ----


def test_central_closing_a_started_session_bills_what_it_had_and_tells_the_engine() -> None:
    session, _ = run(new_session(), [started(), reading(1, 100)])
    closed, sent = close_by_central(session, EndReason.ENGINE_FAILURE, ids(), NOW)
    ticket, stop = sent
    assert isinstance(ticket, Ticket) and isinstance(stop, StopSupply)
    assert (ticket.wh, ticket.provisional, ticket.revision) == (100, True, 1)
    assert (stop.session_id, stop.reason) == (SID, EndReason.ENGINE_FAILURE)
    assert closed.closed_by_central and not closed.meter_final and closed.provisional


def test_readings_central_had_not_seen_revise_its_ticket_once_with_the_meters_figures() -> None:
    session, _ = run(new_session(), [started(), reading(1, 100)])
    closed, first = close_by_central(session, EndReason.ENGINE_FAILURE, ids(), NOW)
    revised, sent = run(closed, [reading(2, 200), reading(3, 300), ended(4, 300, EndReason.INTERRUPTED)])
    [correction] = tickets(sent)
    assert (correction.wh, correction.micro_eur) == (300, 120_000)
    assert (correction.revision, correction.provisional) == (2, False)
    assert correction.replaces == first[0].id
    assert correction.end_reason is EndReason.ENGINE_FAILURE, "the session ended because its engine failed"
    assert revised.meter_final and (revised.billed_wh, revised.billed_micro_eur) == (300, 120_000)
    assert not any(isinstance(u, ChargingProgress) for u in sent), (
        "the driver hears no progress of an ended session"
    )


def test_the_meter_confirming_central_s_figures_turns_the_provisional_ticket_final() -> None:
    session, _ = run(new_session(), [started(), reading(1, 100)])
    closed, _ = close_by_central(session, EndReason.ENGINE_FAILURE, ids(), NOW)
    _, sent = run(closed, [ended(2, 100, EndReason.ENGINE_FAILURE)])
    [confirmation] = tickets(sent)
    assert (confirmation.wh, confirmation.revision, confirmation.provisional) == (100, 2, False)


def test_after_the_meter_s_final_word_nothing_changes_the_bill_again() -> None:
    session, _ = run(new_session(), [started(), reading(1, 100)])
    closed, _ = close_by_central(session, EndReason.ENGINE_FAILURE, ids(), NOW)
    final, _ = run(closed, [ended(2, 150)])
    again, sent = run(final, [reading(3, 999), ended(4, 999), ended(2, 150)])
    assert sent == [] and (again.wh, again.ticket_revision) == (150, 2)


def test_a_not_started_session_closed_by_central_needs_no_revision_when_the_meter_agrees() -> None:
    closed, first = close_by_central(new_session(), EndReason.NOT_STARTED, ids(), NOW)
    assert not first[0].provisional, "nothing was supplied: the ticket is final"
    refused = SessionRefused(cp_id=CP, session_id=SID, reason="withdrawn")
    after, sent = run(closed, [refused])
    assert sent == [] and after.meter_final


def test_an_engine_that_started_after_central_gave_up_is_billed_what_it_metered() -> None:
    closed, _ = close_by_central(new_session(), EndReason.NOT_STARTED, ids(), NOW)
    revised, sent = run(closed, [started(), reading(1, 40), ended(2, 40, EndReason.NOT_STARTED)])
    [correction] = tickets(sent)
    assert (correction.wh, correction.revision) == (40, 2)
    assert revised.wh == 40


def test_an_engine_that_ended_the_session_itself_is_never_revised() -> None:
    session, _ = run(new_session(), full_sequence())
    result = apply_event(session, reading(5, 900), ids(), NOW)
    assert isinstance(result, Ignored)


def test_a_sessions_update_is_replace_without_its_cost() -> None:
    session = Session("s-1", "r-1", "CP-1", "driver-1", 350_000, 1.0)
    changes = {"state": SessionState.SUPPLYING, "last_seq": 3, "wh": 120, "micro_eur": 42_000}
    updated = session.updated(**changes)
    assert updated == dataclasses.replace(session, **changes)  # type: ignore[arg-type]
    assert hash(updated) == hash(dataclasses.replace(session, **changes))  # type: ignore[arg-type]
    assert (session.state, session.last_seq, session.wh) == (SessionState.AUTHORISED, -1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        updated.wh = 0  # type: ignore[misc]
    with pytest.raises(TypeError, match="no field whh"):
        session.updated(whh=1)
