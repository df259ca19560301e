"""The bench's table as the README prints it: each goal beside its measured value and verdict."""

from __future__ import annotations

from bench import report

RESULTS = {
    "machine": {"cpus": 2, "cpu_model": "AMD EPYC", "python": "3.11.7", "date": "2026-12-01",
                "commit": "abc1234"},
    "kafka_version": "4.1.1",
    "mode": "full",
    "heartbeats": {
        "goal_us": 30,
        "runs": [
            {"cps": 10000, "loop": "uvloop", "us_per_heartbeat": 21.0, "on_at_start": 6100, "on_at_end": 5900,
             "sim_cpu_percent": 150.0, "central_cpu_percent": 40.0, "sim_processes": 5},
        ],
    },
}  # fmt: skip


def test_a_fleet_not_carried_is_a_missed_goal_with_how_many_stayed_on() -> None:
    text = report.markdown(RESULTS)
    assert "full run of 2026-12-01, commit abc1234" in text
    line = next(line for line in text.splitlines() if "10,000 CPs registered" in line)
    assert "all ON, none dropped" in line and "misses goal (59% ON)" in line
    cost = next(line for line in text.splitlines() if "CPU per heartbeat, 10,000 monitors" in line)
    assert "meets goal" in cost


def test_a_fleet_carried_meets_the_goal() -> None:
    run = {**RESULTS["heartbeats"]["runs"][0], "on_at_start": 10000, "on_at_end": 10000}  # type: ignore[index]
    text = report.markdown({**RESULTS, "heartbeats": {"goal_us": 30, "runs": [run]}})
    line = next(line for line in text.splitlines() if "10,000 CPs registered" in line)
    assert line.rstrip().endswith("| meets goal |")
