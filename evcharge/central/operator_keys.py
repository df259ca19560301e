"""The operator's keys on central's panel (F7): keystrokes become stop/resume commands.

Pure except `execute`, which carries a command out on the service.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection
from dataclasses import dataclass

from evcharge.central.service import CentralService


@dataclass(frozen=True)
class Notice:
    text: str
    level: str = "info"  # as PanelMessage.level


class Action(enum.Enum):
    STOP = "stop"
    RESUME = "resume"
    STOP_ALL = "stop all"
    RESUME_ALL = "resume all"
    QUIT = "quit"


@dataclass(frozen=True)
class Command:
    action: Action
    target: str = ""  # what the operator typed for STOP / RESUME


class KeyPad:
    """Operator keystrokes in, commands out: `s`/`r` then a CP number or id and Enter,
    `S`/`R` for every CP, `q` to quit; Esc cancels what is being typed."""

    MAX_TYPED = 64

    def __init__(self) -> None:
        self.typing_for: Action | None = None
        self.typed = ""

    @property
    def prompt(self) -> str | None:
        if self.typing_for is None:
            return None
        return f" {self.typing_for.value} CP (number or id, Enter; Esc cancels): {self.typed}▏"

    def feed(self, key: str) -> Command | None:
        if self.typing_for is None:
            return self._idle(key)
        if key in "\r\n":
            command = Command(self.typing_for, self.typed.strip())
            self._reset()
            return command if command.target else None
        if key == "\x1b":
            self._reset()
        elif key in "\x7f\x08":
            self.typed = self.typed[:-1]
        elif key.isprintable() and len(self.typed) < self.MAX_TYPED:
            self.typed += key
        return None

    def _idle(self, key: str) -> Command | None:
        if key in ("s", "r"):
            self.typing_for = Action.STOP if key == "s" else Action.RESUME
            return None
        return {
            "S": Command(Action.STOP_ALL),
            "R": Command(Action.RESUME_ALL),
            "q": Command(Action.QUIT),
        }.get(key)

    def _reset(self) -> None:
        self.typing_for = None
        self.typed = ""


def resolve_cp(typed: str, cp_ids: Collection[str]) -> str | None:
    """The CP the operator meant: its exact id, its id in any case, or its number (`5` → CP-005)."""
    typed = typed.strip()
    if typed in cp_ids:
        return typed
    by_lower = {cp_id.lower(): cp_id for cp_id in cp_ids}
    if typed.lower() in by_lower:
        return by_lower[typed.lower()]
    if typed.isdigit():
        matches = [
            cp_id for cp_id in cp_ids if (m := re.search(r"(\d+)$", cp_id)) and int(m.group(1)) == int(typed)
        ]
        if len(matches) == 1:
            return matches[0]
    return None


async def execute(service: CentralService, command: Command) -> Notice:
    """Carry out an operator command through the service's API; say how it went."""
    if command.action in (Action.STOP_ALL, Action.RESUME_ALL):
        stop = command.action is Action.STOP_ALL
        changed = 0
        for cp_id in list(service.cps):  # registrations may add CPs while we await
            live = service.cps.get(cp_id)
            if live is None or live.record.stopped is stop:
                continue
            try:
                await (service.stop_cp if stop else service.resume_cp)(cp_id, "panel")
            except KeyError:
                continue  # forgotten meanwhile
            changed += 1
        return Notice(
            f"{'stopped' if stop else 'resumed'} {changed} charging points",
            "warning" if stop else "info",
        )
    cp_id = resolve_cp(command.target, service.cps)
    if cp_id is None:
        return Notice(f"no charging point matches {command.target!r}", "error")
    stop = command.action is Action.STOP
    try:
        await (service.stop_cp if stop else service.resume_cp)(cp_id, "panel")
    except KeyError:
        return Notice(f"{cp_id} is no longer known", "error")
    return Notice(f"{cp_id} {'stopped (out of order)' if stop else 'resumed'}", "warning" if stop else "info")


# ---------------------------------------------------------------- screen
