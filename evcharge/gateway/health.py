"""A charger's health as central's status matrix needs it, from what its StatusNotifications said.

Pure. The WebSocket link is the monitor's link; what the charger reports of
its connectors is the engine's health: Faulted anywhere is KO, and so is a
charger that says it is Unavailable without the operator having asked for it
(central then shows BROKEN with the charger's own words as the detail). An
Unavailable the operator asked for is what STOPPED means, so it stays OK.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evcharge.protocol.messages import Health

FAULTED = "Faulted"
UNAVAILABLE = "Unavailable"


@dataclass
class ChargerHealth:
    # (evse or connector, connector) -> the last status and error code it reported
    statuses: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)
    operator_stopped: bool = False

    def report(self, where: tuple[int, int], status: str, error_code: str = "") -> bool:
        """Take one StatusNotification; True when the health or its detail changed."""
        before = self.verdict()
        self.statuses[where] = (status, error_code)
        return self.verdict() != before

    def stop(self, stopped: bool) -> bool:
        before = self.verdict()
        self.operator_stopped = stopped
        return self.verdict() != before

    def verdict(self) -> tuple[Health, str]:
        for (first, second), (status, error_code) in sorted(self.statuses.items()):
            if status == FAULTED:
                where = "" if (first, second) == (0, 0) else f" on connector {first or second}"
                code = f" ({error_code})" if error_code and error_code != "NoError" else ""
                return Health.KO, f"charger reports Faulted{where}{code}"
        unavailable = [w for w, (status, _) in self.statuses.items() if status == UNAVAILABLE]
        whole = (0, 0) in unavailable or len(unavailable) == len(self.statuses)
        if unavailable and whole and not self.operator_stopped:
            return Health.KO, "charger reports Unavailable"
        return Health.OK, ""
