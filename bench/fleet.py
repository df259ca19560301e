"""The whole fleet at once: CPs heartbeating, a fifth of them supplying, drivers requesting, for a minute.

The goal's load is 10,000 CPs (a real monitor over TCP and a real engine
health port each), 2,000 of them supplying with a reading a second, and
drivers asking at 50 requests/s. Each size runs that load scaled to it: a CP
in five supplying, five requests a second per 1,000 CPs, sessions of 40 s (so
rate times length = the supplying fifth). A fresh central each time; the drivers
start once the CPs have registered, so what is timed is the fleet in place. The figures:
request → accepted p99, the simulator's errors, CPs central dropped for a late
heartbeat (its `heartbeat_timeouts` counter), sessions supplying at the peak,
and the CPU of central and of the simulator beside it, so the reader sees which
of them is the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.load import LoadRunner, sim_processes
from bench.series import whole_run

ACCEPTED_P99_GOAL_S = 0.100
SESSION_S = 40.0
LOAD_S = 60.0
SUPPLYING_SHARE = 0.2  # of the fleet's CPs
REQUESTS_PER_CP_S = 50 / 10_000
# A driver waits out its session before its next request: with twice the drivers that can be
# supplying at once, the fleet's request rate is not held back by drivers all busy charging.
DRIVERS_PER_SESSION = 2.5


def load_for(size: int, load_s: float = LOAD_S) -> dict[str, Any]:
    """The simulator's settings for `size` CPs: the goal's load scaled to that fleet."""
    supplying = SUPPLYING_SHARE * size
    ramp_s = max(2.0, size / 400)  # registrations at a few hundred a second, not all in one burst
    # The drivers start once the fleet has registered (its last joins and their commits over),
    # so requests are timed against CPs in place, as the goal's load is; then `load_s` of them.
    drivers_after_s = ramp_s + max(5.0, size / 400)
    return {
        "cps": size,
        "drivers": max(1, round(DRIVERS_PER_SESSION * supplying)),
        "request_rate": REQUESTS_PER_CP_S * size,
        "session_s": SESSION_S,
        "meter_interval_s": 1.0,
        "ramp_up_s": ramp_s,
        "drivers_after_s": drivers_after_s,
        "duration_s": drivers_after_s - ramp_s + load_s,  # the sim's duration counts from the ramp's end
        "processes": sim_processes(size),
    }


def measure(
    runner: LoadRunner,
    sizes: list[int],
    say: Callable[[str], None],
    profiled: bool = True,
    load_s: float = LOAD_S,
) -> dict[str, Any]:
    runs = []
    for size in sizes:
        load = load_for(size, load_s)
        say(
            f"{size:,} CPs, {load['request_rate']:g} requests/s of {load['session_s']:g} s sessions "
            f"(≈ {SUPPLYING_SHARE * size:,.0f} supplying), for {load_s:g} s"
        )
        try:
            # Profiled halfway through the load, once the supplying sessions have built up.
            run = runner.run_sim(
                f"fleet{size}",
                load,
                planned_s=load["drivers_after_s"] + load_s + SESSION_S,
                profile_at_s=load["drivers_after_s"] + min(SESSION_S, load_s / 2) if profiled else None,
            )
        except Exception as exc:
            say(f"[red]  failed: {exc!r}[/]")
            runs.append({"cps": size, "error": repr(exc)})
            continue
        runs.append(summary(size, load, run))
        r = runs[-1]
        say(
            f"  accepted p99 {r['accepted_p99_s']} s, errors {r['errors']}, dropped {r['dropped']}, "
            f"supplying at most {r['supplying_max']}; central {r.get('central_cpu_percent')} %, "
            f"sim {r.get('sim_cpu_percent')} %"
        )
    return {"accepted_p99_goal_s": ACCEPTED_P99_GOAL_S, "runs": runs}


def summary(size: int, load: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    report = run["report"]
    counters = report.get("central_counters", {})
    accepted = report.get("latency_s", {}).get("accepted", {})
    samples = run["samples"]
    return {
        "cps": size,
        "request_rate": load["request_rate"],
        "sim_processes": load["processes"],
        "registered": report.get("cps", {}).get("registered"),
        "requests": report.get("requests", {}),
        "accepted_p50_s": accepted.get("p50"),
        "accepted_p99_s": accepted.get("p99"),
        "errors": report.get("errors", {}).get("total"),
        "errors_by_kind": report.get("errors", {}).get("by_kind", {}),
        # No counter in the report: central was gone before the simulator asked (not a zero).
        "dropped": counters.get("heartbeat_timeouts"),
        "heartbeats": counters.get("heartbeats"),
        "supplying_max": max((s.get("sessions", 0) for s in samples), default=0),
        "sim_exit_code": run["exit_code"],
        # Of request → accepted, the part before central decided (broker stamp → decision).
        "decision_s": histogram_quantiles(run.get("central_metrics", ""), DECISION_HISTOGRAM),
        # A late simulator hears its answers late: its own loop lag tells its share of the latency.
        "sim_loop_lag_p99_s": report.get("sim_loop_lag_s", {}).get("p99"),
        **whole_run(samples),
        **{f"profile_{who}": summary for who, summary in run.get("profiles", {}).items()},
    }


DECISION_HISTOGRAM = "evcharge_request_decision_seconds"


def histogram_quantiles(text: str, name: str) -> dict[str, float | int | None]:
    """p50, p99 (the upper bound of the bucket each falls in), mean and count of a Prometheus
    histogram in `text`; {} when it is not there."""
    family = next((f for f in text_string_to_metric_families(text) if f.name == name), None)
    if family is None:
        return {}
    buckets = sorted((float(s.labels["le"]), s.value) for s in family.samples if s.name == f"{name}_bucket")
    count = next((s.value for s in family.samples if s.name == f"{name}_count"), 0)
    total = next((s.value for s in family.samples if s.name == f"{name}_sum"), 0.0)
    if not count:
        return {"count": 0}

    def quantile(q: float) -> float | None:
        return next((bound for bound, seen in buckets if seen >= q * count), None)

    return {"count": int(count), "mean": total / count, "p50_at_most": quantile(0.5),
            "p99_at_most": quantile(0.99)}  # fmt: skip


def carried(run: dict[str, Any]) -> bool:
    """Every promise of the goal's load kept at this size."""
    p99 = run.get("accepted_p99_s")
    return (
        not run.get("error")
        and run.get("errors") == 0
        and run.get("dropped") == 0
        and run.get("registered") == run["cps"]
        and p99 is not None
        and p99 <= ACCEPTED_P99_GOAL_S
        and run.get("supplying_max", 0) >= 0.8 * SUPPLYING_SHARE * run["cps"]
    )
