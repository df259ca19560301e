"""Central's decisions: plain functions of its state and one input, with the clock and the id
generator as arguments, returning what changes and what must be sent.

Pure: nothing here awaits, writes or reads a clock. `evcharge.central.service`
commits each `Decision`'s change in one store transaction, then applies it to
memory, then tells the observers its facts; tests call these functions directly
with a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from evcharge.central import facts
from evcharge.central.credentials import Deny, check_registration
from evcharge.central.ledger import (
    Applied,
    CpEvent,
    Session,
    SessionState,
    apply_event,
    close_by_central,
)
from evcharge.central.state import CentralState, Change, CpRecord, Link, Outcome, RequestOutcome
from evcharge.central.status import denial_for
from evcharge.protocol import signing
from evcharge.protocol.messages import (
    ChargeRequest,
    ChargingProgress,
    DenyCode,
    EndReason,
    Health,
    KafkaMessage,
    Register,
    RequestAccepted,
    RequestDenied,
    ResumeCp,
    SessionStarted,
    StartSupply,
    StopCp,
    StopRequest,
    StopSupply,
)

R = TypeVar("R")
NewId = Callable[[], str]


@dataclass(frozen=True)
class Rules:
    """Central's policy, from its settings."""

    request_ttl_s: float = 60.0
    start_timeout_s: float = 10.0
    join_token: str | None = None  # None: registrations need no credential (loopback)


@dataclass(frozen=True)
class Refusal:
    code: str
    reason: str


@dataclass
class Decision(Generic[R]):
    change: Change = field(default_factory=Change)
    result: R | None = None
    refusal: Refusal | None = None


# ------------------------------------------------------------------ monitors


def register(
    state: CentralState,
    frame: Register,
    peer: str,
    *,
    stored_hash: str | None,
    rules: Rules,
    now: float,
    new_id: NewId,
    new_key: NewId = signing.new_key,
) -> Decision[str]:
    """A monitor introduces its CP: credentials, then the one-live-monitor rule, then the registry.

    With credentials on, the result is the key the CP's engine signs its events with:
    issued at the CP's first registration, the same at every one after.
    """
    cp_id = frame.cp_id
    store_hash = None
    if rules.join_token is not None:
        verdict = check_registration(
            cp_id,
            join_token=rules.join_token,
            presented_token=frame.token,
            presented_secret=frame.secret,
            stored_hash=stored_hash,
        )
        if isinstance(verdict, Deny):
            return _refuse_registration(cp_id, peer, verdict.code, verdict.reason)
        store_hash = verdict.store_hash
    link = state.links.get(cp_id)
    if link is not None and link.instance != frame.instance:
        return _refuse_registration(
            cp_id,
            peer,
            "duplicate_cp",
            f"{cp_id} already has a live monitor connected from {link.peer}; "
            "stop it first or use another CP id",
        )
    known = state.cps.get(cp_id)
    record = CpRecord(
        cp_id=cp_id,
        location=frame.location,
        price=frame.price,
        max_w=frame.max_w,
        stopped=known.stopped if known else False,
        registered_at=known.registered_at if known else now,
    )
    change = Change(links={cp_id: Link(frame.instance, peer, frame.pid, frame.engine)})
    if record != known:
        change.cps[cp_id] = record
    if store_hash is not None:
        change.secrets[cp_id] = store_hash
    engine_key = None
    if rules.join_token is not None:
        engine_key = state.engine_keys.get(cp_id)
        if engine_key is None:
            engine_key = change.engine_keys[cp_id] = new_key()
    change.facts.append(facts.CpRegistered(cp_id, record.location, record.price, peer, new=known is None))
    change.merge(_health(state, cp_id, frame.health, "", now, new_id))
    return Decision(change, engine_key)


def _refuse_registration(cp_id: str, peer: str, code: str, reason: str) -> Decision[str]:
    return Decision(
        Change(facts=[facts.RegistrationRefused(cp_id, peer, code, reason)]), refusal=Refusal(code, reason)
    )


