"""Central's decisions: who is connected, what each CP's status is, which requests are
authorised, how sessions progress and end, and what everyone must be told.

Every decision runs under one lock and is written (with the messages it owes)
in one store transaction before memory changes, so what central shows is
always what it has durably decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from evcharge.central.audit import AuditLog
from evcharge.central.credentials import Deny, check_registration, hash_secret
from evcharge.central.ledger import Applied, Session, apply_event, end_session
from evcharge.central.status import CpStatus, cp_status, denial_for
from evcharge.central.store import CentralStore, CpRecord, Outgoing, RequestOutcome
from evcharge.errors import Refused
from evcharge.messages import (
    ChargeRequest,
    CpEvent,
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
from evcharge.runtime.kafka import TOPICS

log = logging.getLogger("evcharge.central")


@dataclass
class MonitorLink:
    """One monitor connection as central sees it; `close` drops that connection."""

    instance: str
    peer: str
    close: Callable[[str], None]
    last_heartbeat: float = field(default_factory=time.monotonic)


@dataclass
class LiveCp:
    record: CpRecord
    monitor: MonitorLink | None = None
    health: Health | None = None
    engine: str | None = None  # the engine instance its monitor vouches for


@dataclass(frozen=True)
class PanelMessage:
    at: float
    text: str
    level: str  # "info", "warning", "error"


class CentralService:
    def __init__(
        self,
        store: CentralStore,
        *,
        request_ttl_s: float = 60.0,
        start_timeout_s: float = 10.0,
        heartbeat_timeout_s: float = 3.0,
        on_outbox: Callable[[], None] = lambda: None,
        join_token: str | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._store = store
        self.request_ttl_s = request_ttl_s
        self.start_timeout_s = start_timeout_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._on_outbox = on_outbox
        self._join_token = join_token  # None: registrations need no credential (loopback)
        self.audit = audit or AuditLog(None)
        self._lock = asyncio.Lock()
        self._monitor_joined = asyncio.Event()
        self.cps: dict[str, LiveCp] = {}
        self.active: dict[str, Session] = {}
        self._active_on_cp: dict[str, Session] = {}  # the status of every CP is asked often
        self.messages: deque[PanelMessage] = deque(maxlen=200)
        self.counters: dict[str, int] = {}

    @property
    def store(self) -> CentralStore:
        return self._store

    async def load(self) -> None:
        """Every known CP starts DISCONNECTED; sessions that were running stay open."""
        for record in await self._store.load_cps():
            self.cps[record.cp_id] = LiveCp(record)
        for session in await self._store.load_active_sessions():
            self._track(session)
        self._say(f"loaded {len(self.cps)} charging points, {len(self.active)} sessions in progress")

    # ------------------------------------------------------------ status

    def status(self, cp_id: str) -> CpStatus | None:
        live = self.cps.get(cp_id)
        if live is None:
            return None
        return cp_status(
            monitor_connected=live.monitor is not None,
            health=live.health,
            stopped=live.record.stopped,
            supplying=self.session_on(cp_id) is not None,
        )

    def session_on(self, cp_id: str) -> Session | None:
        return self._active_on_cp.get(cp_id)

    def _track(self, session: Session) -> None:
        self.active[session.session_id] = session
        self._active_on_cp[session.cp_id] = session

    def _untrack(self, session: Session) -> bool:
        """Forget an ended session; False if it was not in progress."""
        if self._active_on_cp.get(session.cp_id) is session:
            del self._active_on_cp[session.cp_id]
        return self.active.pop(session.session_id, None) is not None

    # ---------------------------------------------------------- monitors

    async def wait_for_monitors(self, timeout_s: float) -> None:
        """Return when every known CP has its monitor connected, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while any(live.monitor is None for live in self.cps.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(c for c, live in self.cps.items() if live.monitor is None)
                log.info("not waiting any longer for the monitors of %s", ", ".join(missing[:10]))
                return
            self._monitor_joined.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._monitor_joined.wait()

    async def register(self, frame: Register, link: MonitorLink) -> str | None:
        """Accept a monitor for `frame.cp_id`; Refused if another live monitor holds it or
        its credential does not hold. Returns the secret issued to a CP that just joined."""
        async with self._lock:
            issued = await self._check_credential(frame, link)
            live = self.cps.get(frame.cp_id)
            if live and live.monitor and live.monitor.instance != frame.instance:
                self._count("registrations_refused")
                self._say(
                    f"{frame.cp_id}: refused a second monitor from {link.peer} "
                    f"(already connected from {live.monitor.peer})",
                    "warning",
                )
                self.audit.record("register", who=frame.cp_id, peer=link.peer, result="refused: duplicate_cp")
                raise Refused(
                    "duplicate_cp",
                    f"{frame.cp_id} already has a live monitor connected from "
                    f"{live.monitor.peer}; stop it first or use another CP id",
                )
            is_new = live is None
            record = CpRecord(
                cp_id=frame.cp_id,
                location=frame.location,
                price_eur_kwh=frame.price_eur_kwh,
                max_kw=frame.max_kw,
                stopped=live.record.stopped if live else False,
                registered_at=live.record.registered_at if live else time.time(),
            )
            if live is None or live.record != record:
                await self._store.commit(cps=[record])
            if live is None:
                live = self.cps[frame.cp_id] = LiveCp(record)
            live.record = record
            if live.monitor is not None:
                live.monitor.close("replaced by a reconnect of the same monitor")
            live.monitor = link
            live.engine = frame.engine
            self._monitor_joined.set()
            self._count("registrations")
            self._say(
                f"{frame.cp_id} registered ({record.location}, {record.price_eur_kwh:.2f} EUR/kWh)"
                if is_new
                else f"{frame.cp_id} connected"
            )
            await self._set_health(live, frame.health)
            self.audit.record("register", who=frame.cp_id, peer=link.peer, new=is_new)
            return issued

    async def _check_credential(self, frame: Register, link: MonitorLink) -> str | None:
        if self._join_token is None:
            return None
        decision = check_registration(
            frame.cp_id,
            join_token=self._join_token,
            presented_token=frame.token,
            presented_secret=frame.secret,
            stored_hash=await self._store.secret_hash(frame.cp_id),
        )
        if isinstance(decision, Deny):
            self._count("registrations_refused")
            self.audit.record("register", who=frame.cp_id, peer=link.peer, result=f"refused: {decision.code}")
            self._say(f"{frame.cp_id}: refused a registration from {link.peer} ({decision.code})", "warning")
            raise Refused(decision.code, decision.reason)
        if decision.issue is not None:
            await self._store.save_secret_hash(frame.cp_id, hash_secret(decision.issue))
        return decision.issue

    async def heartbeat(
        self, cp_id: str, link: MonitorLink, health: Health, engine: str | None = None
    ) -> None:
        link.last_heartbeat = time.monotonic()
        live = self.cps.get(cp_id)
        if live is None or live.monitor is not link:
            return
        live.engine = engine
        if live.health is not health:
            async with self._lock:
                await self._set_health(live, health)

    async def monitor_gone(self, cp_id: str, link: MonitorLink, why: str) -> None:
        live = self.cps.get(cp_id)
        if live is None or live.monitor is not link:
            return
        live.monitor = None
        live.health = None
        self._say(f"{cp_id} disconnected ({why})", "warning")

    def stale_links(self) -> list[tuple[str, MonitorLink]]:
        """Monitors that have been silent longer than the heartbeat timeout (hung or cut off)."""
        deadline = time.monotonic() - self.heartbeat_timeout_s
        return [
            (cp_id, live.monitor)
            for cp_id, live in self.cps.items()
            if live.monitor is not None and live.monitor.last_heartbeat < deadline
        ]

    async def _set_health(self, live: LiveCp, health: Health) -> None:
        before = live.health
        live.health = health
        cp_id = live.record.cp_id
        if health is Health.KO and before is not Health.KO:
            self._say(f"{cp_id} out of order: engine broken", "warning")
            session = self.session_on(cp_id)
            if session is not None:
                # The engine cannot report any more: bill what it had reported.
                reason = EndReason.ENGINE_FAILURE if session.started_at else EndReason.NOT_STARTED
                await self._end_by_central(session, reason)
        elif health is Health.OK and before is Health.KO:
            self._say(f"{cp_id} health restored")

    # ---------------------------------------------------------- requests

    async def charge(self, request: ChargeRequest) -> RequestOutcome:
        async with self._lock:
            earlier = await self._store.request_outcome(request.request_id)
            if earlier is not None:
                return earlier  # a replayed request: decided once already
            if time.time() - request.ts > self.request_ttl_s:
                return await self._deny(
                    request, DenyCode.EXPIRED, f"request waited more than {self.request_ttl_s:g} s"
                )
            denial = denial_for(request.cp_id, self.status(request.cp_id))
            if denial is not None:
                return await self._deny(request, *denial)
            record = self.cps[request.cp_id].record
            session = Session(
                session_id=uuid.uuid4().hex,
                request_id=request.request_id,
                cp_id=request.cp_id,
                driver_id=request.driver_id,
                price_eur_kwh=record.price_eur_kwh,
                created_at=time.time(),
            )
            outcome = RequestOutcome(
                request_id=request.request_id,
                driver_id=request.driver_id,
                cp_id=request.cp_id,
                outcome="accepted",
                session_id=session.session_id,
            )
            await self._commit(
                sessions=[session],
                requests=[outcome],
                messages=[
                    StartSupply(
                        cp_id=request.cp_id,
                        session_id=session.session_id,
                        driver_id=request.driver_id,
                        price_eur_kwh=record.price_eur_kwh,
                        expires_at=session.created_at + self.start_timeout_s,
                        engine=self.cps[request.cp_id].engine,
                    ),
                    RequestAccepted(
                        driver_id=request.driver_id,
                        request_id=request.request_id,
                        session_id=session.session_id,
                        cp_id=request.cp_id,
                        price_eur_kwh=record.price_eur_kwh,
                    ),
                ],
            )
            self._track(session)
            self._count("requests_accepted")
            self.audit.record("charge", who=request.driver_id, cp=request.cp_id, session=session.session_id)
            self._say(f"{request.driver_id} → {request.cp_id}: authorised (session {session.session_id[:8]})")
            return outcome

    async def stop_request(self, request: StopRequest) -> str | None:
        """A driver asks to stop its session: None when the stop was sent, else why not."""
        async with self._lock:
            session = self.active.get(request.session_id)
            if session is None:
                why, code = (
                    f"session {request.session_id[:8]} is not in progress",
                    DenyCode.NO_SESSION,
                )
            elif session.driver_id != request.driver_id:
                why, code = f"session {request.session_id[:8]} is not yours", DenyCode.NOT_YOURS
            else:
                await self._commit(
                    messages=[
                        StopSupply(
                            cp_id=session.cp_id,
                            session_id=session.session_id,
                            reason=EndReason.DRIVER,
                        )
                    ]
                )
                self._say(
                    f"{request.driver_id} asked to stop session {session.session_id[:8]} on {session.cp_id}"
                )
                return None
            await self._commit(
                messages=[
                    RequestDenied(
                        driver_id=request.driver_id,
                        request_id=request.id,
                        cp_id=session.cp_id if session else "",
                        code=code,
                        reason=why,
                    )
                ]
            )
            return why

    async def _deny(self, request: ChargeRequest, code: DenyCode, reason: str) -> RequestOutcome:
        outcome = RequestOutcome(
            request_id=request.request_id,
            driver_id=request.driver_id,
            cp_id=request.cp_id,
            outcome="denied",
            code=code.value,
            reason=reason,
        )
        await self._commit(
            requests=[outcome],
            messages=[
                RequestDenied(
                    driver_id=request.driver_id,
                    request_id=request.request_id,
                    cp_id=request.cp_id,
                    code=code,
                    reason=reason,
                )
            ],
        )
        self._count("requests_denied")
        self.audit.record("charge", who=request.driver_id, cp=request.cp_id, result=f"denied: {code.value}")
        self._say(f"{request.driver_id} → {request.cp_id}: denied ({reason})")
        return outcome

    # ------------------------------------------------------------ events

    async def apply_events(self, events: list[CpEvent]) -> dict[int, str]:
        """Apply a batch of engine events exactly once, in one transaction.

        Returns the events it could not place (by position in `events`) with why:
        an unknown CP, or a session nobody started. Duplicates are not in it.
        """
        rejected: dict[int, str] = {}
        async with self._lock:
            changed: dict[str, Session] = {}
            messages: list[KafkaMessage] = []
            for position, event in enumerate(events):
                if event.cp_id not in self.cps:
                    rejected[position] = f"{event.cp_id} is not a known charging point"
                    continue
                session = self.active.get(event.session_id) or changed.get(event.session_id)
                if session is None:
                    session = await self._store.session(event.session_id)
                if session is None and isinstance(event, SessionStarted):
                    session = self._local_session(event)
                if session is None:
                    self._count("events_unknown_session")
                    rejected[position] = f"session {event.session_id} of {event.cp_id} is not known here"
                    continue
                result = apply_event(session, event)
                if not isinstance(result, Applied):
                    self._count("events_ignored")
                    log.debug("%s", result.why)
                    continue
                self._count("events_applied")
                changed[session.session_id] = session
                messages.extend(result.updates)
            if not changed:
                return rejected
            await self._commit(sessions=changed.values(), messages=messages)
            for session in changed.values():
                if session.active:
                    self._track(session)
                elif self._untrack(session):
                    self._count("sessions_ended")
                    self._audit_end(session)
                    self._say(
                        f"{session.cp_id}: session {session.session_id[:8]} of {session.driver_id} ended "
                        f"({session.end_reason.value if session.end_reason else '?'}): "
                        f"{session.kwh:.3f} kWh, {session.eur:.2f} EUR"
                    )
        return rejected

    def _local_session(self, event: SessionStarted) -> Session:
        """A supply started at the CP itself (plug-in without the app) is billed like any other."""
        self._say(f"{event.cp_id}: local supply started for {event.driver_id}")
        return Session(
            session_id=event.session_id,
            request_id="",
            cp_id=event.cp_id,
            driver_id=event.driver_id,
            price_eur_kwh=event.price_eur_kwh,
            created_at=event.started_at,
        )

    async def expire_unstarted(self) -> None:
        """Close sessions the engine never started within the deadline (it was down or refused)."""
        deadline = time.time() - self.start_timeout_s
        async with self._lock:
            for session in list(self.active.values()):
                if session.started_at is None and session.created_at < deadline:
                    await self._end_by_central(session, EndReason.NOT_STARTED)

    async def _end_by_central(self, session: Session, reason: EndReason) -> None:
        ticket = end_session(session, reason, time.time())
        # The engine may come back to this session later: tell it that it is over.
        await self._commit(
            sessions=[session],
            messages=[
                ticket,
                StopSupply(
                    cp_id=session.cp_id,
                    session_id=session.session_id,
                    reason=reason,
                    billed_kwh=session.kwh,
                    billed_eur=session.eur,
                ),
            ],
        )
        self._untrack(session)
        self._count("sessions_ended")
        self._audit_end(session)
        self._say(
            f"{session.cp_id}: session {session.session_id[:8]} of {session.driver_id} closed by central "
            f"({reason.value}): {session.kwh:.3f} kWh, {session.eur:.2f} EUR",
            "warning",
        )

    # ---------------------------------------------------------- operator

    async def stop_cp(self, cp_id: str, by: str = "operator") -> None:
        await self._set_stopped(cp_id, True, by)

    async def resume_cp(self, cp_id: str, by: str = "operator") -> None:
        await self._set_stopped(cp_id, False, by)

    async def _set_stopped(self, cp_id: str, stopped: bool, by: str) -> None:
        async with self._lock:
            live = self.cps.get(cp_id)
            if live is None:
                raise KeyError(cp_id)
            command = StopCp(cp_id=cp_id) if stopped else ResumeCp(cp_id=cp_id)
            record = CpRecord(**{**live.record.__dict__, "stopped": stopped})
            await self._store.commit(cps=[record], messages=[_outgoing(command)])
            self._on_outbox()
            live.record = record
            self.audit.record("stop_cp" if stopped else "resume_cp", who=by, cp=cp_id)
            self._say(
                f"{cp_id} {'stopped by the operator' if stopped else 'resumed by the operator'}",
                "warning" if stopped else "info",
            )

    async def forget_cp(self, cp_id: str, by: str = "operator") -> None:
        async with self._lock:
            live = self.cps.get(cp_id)
            if live is None:
                raise KeyError(cp_id)
            if live.monitor is not None:
                raise Refused("cp_connected", f"{cp_id} is connected; stop its monitor before forgetting it")
            if self.session_on(cp_id) is not None:
                raise Refused("cp_busy", f"{cp_id} has a session in progress")
            await self._store.commit(forget_cps=[cp_id])
            del self.cps[cp_id]
            self.audit.record("forget_cp", who=by, cp=cp_id)
            self._say(f"{cp_id} forgotten by the operator")

    # ---------------------------------------------------------- plumbing

    def _audit_end(self, session: Session) -> None:
        self.audit.record(
            "session_end",
            who=session.driver_id,
            cp=session.cp_id,
            session=session.session_id,
            reason=session.end_reason.value if session.end_reason else None,
            kwh=session.kwh,
            eur=session.eur,
        )

    async def _commit(
        self,
        *,
        sessions: Iterable[Session] = (),
        requests: Iterable[RequestOutcome] = (),
        messages: Sequence[KafkaMessage] = (),
    ) -> None:
        await self._store.commit(
            sessions=sessions, requests=requests, messages=[_outgoing(m) for m in messages]
        )
        if messages:
            self._on_outbox()

    def _say(self, text: str, level: str = "info") -> None:
        self.messages.append(PanelMessage(time.time(), text, level))
        getattr(log, level)(text)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


def _outgoing(message: KafkaMessage) -> Outgoing:
    if isinstance(message, (StartSupply, StopSupply, StopCp, ResumeCp)):
        return Outgoing(TOPICS.cp_commands, message.cp_id, message)
    driver_id = getattr(message, "driver_id", None)
    assert driver_id is not None, message
    return Outgoing(TOPICS.driver_updates, driver_id, message)
