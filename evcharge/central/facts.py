"""What happened at central, as data: the vocabulary its observers subscribe to.

Central's decisions return facts beside the changes they make; the service
hands them, after the commit, to every observer (the panel's messages, the
audit log, the counters, the metrics, the live web page). None of them reaches
into central's state to find out what changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from evcharge.central.ledger import Session
from evcharge.protocol.messages import Health


@dataclass(frozen=True)
class CpRegistered:
    cp_id: str
    location: str
    price: int
    peer: str
    new: bool


@dataclass(frozen=True)
class RegistrationRefused:
    cp_id: str
    peer: str
    code: str
    reason: str


@dataclass(frozen=True)
class MonitorLeft:
    cp_id: str
    why: str


@dataclass(frozen=True)
class HealthChanged:
    cp_id: str
    health: Health
    before: Health | None
    detail: str = ""


@dataclass(frozen=True)
class Authorised:
    driver_id: str
    cp_id: str
    session_id: str
    request_id: str
    waited_s: float  # how long the request waited before it was decided
    source: str = "kafka"  # where the request came from: kafka, or the HTTP client's address


@dataclass(frozen=True)
class Denied:
    driver_id: str
    cp_id: str
    request_id: str
    code: str
    reason: str
    waited_s: float
    source: str = "kafka"


@dataclass(frozen=True)
class StopAsked:
    driver_id: str
    session_id: str
    cp_id: str
    refused: str | None = None  # why it was not passed on


@dataclass(frozen=True)
class LocalSupply:
    cp_id: str
    driver_id: str


@dataclass(frozen=True)
class SessionClosed:
    session: Session
    by_central: bool


@dataclass(frozen=True)
class TicketRevised:
    """The engine's meter confirmed (same figures) or corrected the ticket central had issued."""

    session: Session
    before_wh: int
    before_micro_eur: int


@dataclass(frozen=True)
class EventsApplied:
    applied: int
    ignored: int
    cp_ids: tuple[str, ...]  # the CPs whose session figures moved


@dataclass(frozen=True)
class OperatorChanged:
    cp_id: str
    stopped: bool
    by: str  # panel, http, ctl
    peer: str = ""


@dataclass(frozen=True)
class CpForgotten:
    cp_id: str
    by: str
    peer: str = ""


@dataclass(frozen=True)
class OperatorRefused:
    action: str
    by: str
    reason: str
    peer: str = ""


@dataclass(frozen=True)
class DeadLettered:
    topic: str
    reason: str
    code: str = "undecodable"  # or unknown_cp, unknown_session: what `evcharge_dead_letters_total` counts


Fact = (
    CpRegistered
    | RegistrationRefused
    | MonitorLeft
    | HealthChanged
    | Authorised
    | Denied
    | StopAsked
    | LocalSupply
    | SessionClosed
    | TicketRevised
    | EventsApplied
    | OperatorChanged
    | CpForgotten
    | OperatorRefused
    | DeadLettered
)