def heartbeat(
    state: CentralState,
    cp_id: str,
    instance: str,
    health: Health,
    *,
    engine: str | None,
    detail: str,
    now: float,
    new_id: NewId,
) -> Change | None:
    """None when the heartbeat changes nothing (the common case: nothing to commit or tell)."""
    link = state.links.get(cp_id)
    if link is None or link.instance != instance:
        return None  # a connection central has already let go of
    if state.health.get(cp_id) is health and link.engine == engine and state.detail.get(cp_id, "") == detail:
        return None
    change = Change()
    if link.engine != engine:
        change.links[cp_id] = replace(link, engine=engine)
    change.merge(_health(state, cp_id, health, detail, now, new_id))
    return change


def _health(
    state: CentralState, cp_id: str, health: Health, detail: str, now: float, new_id: NewId
) -> Change:
    before = state.health.get(cp_id)
    change = Change(health={cp_id: (health, detail)})
    if before is not health:
        change.facts.append(facts.HealthChanged(cp_id, health, before, detail))
    session = state.session_on(cp_id)
    if health is Health.KO and before is not Health.KO and session is not None:
        # The engine cannot report any more: bill what it had reported.
        reason = EndReason.ENGINE_FAILURE if session.started_at is not None else EndReason.NOT_STARTED
        change.merge(_close(session, reason, now, new_id))
    return change


def monitor_left(
    state: CentralState, cp_id: str, instance: str, why: str, *, peer: str | None = None
) -> Change | None:
    """The monitor's link ended. `peer` names the very connection: a monitor that reconnected (an
    OCPP gateway's charger link comes back with the same instance) may have registered its new
    link before the old one's end is decided, and that end must not take the new link away."""
    link = state.links.get(cp_id)
    if link is None or link.instance != instance or (peer is not None and link.peer != peer):
        return None
    return Change(links={cp_id: None}, health={cp_id: None}, facts=[facts.MonitorLeft(cp_id, why)])


# ------------------------------------------------------------------ requests


def charge(
    state: CentralState,
    request: ChargeRequest,
    *,
    earlier: RequestOutcome | None,
    waited_s: float,
    rules: Rules,
    now: float,
    new_id: NewId,
    source: str = "kafka",
    unproven: tuple[DenyCode, str] | None = None,
) -> Decision[RequestOutcome]:
    """Authorise a driver's request for a CP, or deny it with the reason. A replay is decided once.

    `unproven`: the request does not prove it comes from its driver (see `provenance`).
    """
    if earlier is not None:
        return Decision(result=earlier)
    if unproven is not None:
        return _deny(request, *unproven, waited_s, now, new_id, source)
    if waited_s > rules.request_ttl_s:
        return _deny(
            request,
            DenyCode.EXPIRED,
            f"request waited more than {rules.request_ttl_s:g} s",
            waited_s,
            now,
            new_id,
            source,
        )
    denial = denial_for(request.cp_id, state.status(request.cp_id))
    if denial is not None:
        return _deny(request, *denial, waited_s, now, new_id, source)
    record = state.cps[request.cp_id]
    link = state.links[request.cp_id]
    session = Session(
        session_id=new_id(),
        request_id=request.request_id,
        cp_id=request.cp_id,
        driver_id=request.driver_id,
        price=record.price,
        created_at=now,
    )
    outcome = RequestOutcome(
        request_id=request.request_id,
        driver_id=request.driver_id,
        cp_id=request.cp_id,
        outcome=Outcome.ACCEPTED,
        session_id=session.session_id,
        decided_at=now,
    )
    change = Change(
        sessions={session.session_id: session},
        requests=[outcome],
        messages=[
            StartSupply(
                id=new_id(),
                ts=now,
                cp_id=request.cp_id,
                session_id=session.session_id,
                driver_id=request.driver_id,
                price=record.price,
                engine=link.engine,
            ),
            RequestAccepted(
                id=new_id(),
                ts=now,
                driver_id=request.driver_id,
                request_id=request.request_id,
                session_id=session.session_id,
                cp_id=request.cp_id,
                price=record.price,
            ),
        ],
        facts=[
            facts.Authorised(
                request.driver_id, request.cp_id, session.session_id, request.request_id, waited_s, source
            )
        ],
    )
    return Decision(change, outcome)


