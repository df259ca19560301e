"""Request latency at low load, beside the bare Kafka round trip it is made of.

One request at a time to an idle CP, through the measuring client (the driver's
path without its printing): request → accepted is two Kafka hops (driver →
central → driver); request → supply started and → first meter reading are four
(driver → central → engine → central → driver), the reading also waits one
meter interval at the engine.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from bench.loop import LoopThread
from bench.probe import Prober, floor_round_trips
from bench.stats import summary
from evcharge.cp.settings import EngineSettings

GAP_S = 0.05  # between two requests: one at a time, never overlapping
# `evcharge engine`'s default, which the benchmark's engines run with.
ENGINE_METER_INTERVAL_S: float = next(
    f.default for f in dataclasses.fields(EngineSettings) if f.name == "meter_interval_s"
)


def measure_floor(loop: LoopThread, kafka: str, samples: int) -> dict[str, Any]:
    times = loop.run(floor_round_trips(kafka, samples), timeout_s=120)
    return summary(times)


def measure_low_load(
    loop: LoopThread, prober: Prober, cp_ids: list[str], accepted_samples: int, reading_samples: int
) -> dict[str, Any]:
    accepted: list[float] = []
    started: list[float] = []
    reading: list[float] = []
    denied: list[str] = []
    early = 0
    for n in range(accepted_samples + reading_samples):
        want_reading = n >= accepted_samples
        if n == accepted_samples:
            # An engine's meter keeps the cadence of a session that ended less than an
            # interval ago: let it fall idle, so each reading below is one fresh interval.
            time.sleep(ENGINE_METER_INTERVAL_S + 0.2)
        charge = loop.run(prober.charge(cp_ids[n % len(cp_ids)], reading=want_reading), timeout_s=60)
        if charge.denied:
            denied.append(charge.denied)
            continue
        assert charge.accepted_s is not None and charge.started_s is not None
        accepted.append(charge.accepted_s)
        started.append(charge.started_s)
        if charge.reading_s is not None:
            reading.append(charge.reading_s)
            early += charge.reading_s - charge.started_s < 0.9 * ENGINE_METER_INTERVAL_S
        time.sleep(GAP_S)
    return {
        "accepted_s": summary(accepted),
        "supply_started_s": summary(started),
        "first_reading_s": summary(reading),
        "meter_interval_s": ENGINE_METER_INTERVAL_S,
        # First readings that came sooner than one meter interval after the supply began.
        "early_readings": early,
        "denied": denied,
    }


def hop_multiples(low_load: dict[str, Any], floor: dict[str, Any]) -> dict[str, float | None]:
    """Our p50 as a multiple of (hops x the bare one-hop p50); the reading less its meter wait."""
    one_hop = floor.get("p50")
    if not one_hop or "accepted_s" not in low_load:  # either was not measured
        return {}

    def multiple(figure: float | None, hops: int, minus_s: float = 0.0) -> float | None:
        if figure is None or figure <= minus_s:
            return None
        return round((figure - minus_s) / (hops * one_hop), 1)

    return {
        "accepted_vs_2_hops": multiple(low_load["accepted_s"].get("p50"), 2),
        "supply_started_vs_4_hops": multiple(low_load["supply_started_s"].get("p50"), 4),
        "first_reading_minus_interval_vs_4_hops": multiple(
            low_load["first_reading_s"].get("p50"), 4, low_load["meter_interval_s"]
        ),
    }
