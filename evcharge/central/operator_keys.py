"""The operator's keys on central's panel (F7): keystrokes become stop/resume commands.

Pure except `execute`, which carries a command out on the service.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection
from dataclasses import dataclass

from evcharge.central.service import CentralService
from evcharge.errors import Fenced, Refused, StoreUnavailable


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
    try:
        return await _execute(service, command)
    except Refused as exc:
        return Notice(exc.reason, "error")
    except StoreUnavailable as exc:
        return Notice(f"central cannot record right now: {exc}", "error")
    except Fenced:
        return Notice("this central is a standby: the leading central takes the operator's commands", "error")


async def _execute(service: CentralService, command: Command) -> Notice:
    stop = command.action in (Action.STOP, Action.STOP_ALL)
    if command.action in (Action.STOP_ALL, Action.RESUME_ALL):
        changed = await service.set_stopped(None, stop, "panel")
        return Notice(
            f"{'stopped' if stop else 'resumed'} {len(changed)} charging points",
            "warning" if stop else "info",
        )
    cp_id = resolve_cp(command.target, service.state.cps)
    if cp_id is None:
        return Notice(f"no charging point matches {command.target!r}", "error")
    await service.set_stopped([cp_id], stop, "panel")
    return Notice(f"{cp_id} {'stopped (out of order)' if stop else 'resumed'}", "warning" if stop else "info")
