"""Sessions and billing: an engine's events applied exactly once, and the ticket that ends a session.

Pure logic. The engine numbers each session's events (seq 0, 1, 2, ...) and
its meter readings are cumulative, so applying an event means: ignore it if
its seq is not newer than the last one applied or if the session has ended;
otherwise take its figures. Replays and duplicates change nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from evcharge.messages import (
    ChargingProgress,
    CpEvent,
    EndReason,
    KafkaMessage,
    MeterReading,
    SessionEnded,
    SessionRefused,
    SessionStarted,
    Ticket,
)


class SessionState(enum.StrEnum):
    AUTHORISED = "authorised"  # central said yes; the engine has not started yet
    SUPPLYING = "supplying"
    ENDED = "ended"


@dataclass
class Session:
    session_id: str
    request_id: str
    cp_id: str
    driver_id: str
    price_eur_kwh: float
    created_at: float
    state: SessionState = SessionState.AUTHORISED
    started_at: float | None = None
    ended_at: float | None = None
    last_seq: int = -1
    kw: float = 0.0
    kwh: float = 0.0
    eur: float = 0.0
    end_reason: EndReason | None = None

    @property
    def active(self) -> bool:
        return self.state is not SessionState.ENDED

    def ticket(self) -> Ticket:
        assert self.ended_at is not None and self.end_reason is not None
        return Ticket(
            driver_id=self.driver_id,
            session_id=self.session_id,
            request_id=self.request_id,
            cp_id=self.cp_id,
            started_at=self.started_at or self.created_at,
            ended_at=self.ended_at,
            kwh=self.kwh,
            eur=self.eur,
            price_eur_kwh=self.price_eur_kwh,
            end_reason=self.end_reason,
        )


@dataclass(frozen=True)
class Applied:
    updates: list[KafkaMessage]


@dataclass(frozen=True)
class Ignored:
    why: str


def apply_event(session: Session, event: CpEvent) -> Applied | Ignored:
    """Apply one engine event to `session` in place; say what the driver must be told."""
    if session.state is SessionState.ENDED:
        return Ignored(f"session {session.session_id} has already ended")
    if isinstance(event, SessionRefused):
        return Applied([end_session(session, EndReason.NOT_STARTED, event.ts)])
    if event.seq <= session.last_seq:
        return Ignored(f"event {event.seq} of session {session.session_id} was applied before")
    session.last_seq = event.seq
    if isinstance(event, SessionStarted):
        session.state = SessionState.SUPPLYING
        session.started_at = event.started_at
        return Applied([_progress(session)])
    if isinstance(event, MeterReading):
        session.state = SessionState.SUPPLYING
        session.kw, session.kwh, session.eur = event.kw, event.kwh, event.eur
        return Applied([_progress(session)])
    assert isinstance(event, SessionEnded)
    session.kwh, session.eur = event.kwh, event.eur
    return Applied([end_session(session, event.reason, event.ended_at)])


def end_session(session: Session, reason: EndReason, at: float) -> Ticket:
    """Close the session with the figures it has and return its one ticket."""
    session.state = SessionState.ENDED
    session.kw = 0.0
    session.ended_at = at
    session.end_reason = reason
    return session.ticket()


def _progress(session: Session) -> ChargingProgress:
    return ChargingProgress(
        driver_id=session.driver_id,
        session_id=session.session_id,
        cp_id=session.cp_id,
        seq=max(session.last_seq, 0),
        kw=session.kw,
        kwh=session.kwh,
        eur=session.eur,
    )
