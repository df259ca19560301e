"""Sessions and billing: an engine's events applied exactly once, the ticket that ends a session,
and the correction when the meter knew more than central did.

Pure. The engine numbers each session's events (seq 0, 1, 2, ...) and its meter
readings are cumulative, so applying an event means: ignore it if its seq is not
newer than the last one applied; otherwise take its figures. Replays and
duplicates change nothing. Sessions are immutable: every change returns a new
`Session`, so a caller can compute a decision, commit it, and only then let it
replace what memory holds.

The meter is the truth. When central closes a session itself (its engine died or
never started it), it bills the last reading it applied; should the engine later
report readings central had not seen, its own end of the session replaces that
ticket with one revised ticket.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from evcharge.protocol.messages import (
    ChargingProgress,
    EndReason,
    KafkaMessage,
    MeterReading,
    SessionEnded,
    SessionRefused,
    SessionStarted,
    StopSupply,
    Ticket,
)

CpEvent = SessionStarted | MeterReading | SessionEnded | SessionRefused
NewId = Callable[[], str]


class SessionState(enum.StrEnum):
    AUTHORISED = "authorised"  # central said yes; the engine has not started yet
    SUPPLYING = "supplying"
    ENDED = "ended"


@dataclass(frozen=True)
class Session:
    session_id: str
    request_id: str
    cp_id: str
    driver_id: str
    price: int  # micro-euros per kWh
    created_at: float
    state: SessionState = SessionState.AUTHORISED
    started_at: float | None = None
    ended_at: float | None = None
    last_seq: int = -1
    power_w: int = 0
    wh: int = 0
    micro_eur: int = 0
    end_reason: EndReason | None = None
    # Set when central, not the engine, ended the session: the engine's own end of
    # it (`meter_final`) may still come and revise the ticket.
    closed_by_central: bool = False
    meter_final: bool = False
    ticket_revision: int = 0
    ticket_id: str | None = None  # the ticket the driver holds now
    billed_wh: int = 0  # what that ticket says
    billed_micro_eur: int = 0

    def updated(self, **changes: Any) -> Session:
        """This session with `changes`: `dataclasses.replace`, at a fifth of its cost. Every
        reading makes one, thousands a second when central works off a backlog, and replace
        looks the fields up and runs the frozen `__init__` (an `object.__setattr__` each) anew."""
        if not changes.keys() <= _SESSION_FIELDS:
            raise TypeError(f"Session has no field {', '.join(sorted(changes.keys() - _SESSION_FIELDS))}")
        copy = object.__new__(Session)
        copy.__dict__.update(self.__dict__, **changes)
        return copy

    @property
    def active(self) -> bool:
        return self.state is not SessionState.ENDED

    @property
    def provisional(self) -> bool:
        """The driver's ticket may still be revised by the engine's meter."""
        return self.closed_by_central and not self.meter_final and self.started_at is not None


_SESSION_FIELDS = frozenset(f.name for f in fields(Session))


@dataclass(frozen=True)
class Applied:
    session: Session
    updates: list[KafkaMessage]


@dataclass(frozen=True)
class Ignored:
    why: str


def apply_event(session: Session, event: CpEvent, new_id: NewId, now: float) -> Applied | Ignored:
    """Apply one engine event; say what the driver must be told."""
    if session.state is SessionState.ENDED:
        return _late(session, event, new_id, now)
    if isinstance(event, SessionRefused):
        ended = _end(session, EndReason.NOT_STARTED, event.ts, meter_final=True)
        return _billed(ended, new_id, now)
    if event.seq <= session.last_seq:
        return Ignored(f"event {event.seq} of session {session.session_id} was applied before")
    if isinstance(event, SessionStarted):
        started = session.updated(
            state=SessionState.SUPPLYING, started_at=event.started_at, last_seq=event.seq
        )
        return Applied(started, [_progress(started, new_id, now)])
    if isinstance(event, MeterReading):
        reading = session.updated(
            state=SessionState.SUPPLYING,
            last_seq=event.seq,
            power_w=event.power_w,
            wh=event.wh,
            micro_eur=event.micro_eur,
        )
        return Applied(reading, [_progress(reading, new_id, now)])
    ended = session.updated(last_seq=event.seq, wh=event.wh, micro_eur=event.micro_eur)
    return _billed(_end(ended, event.reason, event.ended_at, meter_final=True), new_id, now)


def close_by_central(
    session: Session, reason: EndReason, new_id: NewId, now: float
) -> tuple[Session, list[KafkaMessage]]:
    """Central ends a session its engine cannot end (dead, hung, never started it).

    Billed at the last reading central applied; the engine is told, in case it comes
    back to the session, and its own end of it then confirms or corrects the ticket.
    """
    ended = _end(session, reason, now, meter_final=False).updated(closed_by_central=True)
    billed = _billed(ended, new_id, now)
    stop = StopSupply(id=new_id(), ts=now, cp_id=session.cp_id, session_id=session.session_id, reason=reason)
    return billed.session, [*billed.updates, stop]


def _late(session: Session, event: CpEvent, new_id: NewId, now: float) -> Applied | Ignored:
    """An event for a session that has ended: only the engine's meter can still say more."""
    if not session.closed_by_central or session.meter_final:
        return Ignored(f"session {session.session_id} has already ended")
    if isinstance(event, SessionRefused):
        return Applied(session.updated(meter_final=True), [])
    if event.seq <= session.last_seq:
        return Ignored(f"event {event.seq} of session {session.session_id} was applied before")
    if isinstance(event, SessionStarted):
        return Applied(session.updated(started_at=event.started_at, last_seq=event.seq), [])
    if isinstance(event, MeterReading):
        # The session is over for the driver: no progress, but the figures are the meter's.
        return Applied(session.updated(last_seq=event.seq, wh=event.wh, micro_eur=event.micro_eur), [])
    final = session.updated(last_seq=event.seq, wh=event.wh, micro_eur=event.micro_eur, meter_final=True)
    if (
        final.wh == session.billed_wh
        and final.micro_eur == session.billed_micro_eur
        and not session.provisional
    ):
        return Applied(final, [])  # nothing to revise: the ticket the driver has is the meter's
    return _billed(final, new_id, now)


