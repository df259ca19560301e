"""One report from many: the workers' counters added, their samples pooled, registration timed
from what central showed. Pure: numbers in, numbers out.

Percentiles are never averaged: the workers send every sample, and the merged
report computes each percentile over all of them, as one process would have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from evcharge.devtools.sim.report import SimStats

_SUMMED = (
    "cps_started",
    "requests_sent",
    "accepted",
    "events_published",
    "late_updates",
    "faults_injected",
    "unplugged_at_end",
)
_COUNTED = ("denied", "tickets", "errors", "warnings", "commands")


def merge(parts: Sequence[SimStats], *, cps: int, drivers: int) -> SimStats:
    """The workers' figures as one fleet's: what central showed (registration, listing, its own
    counters) and the simulator's CPU are the parent's to fill in."""
    total = SimStats(cps=cps, drivers=drivers)
    for part in parts:
        for name in _SUMMED:
            setattr(total, name, getattr(total, name) + getattr(part, name))
        for name in _COUNTED:
            getattr(total, name).update(getattr(part, name))
        for name, values in part.latencies.items():
            total.latencies.setdefault(name, []).extend(values)
        total.loop_lag_s.extend(part.loop_lag_s)
        # The workers start together (on the parent's go), so their clocks into the run agree.
        total.load_s = max(total.load_s, part.load_s)
        total.elapsed_s = max(total.elapsed_s, part.elapsed_s)
        total.interrupted = total.interrupted or part.interrupted
    laggiest = max(parts, key=lambda p: max(p.loop_lag_s, default=-1.0), default=None)
    if laggiest is not None and laggiest.loop_lag_s:
        total.loop_lag_worst_at_s = laggiest.loop_lag_worst_at_s
    return total


def registration(
    stats: SimStats,
    seen_at: Mapping[str, float],
    started_at: Mapping[str, float],
    first_started: float | None,
) -> None:
    """Each CP's "started → ON at central" and the fleet's registration time, into `stats`.

    `seen_at`: when central's API first showed each CP ON (monotonic, the clock every
    process on this machine shares); `started_at`: when each CP's engine started;
    `first_started`: when the fleet's first CP did. The registration time is known
    only once every planned CP was seen.
    """
    stats.cps_registered = len(seen_at)
    for cp_id, seen in seen_at.items():
        started = started_at.get(cp_id)
        if started is not None:
            stats.record("cp_registered", seen - started)
    if seen_at and len(seen_at) == stats.cps and first_started is not None:
        stats.registration_s = max(seen_at.values()) - first_started


def process_figures(user_s: float, sys_s: float, wall_s: float, max_rss_mb: float) -> dict[str, float]:
    """One process's CPU (user + system seconds, and as a share of one core) and peak memory."""
    cpu_s = user_s + sys_s
    return {
        "cpu_s": round(cpu_s, 2),
        "user_s": round(user_s, 2),
        "sys_s": round(sys_s, 2),
        "wall_s": round(wall_s, 2),
        "cpu_percent": round(100 * cpu_s / wall_s, 1) if wall_s else 0.0,
        "max_rss_mb": round(max_rss_mb, 1),
    }


def total_process(parent: Mapping[str, float], workers: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The whole simulator: the parent and every worker, CPU and memory added, over the parent's
    wall time (which spans the workers'). A share above 100 % is more than one core's worth."""
    every = [parent, *workers]
    user_s = sum(p.get("user_s", 0.0) for p in every)
    sys_s = sum(p.get("sys_s", 0.0) for p in every)
    rss = sum(p.get("max_rss_mb", 0.0) for p in every)  # each one's peak: at most this together
    return {**process_figures(user_s, sys_s, parent.get("wall_s", 0.0), rss), "processes": len(workers) or 1}
