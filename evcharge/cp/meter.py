"""The simulated energy meter: cumulative kWh and EUR from power, time and price."""

from __future__ import annotations

from dataclasses import dataclass

KWH_DECIMALS = 5
EUR_DECIMALS = 4


@dataclass
class Meter:
    kw: float
    price_eur_kwh: float
    seconds: float = 0.0

    @property
    def kwh(self) -> float:
        # From the total time, not a running sum of rounded steps: rounding each
        # tick would add up to a visible over-billing over a long session.
        return round(self.kw * self.seconds / 3600.0, KWH_DECIMALS)

    @property
    def eur(self) -> float:
        return round(self.kwh * self.price_eur_kwh, EUR_DECIMALS)

    def advance(self, seconds: float) -> None:
        """Add the energy of `seconds` at the current power."""
        self.seconds += seconds
