"""Counting failed health checks: when the engine becomes BROKEN and when its health is restored."""

from __future__ import annotations

from dataclasses import dataclass

from evcharge.protocol.messages import Health


@dataclass
class HealthTracker:
    """The engine is KO after `threshold` failed checks in a row, OK again at the first good one.

    `health` is None until the first verdict, so a monitor that just started
    reports nothing rather than a guess.
    """

    threshold: int = 3
    failures: int = 0
    health: Health | None = None

    def observe(self, ok: bool) -> Health | None:
        """Record one check; return the new health when it changed, else None."""
        if ok:
            self.failures = 0
            new = Health.OK
        else:
            self.failures += 1
            if self.failures < self.threshold:
                return None
            new = Health.KO
        if new is self.health:
            return None
        self.health = new
        return new
