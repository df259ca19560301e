"""How `evcharge sim --processes N` shares one fleet among N workers. Pure: settings in, shares out.

Each worker gets a disjoint, consecutive range of CP numbers and of driver numbers
(so every id is the one a single process would have given, and none is given
twice), its part of the request rate in proportion to its drivers, and a seed of
its own derived from the run's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Share:
    """What one worker simulates: CPs `first_cp .. first_cp + cps - 1` and drivers likewise."""

    worker: int  # 1-based; 0 is the whole fleet in one process
    first_cp: int
    cps: int
    first_driver: int
    drivers: int
    request_rate: float  # requests per second for this worker's drivers
    seed: int | None

    @property
    def cp_numbers(self) -> range:
        return range(self.first_cp, self.first_cp + self.cps)

    @property
    def driver_numbers(self) -> range:
        return range(self.first_driver, self.first_driver + self.drivers)


def whole(cps: int, drivers: int, request_rate: float, seed: int | None) -> Share:
    """The fleet of a run in one process."""
    return Share(0, 1, cps, 1, drivers, request_rate, seed)


def split(cps: int, drivers: int, request_rate: float, seed: int | None, processes: int) -> list[Share]:
    """`processes` shares whose CPs and drivers add up to the fleet, sizes within one of each other."""
    if processes < 1 or processes > cps:
        raise ValueError(f"{processes} processes for {cps} CPs: each worker needs at least one CP")
    cp_sizes = _even(cps, processes)
    driver_sizes = _even(drivers, processes)
    shares = []
    first_cp = first_driver = 1
    for n, (cp_count, driver_count) in enumerate(zip(cp_sizes, driver_sizes, strict=True)):
        # Each driver sends at the fleet's mean rate per driver, wherever it runs. A worker
        # without a driver sends nothing, but its rate stays positive, as the settings demand.
        rate = request_rate * driver_count / drivers if drivers else request_rate / processes
        shares.append(
            Share(
                worker=n + 1,
                first_cp=first_cp,
                cps=cp_count,
                first_driver=first_driver,
                drivers=driver_count,
                request_rate=rate if rate > 0 else request_rate / processes,
                seed=None if seed is None else seed + n,
            )
        )
        first_cp += cp_count
        first_driver += driver_count
    return shares


def ids(prefix: str, numbers: range, fleet_size: int) -> list[str]:
    """`PREFIX-0001`...: zero-padded to the whole fleet's width, so every worker pads alike."""
    width = max(4, len(str(fleet_size)))
    return [f"{prefix}-{n:0{width}d}" for n in numbers]


def _even(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if n < extra else 0) for n in range(parts)]