def _deny(
    request: ChargeRequest,
    code: DenyCode,
    reason: str,
    waited_s: float,
    now: float,
    new_id: NewId,
    source: str,
) -> Decision[RequestOutcome]:
    outcome = RequestOutcome(
        request_id=request.request_id,
        driver_id=request.driver_id,
        cp_id=request.cp_id,
        outcome=Outcome.DENIED,
        code=code.value,
        reason=reason,
        decided_at=now,
    )
    denied = RequestDenied(
        id=new_id(),
        ts=now,
        driver_id=request.driver_id,
        request_id=request.request_id,
        cp_id=request.cp_id,
        code=code,
        reason=reason,
    )
    change = Change(
        requests=[outcome],
        messages=[denied],
        facts=[
            facts.Denied(
                request.driver_id, request.cp_id, request.request_id, code.value, reason, waited_s, source
            )
        ],
    )
    return Decision(change, outcome)


def stop_request(
    state: CentralState,
    request: StopRequest,
    *,
    now: float,
    new_id: NewId,
    unproven: tuple[DenyCode, str] | None = None,
) -> Change:
    """A driver asks to stop its session: passed on to the engine, or refused with why."""
    session = state.sessions.get(request.session_id)
    if unproven is None and session is not None and session.driver_id == request.driver_id:
        stop = StopSupply(
            id=new_id(), ts=now, cp_id=session.cp_id, session_id=session.session_id, reason=EndReason.DRIVER
        )
        return Change(
            messages=[stop], facts=[facts.StopAsked(request.driver_id, session.session_id, session.cp_id)]
        )
    if unproven is not None:
        code, why = unproven
    elif session is None:
        code, why = DenyCode.NO_SESSION, f"session {request.session_id[:8]} is not in progress"
    else:
        code, why = DenyCode.NOT_YOURS, f"session {request.session_id[:8]} is not yours"
    denied = RequestDenied(
        id=new_id(),
        ts=now,
        driver_id=request.driver_id,
        request_id=request.id,
        cp_id=session.cp_id if session else "",
        code=code,
        reason=why,
    )
    return Change(
        messages=[denied],
        facts=[facts.StopAsked(request.driver_id, request.session_id, session.cp_id if session else "", why)],
    )


# -------------------------------------------------------------------- events


def apply_events(
    state: CentralState,
    events: Sequence[CpEvent],
    *,
    loaded: Mapping[str, Session],
    now: float,
    new_id: NewId,
) -> Decision[dict[int, tuple[str, str]]]:
    """Apply a batch of engine events exactly once.

    `loaded` holds the ended sessions the store had for events memory could not
    place (a late reading for a session central closed). The result lists the
    events that fit nowhere (by position) with a code and why: an unknown CP, or
    a session nobody started. Duplicates are not in it.

    A session's progress is sent once per batch, as it stands after the batch's
    last reading of it: each progress carries the session's totals so far, so one
    superseded in the same batch would tell its driver nothing the next does not.
    A session that ends in the batch still shows its last reading, then its ticket.
    Live, a batch holds one reading of a session; behind (a backlog after an
    outage), this spares the outbox and the driver the steps it missed.
    """
    change = Change()
    rejected: dict[int, tuple[str, str]] = {}
    applied = ignored = 0
    moved: dict[str, None] = {}
    for position, event in enumerate(events):
        if event.cp_id not in state.cps:
            rejected[position] = ("unknown_cp", f"{event.cp_id} is not a known charging point")
            continue
        sid = event.session_id
        session = change.sessions.get(sid) or state.sessions.get(sid) or loaded.get(sid)
        if session is None and isinstance(event, SessionStarted):
            session = _local_session(event)
            change.facts.append(facts.LocalSupply(event.cp_id, event.driver_id))
        if session is None:
            rejected[position] = ("unknown_session", f"session {sid} of {event.cp_id} is not known here")
            continue
        result = apply_event(session, event, new_id, now)
        if not isinstance(result, Applied):
            ignored += 1
            continue
        applied += 1
        moved[event.cp_id] = None
        change.sessions[sid] = result.session
        change.messages += result.updates
        if session.active and not result.session.active:
            change.facts.append(facts.SessionClosed(result.session, by_central=False))
        elif result.session.ticket_revision > session.ticket_revision and not session.active:
            change.facts.append(
                facts.TicketRevised(result.session, session.billed_wh, session.billed_micro_eur)
            )
    change.messages = _latest_progress(change.messages)
    if applied or ignored:
        change.facts.append(facts.EventsApplied(applied, ignored, tuple(moved)))
    return Decision(change, rejected)


