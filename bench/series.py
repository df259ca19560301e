"""What a run's samples say: offered and applied rates, central's lag, CPU and memory. Pure: samples in.

A sample is one instant of a run: `t` (seconds into it), central's `applied` events
and `sessions` in progress, the records `written` to cp events, `committed` by
central and published as driver `updates`, and `<process>_cpu_s` / `<process>_rss_mb`.
"""

from __future__ import annotations

from typing import Any


def plateau(samples: list[dict[str, float]]) -> list[dict[str, float]]:
    """The samples while at least 80 % of the run's peak sessions were in progress."""
    have = [s for s in samples if "sessions" in s and "written" in s and "applied" in s]
    if not have:
        return []
    peak = max(s["sessions"] for s in have)
    window = [s for s in have if peak and s["sessions"] >= 0.8 * peak]
    return window if len(window) >= 3 else have


def rates(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Offered and applied rates, lag and CPU over the plateau of one run."""
    window = plateau(samples)
    if len(window) < 2:
        return {"error": "too few samples to compute rates"}
    first, last = window[0], window[-1]
    dt = last["t"] - first["t"]
    lag = [s["written"] - s["committed"] for s in window]
    written = (last["written"] - first["written"]) / dt
    applied = (last["applied"] - first["applied"]) / dt
    lag_growth = (lag[-1] - lag[0]) / dt
    out: dict[str, Any] = {
        "window_s": round(dt, 2),
        "sessions": round(sum(s["sessions"] for s in window) / len(window), 1),
        "offered_per_s": round(written, 1),
        "applied_per_s": round(applied, 1),
        "lag_start": lag[0],
        "lag_end": lag[-1],
        "lag_max": max(lag),
        "lag_growth_per_s": round(lag_growth, 1),
        # Keeping up: the backlog does not grow and stays under a second's worth of readings.
        "keeping_up": lag_growth <= 0.05 * max(written, 1) and lag[-1] <= max(written, 100),
    }
    for name in ("central", "sim", "broker"):
        key = f"{name}_cpu_s"
        if key in first and key in last:
            out[f"{name}_cpu_percent"] = round(100 * (last[key] - first[key]) / dt, 1)
        rss = [s[f"{name}_rss_mb"] for s in window if f"{name}_rss_mb" in s]
        if rss:
            out[f"{name}_rss_mb"] = max(rss)
    return out


def drained(samples: list[dict[str, float]]) -> bool:
    """Central has handled every record, and its outbox has stopped publishing updates."""
    last = samples[-3:]
    if len(last) < 3 or any("updates" not in s for s in last):
        return False
    caught_up = last[-1]["written"] == last[-1]["committed"] and last[-1].get("applied", 0) > 0
    return caught_up and last[0]["updates"] == last[-1]["updates"]


def drain_rate(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Applied per second from central's first applied event until it caught up, and its CPU meanwhile.

    Also the same backlog end to end: until the last driver update it owed was published.
    """
    working = [s for s in samples if s.get("applied", 0) > 0]
    if len(working) < 2:
        return {"error": "central applied nothing measurable"}
    first = working[0]
    caught = next((s for s in working if s.get("written") == s.get("committed")), working[-1])
    published = published_at = working[-1]
    for earlier in reversed(working):  # the first sample after which updates stopped growing
        if earlier.get("updates") != published.get("updates"):
            break
        published_at = earlier
    dt = caught["t"] - first["t"]
    dt_published = published_at["t"] - first["t"]
    out: dict[str, Any] = {
        "caught_up": caught.get("written") == caught.get("committed"),
        "startup_to_first_applied_s": round(first["t"], 2),
        "window_s": round(dt, 2),
        "applied": caught["applied"] - first["applied"],
        "applied_per_s": round((caught["applied"] - first["applied"]) / dt, 1) if dt > 0 else None,
        "updates_published": published_at.get("updates", 0) - samples[0].get("updates", 0),
        "applied_and_published_per_s": (
            round((caught["applied"] - first["applied"]) / dt_published, 1) if dt_published > 0 else None
        ),
    }
    for name in ("central", "broker", "postgres"):
        key = f"{name}_cpu_s"
        if key in first and key in published_at and dt_published > 0:
            out[f"{name}_cpu_percent"] = round(100 * (published_at[key] - first[key]) / dt_published, 1)
        rss = [s[f"{name}_rss_mb"] for s in working if f"{name}_rss_mb" in s]
        if rss:
            out[f"{name}_rss_mb"] = max(rss)
    return out


def whole_run(samples: list[dict[str, float]], names: tuple[str, ...] = ("central", "sim")) -> dict[str, Any]:
    """CPU % averaged over the whole run and peak RSS, per process."""
    out: dict[str, Any] = {}
    for name in names:
        have = [s for s in samples if f"{name}_cpu_s" in s]
        if len(have) >= 2 and have[-1]["t"] > have[0]["t"]:
            dt = have[-1]["t"] - have[0]["t"]
            out[f"{name}_cpu_percent"] = round(
                100 * (have[-1][f"{name}_cpu_s"] - have[0][f"{name}_cpu_s"]) / dt, 1
            )
        rss = [s[f"{name}_rss_mb"] for s in samples if f"{name}_rss_mb" in s]
        if rss:
            out[f"{name}_rss_mb"] = max(rss)
    return out
