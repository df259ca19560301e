"""`make bench`'s fleet section: the goal's whole load at once, scaled to a fleet. The figures are
the bench's to judge; here: that a small fleet's run measures each of them on real processes, and
the table says whether every promise held."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import fleet, load, report
from bench.loop import LoopThread

pytestmark = [pytest.mark.kafka, pytest.mark.processes, pytest.mark.bench]


def test_a_small_fleet_under_the_whole_load_is_measured_and_judged(kafka_broker, tmp_path: Path) -> None:
    loop = LoopThread()
    runner = load.LoadRunner(tmp_path, kafka_broker.bootstrap, loop, None)
    try:
        figures = fleet.measure(runner, [200], say=print, load_s=20.0)
    finally:
        runner.close()
        loop.close()

    (run,) = figures["runs"]
    assert "error" not in run, run
    assert run["registered"] == 200 and run["errors"] == 0 and run["dropped"] == 0
    assert run["requests"]["accepted"] >= 1 and run["accepted_p99_s"] is not None
    assert run["heartbeats"] > 200  # every monitor beat more than once
    # Central's own histogram, scraped before it stopped: every request it decided is in it.
    assert run["decision_s"]["count"] == run["requests"]["accepted"] + run["requests"]["denied_total"]
    assert run["central_cpu_percent"] > 0 and run["sim_cpu_percent"] > 0
    text = report.markdown({"fleet": figures})
    line = next(line for line in text.splitlines() if "the whole load for a minute" in line)
    assert line.rstrip().endswith("| meets goal |" if fleet.carried(run) else "| misses goal |")
