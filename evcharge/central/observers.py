"""Central's observers that turn facts into words and numbers: the operator's messages (panel,
`/messages`, the log) and the counters `/health` shows.

Each observes the facts the service hands over after a commit; none changes
central's state.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evcharge.central import facts as f
from evcharge.central.state import CentralState
from evcharge.protocol.messages import Health
from evcharge.protocol.units import eur_text, kwh_text, price_text

log = logging.getLogger("evcharge.central")


@dataclass(frozen=True)
class PanelMessage:
    at: float
    text: str
    level: str  # "info", "warning", "error"


def describe(fact: f.Fact) -> tuple[str, str] | None:
    """The line an operator reads for a fact, with its level; None for facts too small to mention."""
    match fact:
        case f.CpRegistered(cp_id, location, price, _, new):
            if new:
                return f"{cp_id} registered ({location}, {price_text(price)} EUR/kWh)", "info"
            return f"{cp_id} connected", "info"
        case f.RegistrationRefused(cp_id, peer, code, _):
            return f"{cp_id}: refused a registration from {peer} ({code})", "warning"
        case f.MonitorLeft(cp_id, why):
            return f"{cp_id} disconnected ({why})", "warning"
        case f.HealthChanged(cp_id, Health.KO, _, detail):
            return f"{cp_id} out of order: engine broken{f' ({detail})' if detail else ''}", "warning"
        case f.HealthChanged(cp_id, Health.OK, Health.KO, _):
            return f"{cp_id} health restored", "info"
        case f.Authorised(driver_id, cp_id, session_id, _, _):
            return f"{driver_id} → {cp_id}: authorised (session {session_id[:8]})", "info"
        case f.Denied(driver_id, cp_id, _, _, reason, _):
            return f"{driver_id} → {cp_id}: denied ({reason})", "info"
        case f.StopAsked(driver_id, session_id, cp_id, None):
            return f"{driver_id} asked to stop session {session_id[:8]} on {cp_id}", "info"
        case f.LocalSupply(cp_id, driver_id):
            return f"{cp_id}: local supply started for {driver_id}", "info"
        case f.SessionClosed(s, by_central):
            reason = s.end_reason.value if s.end_reason else "?"
            figures = f"{kwh_text(s.wh)} kWh, {eur_text(s.micro_eur)} EUR"
            if by_central:
                return (
                    f"{s.cp_id}: session {s.session_id[:8]} of {s.driver_id} closed by central "
                    f"({reason}): {figures}",
                    "warning",
                )
            return (
                f"{s.cp_id}: session {s.session_id[:8]} of {s.driver_id} ended ({reason}): {figures}",
                "info",
            )
        case f.TicketRevised(s, before_wh, before_eur):
            if (s.wh, s.micro_eur) == (before_wh, before_eur):
                return f"{s.cp_id}: the meter confirmed the ticket of session {s.session_id[:8]}", "info"
            return (
                f"{s.cp_id}: ticket of session {s.session_id[:8]} corrected by the meter: "
                f"{kwh_text(before_wh)} → {kwh_text(s.wh)} kWh, {eur_text(s.micro_eur)} EUR",
                "warning",
            )
        case f.OperatorChanged(cp_id, stopped, _):
            return (
                (f"{cp_id} stopped by the operator", "warning")
                if stopped
                else (f"{cp_id} resumed by the operator", "info")
            )
        case f.CpForgotten(cp_id, _):
            return f"{cp_id} forgotten by the operator", "info"
        case f.OperatorRefused(action, by, reason):
            return f"{action} refused for {by}: {reason}", "warning"
        case _:
            return None


class Messages:
    """The latest messages for the operator; each is also one log line."""

    def __init__(self, keep: int = 200, clock: Callable[[], float] = time.time) -> None:
        self.latest: deque[PanelMessage] = deque(maxlen=keep)
        self._clock = clock
        self.listeners: list[Callable[[PanelMessage], None]] = []

    def say(self, text: str, level: str = "info") -> None:
        message = PanelMessage(self._clock(), text, level)
        self.latest.append(message)
        getattr(log, level)(text)
        for listener in self.listeners:
            listener(message)

    def observe(self, facts: Sequence[f.Fact], state: CentralState) -> None:
        for fact in facts:
            said = describe(fact)
            if said is not None:
                self.say(*said)


class Counters:
    """How often each thing happened since start: `/health` shows them."""

    # Every count is shown from the start, at zero until its first event: a reader tells
    # "nothing happened" from "not counted".
    NAMES = (
        "registrations",
        "registrations_refused",
        "requests_accepted",
        "requests_denied",
        "sessions_ended",
        "tickets_revised",
        "events_applied",
        "events_ignored",
        "dead_letters",
        "heartbeats",  # counted by the monitor server, which serves them without a fact
        "heartbeat_timeouts",  # monitors it dropped for silence (the monitor server's watch)
    )

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter(dict.fromkeys(self.NAMES, 0))

    def observe(self, facts: Sequence[f.Fact], state: CentralState) -> None:
        for fact in facts:
            match fact:
                case f.CpRegistered():
                    self.counts["registrations"] += 1
                case f.RegistrationRefused():
                    self.counts["registrations_refused"] += 1
                case f.Authorised():
                    self.counts["requests_accepted"] += 1
                case f.Denied():
                    self.counts["requests_denied"] += 1
                case f.SessionClosed():
                    self.counts["sessions_ended"] += 1
                case f.TicketRevised():
                    self.counts["tickets_revised"] += 1
                case f.EventsApplied(applied, ignored, _):
                    self.counts["events_applied"] += applied
                    self.counts["events_ignored"] += ignored
                case f.DeadLettered():
                    self.counts["dead_letters"] += 1
