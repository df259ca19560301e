"""The simulated energy meter: energy and cost from power, time and price, in whole units.

Pure. The meter counts milliseconds of supply at a constant power; energy is
computed from the total time, not summed per tick, so a long session is never
over- or under-billed by rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

from evcharge.protocol.units import cost_micro_eur, energy_wh


@dataclass
class Meter:
    power_w: int
    price: int  # micro-euros per kWh
    elapsed_ms: int = 0

    @property
    def wh(self) -> int:
        return energy_wh(self.power_w, self.elapsed_ms)

    @property
    def micro_eur(self) -> int:
        return cost_micro_eur(self.wh, self.price)

    def advance(self, elapsed_ms: int) -> None:
        """Add the energy of `elapsed_ms` at the current power."""
        self.elapsed_ms += elapsed_ms