def _end(session: Session, reason: EndReason, at: float, *, meter_final: bool) -> Session:
    return session.updated(
        state=SessionState.ENDED,
        power_w=0,
        ended_at=at,
        end_reason=session.end_reason or reason,
        meter_final=meter_final,
    )


def _billed(session: Session, new_id: NewId, now: float) -> Applied:
    """The session with its next ticket, which replaces the previous one if there was one."""
    assert session.ended_at is not None and session.end_reason is not None
    ticket = Ticket(
        id=new_id(),
        ts=now,
        driver_id=session.driver_id,
        session_id=session.session_id,
        request_id=session.request_id,
        cp_id=session.cp_id,
        started_at=session.started_at or session.created_at,
        ended_at=session.ended_at,
        wh=session.wh,
        micro_eur=session.micro_eur,
        price=session.price,
        end_reason=session.end_reason,
        revision=session.ticket_revision + 1,
        provisional=session.provisional,
        replaces=session.ticket_id,
    )
    billed = session.updated(
        ticket_revision=ticket.revision,
        ticket_id=ticket.id,
        billed_wh=session.wh,
        billed_micro_eur=session.micro_eur,
    )
    return Applied(billed, [ticket])


def _progress(session: Session, new_id: NewId, now: float) -> ChargingProgress:
    return ChargingProgress(
        id=new_id(),
        ts=now,
        driver_id=session.driver_id,
        session_id=session.session_id,
        cp_id=session.cp_id,
        seq=max(session.last_seq, 0),
        power_w=session.power_w,
        wh=session.wh,
        micro_eur=session.micro_eur,
    )