def _latest_progress(messages: list[KafkaMessage]) -> list[KafkaMessage]:
    """`messages` without a progress that a later progress of the same session supersedes.
    A ticket supersedes none: the last reading before it is still shown."""
    progress = {at: m.session_id for at, m in enumerate(messages) if isinstance(m, ChargingProgress)}
    latest = {session_id: at for at, session_id in progress.items()}
    if len(latest) == len(progress):  # live: one reading of each session, nothing superseded
        return messages
    return [m for at, m in enumerate(messages) if at not in progress or latest[progress[at]] == at]


def _local_session(event: SessionStarted) -> Session:
    """A supply started at the CP itself (plug-in without the app) is billed like any other."""
    return Session(
        session_id=event.session_id,
        request_id="",
        cp_id=event.cp_id,
        driver_id=event.driver_id,
        price=event.price,
        created_at=event.started_at,
    )


def expire_unstarted(state: CentralState, *, rules: Rules, now: float, new_id: NewId) -> Change | None:
    """Close sessions the engine never started within the deadline (it was down or refused)."""
    deadline = now - rules.start_timeout_s
    late = [
        s for s in state.sessions.values() if s.state is SessionState.AUTHORISED and s.created_at < deadline
    ]
    if not late:
        return None
    change = Change()
    for session in late:
        change.merge(_close(session, EndReason.NOT_STARTED, now, new_id))
    return change


def _close(session: Session, reason: EndReason, now: float, new_id: NewId) -> Change:
    closed, messages = close_by_central(session, reason, new_id, now)
    return Change(
        sessions={closed.session_id: closed},
        messages=messages,
        facts=[facts.SessionClosed(closed, by_central=True)],
    )


# ------------------------------------------------------------------ operator


def set_stopped(
    state: CentralState,
    targets: Iterable[str] | None,
    stopped: bool,
    *,
    by: str,
    peer: str = "",
    now: float,
    new_id: NewId,
) -> Decision[list[str]]:
    """Stop (or resume) the CPs named, or every known CP when `targets` is None.

    One operation whichever way the operator asked (panel keys, HTTP, ctl): the CPs
    already in the wanted state are left alone; the result lists those changed.
    Stopping ends a running supply at the engine, which bills it as usual.
    """
    names = sorted(state.cps) if targets is None else list(targets)
    unknown = [cp_id for cp_id in names if cp_id not in state.cps]
    if unknown:
        reason = f"{unknown[0]} is not a known charging point"
        action = "stop" if stopped else "resume"
        return Decision(
            Change(facts=[facts.OperatorRefused(action, by, reason, peer)]),
            refusal=Refusal("unknown_cp", reason),
        )
    change = Change()
    changed = []
    for cp_id in names:
        record = state.cps[cp_id]
        if record.stopped is stopped:
            continue
        changed.append(cp_id)
        change.cps[cp_id] = replace(record, stopped=stopped)
        command = (
            StopCp(id=new_id(), ts=now, cp_id=cp_id)
            if stopped
            else ResumeCp(id=new_id(), ts=now, cp_id=cp_id)
        )
        change.messages.append(command)
        change.facts.append(facts.OperatorChanged(cp_id, stopped, by, peer))
    return Decision(change, changed)


def forget(state: CentralState, cp_id: str, *, by: str, peer: str = "") -> Decision[None]:
    """Remove a CP from the registry; it may join again later as a new CP."""
    refusal = None
    if cp_id not in state.cps:
        refusal = Refusal("unknown_cp", f"{cp_id} is not a known charging point")
    elif cp_id in state.links:
        refusal = Refusal("cp_connected", f"{cp_id} is connected; stop its monitor before forgetting it")
    elif cp_id in state.on_cp:
        refusal = Refusal("cp_busy", f"{cp_id} has a session in progress")
    if refusal is not None:
        return Decision(
            Change(facts=[facts.OperatorRefused("forget", by, refusal.reason, peer)]), refusal=refusal
        )
    return Decision(Change(forget=[cp_id], facts=[facts.CpForgotten(cp_id, by, peer)]))


def enrol_driver(state: CentralState, driver_id: str, key: str, *, by: str, peer: str = "") -> Decision[None]:
    """Enrol a driver (or give it a new token): from now on its requests must prove `key`."""
    change = Change(
        driver_keys={driver_id: key},
        facts=[facts.DriverEnrolled(driver_id, by, peer, again=driver_id in state.driver_keys)],
    )
    return Decision(change)
