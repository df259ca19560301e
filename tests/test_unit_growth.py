"""The bench's growth curves: the figures of the heartbeat and throughput sections, as a table and a PNG."""

from __future__ import annotations

from pathlib import Path

from bench import growth

RESULTS = {
    "machine": {"date": "2026-12-01T23:00:00+0000", "commit": "abc1234", "cpus": 2},
    "heartbeats": {
        "runs": [
            {"cps": 2000, "loop": "uvloop", "central_cpu_percent": 9.0, "central_rss_mb": 80.5,
             "sim_cpu_percent": 51.0, "on_at_start": 2000, "on_at_end": 2000},
            {"cps": 1000, "loop": "uvloop", "central_cpu_percent": 5.2, "central_rss_mb": 70.1,
             "sim_cpu_percent": 26.0, "on_at_start": 1000, "on_at_end": 1000},
            {"cps": 1000, "loop": "asyncio", "central_cpu_percent": 7.7, "sim_cpu_percent": 26.0},
            {"cps": 10000, "loop": "uvloop", "error": "RuntimeError('no CPU')"},
        ]
    },
    "throughput": {
        "steps": [
            {"offered_per_s": 3809.0, "applied_per_s": 3814.2, "central_cpu_percent": 48.4,
             "central_rss_mb": 65.2, "keeping_up": True},
            {"offered_per_s": 7600.0, "applied_per_s": 6100.0, "central_cpu_percent": 99.0,
             "central_rss_mb": 70.0, "keeping_up": False},
        ]
    },
}  # fmt: skip


def test_the_fleet_curve_is_uvloop_runs_by_size_without_failed_ones() -> None:
    points = growth.fleet_points(RESULTS)
    assert [p["cps"] for p in points] == [1000, 2000]
    assert points[0]["central_rss_mb"] == 70.1 and points[1]["sim_cpu_percent"] == 51.0


def test_the_tables_show_each_figure_and_whether_central_kept_up() -> None:
    text = growth.markdown(RESULTS)
    assert "| 1,000 | 5.2 % | 70 MB | 26.0 % | 1,000 |" in text
    assert "| 3,809 | 3,814 | 48.4 % | 65 MB | yes |" in text
    assert "| 7,600 | 6,100 | 99.0 % | 70 MB | no |" in text


def test_the_plot_is_a_png_file(tmp_path: Path) -> None:
    drawn = growth.plot(RESULTS, tmp_path / "docs" / "growth.png")
    assert drawn is not None
    assert drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_curve_no_plot(tmp_path: Path) -> None:
    assert growth.plot({"machine": {}}, tmp_path / "growth.png") is None
    assert not (tmp_path / "growth.png").exists()
