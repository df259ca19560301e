"""The engine's state machine: what a command, a key press or a meter tick does to the CP.

Pure: every method returns the events the engine must record and publish (in
order), and never touches a socket or a file. The engine is either idle or
supplying one session; the operator can stop it; a fault ends any supply, and so
does a meter it can no longer record.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from evcharge.cp.meter import Meter
from evcharge.protocol.messages import (
    EndReason,
    MeterReading,
    SessionEnded,
    SessionRefused,
    SessionStarted,
    StartSupply,
)

CpEvent = SessionStarted | MeterReading | SessionEnded | SessionRefused


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
    power_w: int
    price: int  # micro-euros per kWh, for a local (plug-in) supply
    max_session_ms: int = 0  # 0: until someone stops it
    stopped: bool = False
    fault: bool = False
    recording: bool = True  # False while the engine cannot write its meter (disk full)
    supply: Supply | None = None
    known_sessions: set[str] = field(default_factory=set)

    @property
    def healthy(self) -> bool:
        return not self.fault and self.recording

    @property
    def detail(self) -> str:
        """Why the engine answers KO, in a few words."""
        if not self.recording:
            return "cannot record its meter (disk full)"
        return "fault raised at the CP" if self.fault else ""

    def start(self, command: StartSupply, now: float) -> list[CpEvent]:
        if command.session_id in self.known_sessions:
            return []  # the same command delivered again
        self.known_sessions.add(command.session_id)
        refusal = self._refusal()
        if refusal:
            return [SessionRefused(cp_id=self.cp_id, session_id=command.session_id, reason=refusal)]
        return [self._begin(command.session_id, command.driver_id, command.price, now)]

    def refuse(self, session_id: str, reason: str) -> list[CpEvent]:
        """A start command this engine will not run (central withdrew it meanwhile)."""
        if session_id in self.known_sessions:
            return []
        self.known_sessions.add(session_id)
        return [SessionRefused(cp_id=self.cp_id, session_id=session_id, reason=reason)]

    def plug_in(self, now: float, driver_id: str = "local") -> list[CpEvent]:
        """A car plugged in without an authorised session: a local supply at the CP's own price."""
        if self._refusal():
            return []
        session_id = uuid.uuid4().hex
        self.known_sessions.add(session_id)
        return [self._begin(session_id, driver_id, self.price, now)]

    def _refusal(self) -> str | None:
        if not self.recording:
            return "the engine cannot record its meter (disk full)"
        if self.fault:
            return "engine fault"
        if self.stopped:
            return "stopped by the operator"
        if self.supply is not None:
            return f"busy with session {self.supply.session_id[:8]}"
        return None

    def _begin(self, session_id: str, driver_id: str, price: int, now: float) -> SessionStarted:
        self.supply = Supply(session_id, driver_id, now, Meter(self.power_w, price))
        return SessionStarted(
            cp_id=self.cp_id, session_id=session_id, driver_id=driver_id, seq=0, started_at=now, price=price
        )

    def tick(self, elapsed_ms: int, now: float) -> list[CpEvent]:
        """One meter interval: a reading, and the end if the session reached its length."""
        supply = self.supply
        if supply is None:
            return []
        supply.meter.advance(elapsed_ms)
        supply.seq += 1
        reading = MeterReading(
            cp_id=self.cp_id,
            session_id=supply.session_id,
            seq=supply.seq,
            power_w=supply.meter.power_w,
            wh=supply.meter.wh,
            micro_eur=supply.meter.micro_eur,
        )
        if self.max_session_ms and supply.meter.elapsed_ms >= self.max_session_ms:
            return [reading, *self.end(EndReason.COMPLETED, now)]
        return [reading]

    def end(self, reason: EndReason, now: float, session_id: str | None = None) -> list[CpEvent]:
        """End the supply with what the meter says; nothing if no such supply runs."""
        supply = self.supply
        if supply is None or (session_id is not None and session_id != supply.session_id):
            return []
        self.supply = None
        supply.seq += 1
        return [
            SessionEnded(
                cp_id=self.cp_id,
                session_id=supply.session_id,
                seq=supply.seq,
                wh=supply.meter.wh,
                micro_eur=supply.meter.micro_eur,
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

    def cannot_record(self, now: float) -> list[CpEvent]:
        """The meter can no longer be written: stop supplying what could not be billed."""
        self.recording = False
        return self.end(EndReason.CANNOT_RECORD, now)
