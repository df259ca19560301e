"""Summaries of repeated measurements: nearest-rank percentiles, so every figure really happened."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from evcharge.devtools.sim.report import percentile


def summary(values: Sequence[float]) -> dict[str, Any]:
    """count, median, p50/p95/p99 and max of `values` in seconds (rounded to 0.1 ms), raw samples too."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "median": _r(statistics.median(values)),
        "p50": _r(percentile(values, 50)),
        "p95": _r(percentile(values, 95)),
        "p99": _r(percentile(values, 99)),
        "max": _r(max(values)),
        "samples": [_r(v) for v in values],
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
