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
    # Its CPU went to monitors registering and reconnecting: not a heartbeat's cost at all.
    cost = next(line for line in text.splitlines() if "CPU per heartbeat, 10,000 monitors" in line)
    assert "no figure: 6,100 of 10,000 ON, the fleet was not carried" in cost


def test_a_fleet_carried_meets_the_goal() -> None:
    run = {**RESULTS["heartbeats"]["runs"][0], "on_at_start": 10000, "on_at_end": 10000}  # type: ignore[index]
    text = report.markdown({**RESULTS, "heartbeats": {"goal_us": 30, "runs": [run]}})
    line = next(line for line in text.splitlines() if "10,000 CPs registered" in line)
    assert line.rstrip().endswith("| meets goal |")
    cost = next(line for line in text.splitlines() if "CPU per heartbeat, 10,000 monitors" in line)
    assert cost.rstrip().endswith("| meets goal |")


FLEET_RUN = {
    "cps": 2000, "registered": 2000, "supplying_max": 390, "errors": 0, "dropped": 0,
    "accepted_p50_s": 0.02, "accepted_p99_s": 0.08, "requests": {"sent": 600, "accepted": 550},
    "central_cpu_percent": 30.0, "sim_cpu_percent": 70.0, "sim_processes": 1,
}  # fmt: skip


def _fleet_line(run: dict[str, object]) -> str:
    text = report.markdown({**RESULTS, "fleet": {"runs": [run]}})
    return next(line for line in text.splitlines() if "the whole load for a minute" in line)


def test_the_whole_load_meets_its_goal_only_when_every_promise_held() -> None:
    assert _fleet_line(FLEET_RUN).rstrip().endswith("| meets goal |")
    for broken in ({"accepted_p99_s": 0.25}, {"dropped": 3}, {"errors": 1}, {"registered": 1999},
                   {"supplying_max": 100}, {"dropped": None}):  # fmt: skip
        assert _fleet_line({**FLEET_RUN, **broken}).rstrip().endswith("| misses goal |"), broken


def test_a_profile_is_shown_beside_the_run_it_explains() -> None:
    profiled = {
        **FLEET_RUN,
        "profile_central": {"samples": 250, "by_area_percent": [["asyncio", 40.0], ["evcharge", 30.0]],
                            "self_percent": [["HeartbeatLink._write (central/heartbeats.py)", 7.5]]},
        "profile_sim": {"error": "no profile: gone"},
    }  # fmt: skip
    text = report.markdown({**RESULTS, "fleet": {"runs": [profiled]}})
    line = next(line for line in text.splitlines() if "where the time goes at 2,000 CPs" in line)
    assert "central (250 busy samples): asyncio 40.0 %, evcharge 30.0 %" in line
    assert "HeartbeatLink._write (central/heartbeats.py) 7.5 %" in line
    assert "the busiest simulator process: not profiled (no profile: gone)" in line


def test_the_steady_minute_misses_when_the_backlog_grew() -> None:
    minute = {"offered_per_s": 3900.0, "applied_per_s": 3700.0, "window_s": 60.0, "lag_start": 10,
              "lag_end": 9000, "lag_growth_per_s": 150.0, "keeping_up": False}  # fmt: skip
    text = report.markdown({**RESULTS, "throughput": {"steady_minute": minute}})
    line = next(line for line in text.splitlines() if "the best step held a minute" in line)
    assert "3,900/s → 3,700/s over 60.00 s; backlog 10 → 9000" in line
    assert "misses goal: the backlog grew" in line
    kept = report.markdown({**RESULTS, "throughput": {"steady_minute": {**minute, "keeping_up": True}}})
    assert "| meets goal |" in next(line for line in kept.splitlines() if "held a minute" in line)


def test_central_alone_is_held_to_twenty_thousand_readings_a_second() -> None:
    drain = {"applied_per_s": 13_800.0, "applied": 20_000, "window_s": 1.45}
    text = report.markdown({**RESULTS, "throughput": {"drain": drain}})
    line = next(line for line in text.splitlines() if "working off a backlog alone on SQLite" in line)
    assert "≥ 20,000/s on 2 cores" in line and "misses goal (69% of it)" in line
