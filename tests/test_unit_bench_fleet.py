"""The fleet section's arithmetic: the goal's load scaled to a fleet, central's histogram read back."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench import fleet


def test_the_goals_load_scales_with_the_fleet() -> None:
    full = fleet.load_for(10_000)
    assert (full["cps"], full["request_rate"], full["session_s"]) == (10_000, 50.0, 40.0)
    # Requests per second times a session's length: the CPs supplying at once, a fifth.
    assert full["request_rate"] * full["session_s"] == 2_000
    assert full["drivers"] >= 2_000 and full["processes"] >= 2
    # The drivers start once the fleet has registered, and then run the whole load.
    assert full["drivers_after_s"] > full["ramp_up_s"]
    assert full["ramp_up_s"] + full["duration_s"] - full["drivers_after_s"] == fleet.LOAD_S
    small = fleet.load_for(2_000)
    assert small["request_rate"] * small["session_s"] == 400 and small["processes"] == 1


def test_a_histogram_is_read_back_as_the_buckets_its_quantiles_fall_in() -> None:
    registry = CollectorRegistry()
    decided = Histogram(fleet.DECISION_HISTOGRAM, "decision", buckets=(0.01, 0.1, 1.0), registry=registry)
    for seconds in [0.005] * 60 + [0.05] * 39 + [0.5]:
        decided.observe(seconds)
    text = generate_latest(registry).decode()
    got = fleet.histogram_quantiles(text, fleet.DECISION_HISTOGRAM)
    assert got["count"] == 100 and got["p50_at_most"] == 0.01 and got["p99_at_most"] == 0.1
    assert abs(got["mean"] - (60 * 0.005 + 39 * 0.05 + 0.5) / 100) < 1e-9  # type: ignore[operator]
    assert fleet.histogram_quantiles(text, "evcharge_other_seconds") == {}
    assert fleet.histogram_quantiles("", fleet.DECISION_HISTOGRAM) == {}
