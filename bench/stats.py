"""Summaries of repeated measurements: nearest-rank percentiles, so every figure really happened."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from bench.probe import ProbeFailed
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


def run_trials(
    trials: int, say: Callable[[str], None], name: str, trial: Callable[[], dict[str, float]]
) -> dict[str, Any]:
    """`trial` run up to `trials` times, each key of its rows summarised; the first failure ends it.

    A failed trial is kept as the case's `error`, so the report shows it instead of a figure.
    """
    rows: list[dict[str, float]] = []
    error = None
    for n in range(trials):
        say(f"{name} {n + 1}/{trials}")
        try:
            rows.append(trial())
        except (TimeoutError, ProbeFailed, AssertionError) as exc:
            error = f"trial {n + 1}: {exc}"
            say(f"{name}: {error}")
            break
    keys = rows[0] if rows else {}
    return {"trials": rows, "error": error, **{k: summary([r[k] for r in rows if k in r]) for k in keys}}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
