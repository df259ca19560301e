"""What an engine does with central's commands: the one dispatch the real engine, the fleet
simulator and the benchmark share.

Pure. `handle` applies one command to an `EngineState` and says what to record
and publish, and what to tell the person at the CP; `withdrawn` finds, in a batch
read from Kafka, the start commands central took back before the engine read
them (a start followed by a stop of the same session), which are refused rather
than started for nobody. No clock of another host is compared with ours.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from evcharge.cp.engine_state import CpEvent, EngineState
from evcharge.protocol.messages import ResumeCp, StartSupply, StopCp, StopSupply

CpCommand = StartSupply | StopSupply | StopCp | ResumeCp


@dataclass(frozen=True)
class Step:
    events: list[CpEvent] = field(default_factory=list)
    stopped: bool | None = None  # the operator's flag to record, when it changed
    note: str | None = None  # a line for the engine's log
    warning: bool = False


def withdrawn(commands: Iterable[CpCommand]) -> set[str]:
    """Sessions a batch both starts and stops: central gave up on them before we read the start."""
    return {c.session_id for c in commands if isinstance(c, StopSupply)}


def handle(
    state: EngineState, command: CpCommand, *, instance: str, now: float, withdrawn: Collection[str] = ()
) -> Step:
    if isinstance(command, StartSupply):
        if command.engine is not None and command.engine != instance:
            return Step(
                note=(
                    f"session {command.session_id[:8]} was authorised for another engine of this CP "
                    f"({command.engine[:8]}), not this one ({instance[:8]}): is a second engine running "
                    f"with id {state.cp_id}? This one stays out of it."
                ),
                warning=True,
            )
        if command.session_id in withdrawn:
            return Step(state.refuse(command.session_id, "withdrawn by central before the engine read it"))
        return Step(state.start(command, now))
    if isinstance(command, StopSupply):
        return Step(state.end(command.reason, now, command.session_id))
    if isinstance(command, StopCp):
        return Step(
            state.stop_cp(now), stopped=True, note="stopped by the operator (out of order)", warning=True
        )
    return Step(state.resume_cp(), stopped=False, note="resumed by the operator")
