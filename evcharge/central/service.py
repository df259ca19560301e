"""Central's shell around its pure decisions: one at a time, commit, then memory, then observers.

Every change goes the same way: the decision is computed from the state in
memory (`evcharge.central.decisions`), its change is committed in one store
transaction, and only then applied to memory and told to the observers (panel
messages, audit, counters, metrics, the web page). A failed commit changes
nothing anywhere: the caller sees `StoreUnavailable` and may retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from evcharge.central import decisions
from evcharge.central.decisions import Decision, Rules
from evcharge.central.facts import Fact
from evcharge.central.ledger import CpEvent
from evcharge.central.state import CentralState, Change, RequestOutcome
from evcharge.central.store import CentralStore
from evcharge.errors import Fenced, Refused
from evcharge.protocol import signing
from evcharge.protocol.messages import ChargeRequest, DenyCode, Health, Register, StopRequest, new_id
from evcharge.runtime.faults import crash_point
from evcharge.runtime.waits import sleep_unless, wait_first

log = logging.getLogger("evcharge.central")

R = TypeVar("R")


class Observer(Protocol):
    def observe(self, facts: Sequence[Fact], state: CentralState) -> None: ...


class CentralService:
    def __init__(
        self,
        store: CentralStore,
        rules: Rules,
        *,
        observers: Iterable[Observer] = (),
        on_outbox: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        ids: Callable[[], str] = new_id,
    ) -> None:
        self.store = store
        self.rules = rules
        self.state = CentralState()
        self.observers = list(observers)
        self._on_outbox = on_outbox
        self._clock = clock
        self._ids = ids
        self._lock = asyncio.Lock()
        self._monitor_joined = asyncio.Event()
        # May this instance decide? A standby (or a fenced leader) may not.
        self.may_decide: Callable[[], bool] = lambda: True
        # Told when the store refused a commit because another central leads now.
        self.on_fenced: Callable[[], None] = lambda: None

    async def load(self) -> None:
        """Every known CP starts DISCONNECTED; sessions that were running stay open."""
        self.state = CentralState.loaded(
            await self.store.load_cps(),
            await self.store.load_active_sessions(),
            await self.store.load_engine_keys(),
            await self.store.load_driver_keys(),
        )
        log.info(
            "loaded %d charging points, %d sessions in progress",
            len(self.state.cps),
            len(self.state.sessions),
        )

    def tell(self, *facts: Fact) -> None:
        """Facts that change nothing durable (a dead letter) reach the observers the same way."""
        for observer in self.observers:
            observer.observe(facts, self.state)

    async def _carry_out(self, decision: Decision[R]) -> R | None:
        """Commit, then memory, then observers; a refusal is raised after it was told."""
        change = decision.change
        if change.durable:
            try:
                await self.store.commit(change)
            except Fenced:
                self.on_fenced()
                raise
            if change.messages:
                # The window this point stands for: committed, its messages not yet published.
                # Counted over those commits only, so `@N` means the same whether or not
                # commits with nothing to publish (an enrolment, a registration) came first.
                crash_point("central.committed")
        self.state.apply(change)
        if change.messages:
            self._on_outbox()
        if change.facts:
            self.tell(*change.facts)
        if decision.refusal is not None:
            raise Refused(decision.refusal.code, decision.refusal.reason)
        return decision.result

    async def _decide(self, make: Callable[[], Decision[R] | Change | None]) -> R | None:
        async with self._lock:
            decided = make()
            if decided is None:
                return None
            decision = decided if isinstance(decided, Decision) else Decision(decided)
            return await self._carry_out(decision)

    # ---------------------------------------------------------- monitors

    async def wait_for_monitors(self, timeout_s: float, stop: asyncio.Event) -> None:
        """Return when every known CP has its monitor connected, after `timeout_s`, or on `stop`."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set() and (missing := [c for c in self.state.cps if c not in self.state.links]):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.info("not waiting any longer for the monitors of %s", ", ".join(sorted(missing)[:10]))
                return
            self._monitor_joined.clear()
            await wait_first(self._monitor_joined, stop, timeout_s=remaining)

    async def register(self, frame: Register, peer: str) -> str | None:
        """Accept a monitor for `frame.cp_id` (returns its engine's signing key, with credentials
        on), or raise Refused with why."""
        stored = await self.store.secret_hash(frame.cp_id) if self.rules.join_token is not None else None
        engine_key = await self._decide(
            lambda: decisions.register(
                self.state,
                frame,
                peer,
                stored_hash=stored,
                rules=self.rules,
                now=self._clock(),
                new_id=self._ids,
            )
        )
        self._monitor_joined.set()
        return engine_key

    def heartbeat_changes_nothing(
        self, cp_id: str, instance: str, health: Health, engine: str | None = None, detail: str = ""
    ) -> bool:
        """The hot path: most heartbeats say what central already knows, and need no commit.

        Read without the lock: memory only changes after a commit, so it is consistent.
        """
        change = decisions.heartbeat(
            self.state, cp_id, instance, health, engine=engine, detail=detail, now=0.0, new_id=self._ids
        )
        return change is None

    async def heartbeat(
        self, cp_id: str, instance: str, health: Health, engine: str | None = None, detail: str = ""
    ) -> None:
        def decide() -> Change | None:
            return decisions.heartbeat(
                self.state,
                cp_id,
                instance,
                health,
                engine=engine,
                detail=detail,
                now=self._clock(),
                new_id=self._ids,
            )

        # The hot path: a heartbeat that changes nothing returns at once, without the lock.
        # (Memory only changes after a commit, so reading it unlocked sees a consistent state.)
        if decide() is not None:
            await self._decide(decide)

    async def monitor_left(self, cp_id: str, instance: str, why: str, *, peer: str | None = None) -> None:
        await self._decide(lambda: decisions.monitor_left(self.state, cp_id, instance, why, peer=peer))

    # ---------------------------------------------------------- requests

    async def charge(
        self,
        request: ChargeRequest,
        waited_s: float = 0.0,
        source: str = "kafka",
        unproven: tuple[DenyCode, str] | None = None,
    ) -> RequestOutcome:
        async with self._lock:
            earlier = await self.store.request_outcome(request.request_id)
            decision = decisions.charge(
                self.state,
                request,
                earlier=earlier,
                waited_s=waited_s,
                rules=self.rules,
                now=self._clock(),
                new_id=self._ids,
                source=source,
                unproven=unproven,
            )
            outcome = await self._carry_out(decision)
        assert outcome is not None
        return outcome

    async def stop_request(self, request: StopRequest, unproven: tuple[DenyCode, str] | None = None) -> None:
        await self._decide(
            lambda: decisions.stop_request(
                self.state, request, now=self._clock(), new_id=self._ids, unproven=unproven
            )
        )

    # ----------------------------------------------------------- drivers

    async def enrol_driver(self, driver_id: str, by: str, peer: str = "") -> str:
        """Enrol `driver_id` (or renew its token); returns the token, which only the caller sees."""
        token = signing.new_token()
        key = signing.driver_key(token)
        await self._decide(lambda: decisions.enrol_driver(self.state, driver_id, key, by=by, peer=peer))
        return token

    # ------------------------------------------------------------ events

    async def apply_events(self, events: Sequence[CpEvent]) -> dict[int, tuple[str, str]]:
        """Apply a batch of engine events exactly once, in one transaction; returns the misfits."""
        async with self._lock:
            unknown = {e.session_id for e in events if e.session_id not in self.state.sessions}
            loaded = await self.store.sessions_by_id(unknown) if unknown else {}
            decision = decisions.apply_events(
                self.state, events, loaded=loaded, now=self._clock(), new_id=self._ids
            )
            rejected = await self._carry_out(decision)
        return rejected or {}

    async def expire_unstarted(self) -> None:
        await self._decide(
            lambda: decisions.expire_unstarted(
                self.state, rules=self.rules, now=self._clock(), new_id=self._ids
            )
        )

    async def run_deadlines(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        """Close sessions nobody started in time; a store outage is waited out, not fatal."""
        while not await sleep_unless(stop, interval_s):
            if not self.may_decide():
                continue
            try:
                await self.expire_unstarted()
            except Exception as exc:
                if not getattr(exc, "retriable", False):
                    raise
                log.debug("start deadlines wait for the store: %s", exc)

    # ---------------------------------------------------------- operator

    async def set_stopped(
        self, targets: Iterable[str] | None, stopped: bool, by: str, peer: str = ""
    ) -> list[str]:
        """Stop or resume the CPs named (None: all); the CPs whose state changed."""
        names = list(targets) if targets is not None else None
        changed = await self._decide(
            lambda: decisions.set_stopped(
                self.state, names, stopped, by=by, peer=peer, now=self._clock(), new_id=self._ids
            )
        )
        return changed or []

    async def forget(self, cp_id: str, by: str, peer: str = "") -> None:
        await self._decide(lambda: decisions.forget(self.state, cp_id, by=by, peer=peer))
