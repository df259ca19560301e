"""The engine's state machine: what a command, a key press or a meter tick does to the CP.

Pure: every method returns the events the engine must record and publish (in
order), and never touches a socket or a file. The engine is either idle or
supplying one session; the operator can stop it; a fault ends any supply.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from evcharge.cp.meter import Meter
from evcharge.messages import (
    CpEvent,
    EndReason,
    MeterReading,
    SessionEnded,
    SessionRefused,
    SessionStarted,
    StartSupply,
)


@dataclass
class Supply:
    session_id: str
    driver_id: str
    started_at: float
    meter: Meter
    seq: int = 0


@dataclass
class EngineState:
    cp_id: str
    power_kw: float
    price_eur_kwh: float
    max_session_s: float = 0.0  # 0: until someone stops it
    stopped: bool = False
    fault: bool = False
    supply: Supply | None = None
    known_sessions: set[str] = field(default_factory=set)

    @property
    def healthy(self) -> bool:
        return not self.fault

    def start(self, command: StartSupply, now: float) -> list[CpEvent]:
        if command.session_id in self.known_sessions:
            return []  # the same command delivered again
        self.known_sessions.add(command.session_id)
        refusal = self._refusal(now, command.expires_at)
        if refusal:
            return [SessionRefused(cp_id=self.cp_id, session_id=command.session_id, reason=refusal)]
        return [self._begin(command.session_id, command.driver_id, command.price_eur_kwh, now)]

    def plug_in(self, now: float, driver_id: str = "local") -> list[CpEvent]:
        """A car plugged in without an authorised session: a local supply at the CP's own price."""
        if self._refusal(now, None):
            return []
        session_id = uuid.uuid4().hex
        self.known_sessions.add(session_id)
        return [self._begin(session_id, driver_id, self.price_eur_kwh, now)]

    def _refusal(self, now: float, expires_at: float | None) -> str | None:
        if self.fault:
            return "engine fault"
        if self.stopped:
            return "stopped by the operator"
        if self.supply is not None:
            return f"busy with session {self.supply.session_id[:8]}"
        if expires_at is not None and now > expires_at:
            return "the start command expired before the engine read it"
        return None

    def _begin(self, session_id: str, driver_id: str, price: float, now: float) -> SessionStarted:
        self.supply = Supply(session_id, driver_id, now, Meter(self.power_kw, price))
        return SessionStarted(
            cp_id=self.cp_id,
            session_id=session_id,
            driver_id=driver_id,
            seq=0,
            started_at=now,
            price_eur_kwh=price,
        )

    def tick(self, seconds: float, now: float) -> list[CpEvent]:
        """One meter interval: a reading, and the end if the session reached its length."""
        supply = self.supply
        if supply is None:
            return []
        supply.meter.advance(seconds)
        supply.seq += 1
        reading = MeterReading(
            cp_id=self.cp_id,
            session_id=supply.session_id,
            seq=supply.seq,
            kw=supply.meter.kw,
            kwh=supply.meter.kwh,
            eur=supply.meter.eur,
        )
        if self.max_session_s and supply.meter.seconds >= self.max_session_s - 1e-9:
            return [reading, *self.end(EndReason.COMPLETED, now)]
        return [reading]

    def end(
        self,
        reason: EndReason,
        now: float,
        session_id: str | None = None,
        billed: tuple[float, float] | None = None,
    ) -> list[CpEvent]:
        """End the supply. `billed` (kWh, EUR) is set when central already closed the
        session with those figures: the engine's record then says the same."""
        supply = self.supply
        if supply is None or (session_id is not None and session_id != supply.session_id):
            return []
        self.supply = None
        supply.seq += 1
        kwh, eur = billed if billed is not None else (supply.meter.kwh, supply.meter.eur)
        return [
            SessionEnded(
                cp_id=self.cp_id,
                session_id=supply.session_id,
                seq=supply.seq,
                kwh=kwh,
                eur=eur,
                ended_at=now,
                reason=reason,
            )
        ]

    def stop_cp(self, now: float) -> list[CpEvent]:
        self.stopped = True
        return self.end(EndReason.OPERATOR, now)

    def resume_cp(self) -> list[CpEvent]:
        self.stopped = False
        return []

    def raise_fault(self, now: float) -> list[CpEvent]:
        self.fault = True
        return self.end(EndReason.FAULT, now)

    def clear_fault(self) -> list[CpEvent]:
        self.fault = False
        return []
