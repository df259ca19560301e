"""Central's state in memory, and the change set a decision produces.

Pure. `CentralState` is what central knows now: the registry, which monitors are
connected, what they say of their engines, the sessions in progress. A decision
never mutates it; it returns a `Change`, which the service commits and only then
applies here (`CentralState.apply`), so memory never shows what was not made durable.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from evcharge.central.facts import Fact
from evcharge.central.ledger import Session
from evcharge.central.status import CpStatus, cp_status
from evcharge.protocol.messages import Health, KafkaMessage


@dataclass(frozen=True)
class CpRecord:
    cp_id: str
    location: str
    price: int  # micro-euros per kWh
    max_w: int
    stopped: bool
    registered_at: float


@dataclass(frozen=True)
class Link:
    """A connected monitor, as central's decisions see it."""

    instance: str
    peer: str
    pid: int = 0
    engine: str | None = None  # the engine instance the monitor vouches for


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DENIED = "denied"


@dataclass(frozen=True)
class RequestOutcome:
    request_id: str
    driver_id: str
    cp_id: str
    outcome: Outcome
    session_id: str | None = None
    code: str | None = None
    reason: str | None = None
    decided_at: float = 0.0


@dataclass
class Change:
    """What one decision changes: durable parts first, then memory-only parts, then what to tell."""

    cps: dict[str, CpRecord] = field(default_factory=dict)
    forget: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # cp_id -> hash of its secret
    engine_keys: dict[str, str] = field(default_factory=dict)  # cp_id -> key its engine signs with
    driver_keys: dict[str, str] = field(default_factory=dict)  # driver_id -> key its requests prove
    sessions: dict[str, Session] = field(default_factory=dict)
    requests: list[RequestOutcome] = field(default_factory=list)
    messages: list[KafkaMessage] = field(default_factory=list)
    links: dict[str, Link | None] = field(default_factory=dict)  # None: that monitor left
    health: dict[str, tuple[Health, str] | None] = field(default_factory=dict)
    facts: list[Fact] = field(default_factory=list)

    @property
    def durable(self) -> bool:
        return bool(
            self.cps
            or self.forget
            or self.secrets
            or self.engine_keys
            or self.driver_keys
            or self.sessions
            or self.requests
            or self.messages
        )

    def merge(self, other: Change) -> Change:
        self.cps.update(other.cps)
        self.forget += other.forget
        self.secrets.update(other.secrets)
        self.engine_keys.update(other.engine_keys)
        self.driver_keys.update(other.driver_keys)
        self.sessions.update(other.sessions)
        self.requests += other.requests
        self.messages += other.messages
        self.links.update(other.links)
        self.health.update(other.health)
        self.facts += other.facts
        return self


@dataclass
class CentralState:
    cps: dict[str, CpRecord] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)
    health: dict[str, Health] = field(default_factory=dict)
    detail: dict[str, str] = field(default_factory=dict)  # why an engine says KO
    sessions: dict[str, Session] = field(default_factory=dict)  # in progress only
    on_cp: dict[str, str] = field(default_factory=dict)  # cp_id -> its session in progress
    # Bumped by every apply(), and per CP the version that last touched it: a reader that keeps
    # something derived from a CP (its encoded JSON) knows when to derive it again.
    version: int = 0
    cp_versions: dict[str, int] = field(default_factory=dict)
    # Credentials on: what proves an engine's events and a driver's requests (see protocol.signing).
    engine_keys: dict[str, str] = field(default_factory=dict)
    driver_keys: dict[str, str] = field(default_factory=dict)

    @classmethod
    def loaded(
        cls,
        cps: Iterable[CpRecord],
        active: Iterable[Session],
        engine_keys: Mapping[str, str] | None = None,
        driver_keys: Mapping[str, str] | None = None,
    ) -> CentralState:
        """After a (re)start: every known CP DISCONNECTED until its monitor is back."""
        state = cls(
            cps={c.cp_id: c for c in cps},
            engine_keys=dict(engine_keys or {}),
            driver_keys=dict(driver_keys or {}),
        )
        for session in active:
            state.sessions[session.session_id] = session
            state.on_cp[session.cp_id] = session.session_id
        return state

    def status(self, cp_id: str) -> CpStatus | None:
        record = self.cps.get(cp_id)
        if record is None:
            return None
        return cp_status(
            monitor_connected=cp_id in self.links,
            health=self.health.get(cp_id),
            stopped=record.stopped,
            supplying=cp_id in self.on_cp,
        )

    def session_on(self, cp_id: str) -> Session | None:
        session_id = self.on_cp.get(cp_id)
        return self.sessions.get(session_id) if session_id else None

    def apply(self, change: Change) -> None:
        """Swap the committed change into memory."""
        self.version += 1
        touched = self.cp_versions
        for cp_id in itertools.chain(change.cps, change.forget, change.links, change.health):
            touched[cp_id] = self.version
        for session in change.sessions.values():
            touched[session.cp_id] = self.version
        self.cps.update(change.cps)
        self.engine_keys.update(change.engine_keys)
        self.driver_keys.update(change.driver_keys)
        for cp_id in change.forget:
            self.cps.pop(cp_id, None)
            self.engine_keys.pop(cp_id, None)
            self.links.pop(cp_id, None)
            self.health.pop(cp_id, None)
            self.detail.pop(cp_id, None)
        for cp_id, link in change.links.items():
            if link is None:
                self.links.pop(cp_id, None)
            else:
                self.links[cp_id] = link
        for cp_id, said in change.health.items():
            if said is None:
                self.health.pop(cp_id, None)
                self.detail.pop(cp_id, None)
            else:
                self.health[cp_id], self.detail[cp_id] = said
        for session in change.sessions.values():
            if session.active:
                self.sessions[session.session_id] = session
                self.on_cp[session.cp_id] = session.session_id
            elif (
                self.sessions.pop(session.session_id, None) is not None
                and self.on_cp.get(session.cp_id) == session.session_id
            ):
                del self.on_cp[session.cp_id]
