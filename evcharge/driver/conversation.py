"""What a driver hears from central, matched to what it asked: the one matcher the driver, the
fleet simulator and the benchmark share.

Pure. `hear` takes the request being waited on (if any) and one update, and
says what it is: the answer to that request, a live reading, a ticket (for it,
or one missed while away), or the meter's revision of an earlier ticket.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from evcharge.protocol.messages import ChargingProgress, RequestAccepted, RequestDenied, Ticket

DriverUpdate = RequestAccepted | RequestDenied | ChargingProgress | Ticket


class Kind(enum.StrEnum):
    ACCEPTED = "accepted"
    DENIED = "denied"
    PROGRESS = "progress"
    TICKET = "ticket"  # a session's first ticket
    REVISION = "revision"  # the meter confirmed or corrected a ticket issued before


@dataclass
class Waiting:
    """The request a driver waits on, and what it has heard of it so far."""

    request_id: str
    cp_id: str
    index: int
    session_id: str | None = None
    readings: int = 0


@dataclass(frozen=True)
class Heard:
    kind: Kind
    update: DriverUpdate
    mine: bool  # about the request being waited on
    final: bool  # the request being waited on has its outcome (a denial or a ticket)
    first_reading: bool = False


def hear(waiting: Waiting | None, update: DriverUpdate) -> Heard:
    """Classify one update; mutates `waiting` only to note the session and readings heard."""
    if isinstance(update, RequestAccepted):
        mine = waiting is not None and update.request_id == waiting.request_id
        if mine and waiting is not None:
            waiting.session_id = update.session_id
        return Heard(Kind.ACCEPTED, update, mine, final=False)
    if isinstance(update, ChargingProgress):
        mine = waiting is not None and update.session_id == waiting.session_id
        first = False
        if mine and waiting is not None:
            first = waiting.readings == 0 and update.seq > 0
            if update.seq > 0:
                waiting.readings += 1
        return Heard(Kind.PROGRESS, update, mine, final=False, first_reading=first)
    if isinstance(update, RequestDenied):
        mine = waiting is not None and update.request_id == waiting.request_id
        return Heard(Kind.DENIED, update, mine, final=mine)
    mine = waiting is not None and update.request_id == waiting.request_id
    if update.revision > 1:
        return Heard(Kind.REVISION, update, mine, final=mine)
    return Heard(Kind.TICKET, update, mine, final=mine)
