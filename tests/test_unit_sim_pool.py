"""`evcharge sim --processes N`, its pure parts: the fleet split into shares, the workers' messages,
their reports merged into one, and the command line each worker is started with."""

from __future__ import annotations

import asyncio
import io
import os
import random
import sys
from collections import Counter

import pytest
import typer.main
from rich.console import Console

from bench import load
from evcharge.cli import app
from evcharge.config import SECRETS
from evcharge.devtools.sim import merge, pool, split, wire
from evcharge.devtools.sim.app import Simulation
from evcharge.devtools.sim.link import ParentLink
from evcharge.devtools.sim.pool import PooledSimulation, worker_command
from evcharge.devtools.sim.report import SimStats, percentile, render
from evcharge.devtools.sim.settings import SimSettings
from evcharge.errors import ConfigError, ProtocolError
from evcharge.runtime.shutdown import EXIT_INTERRUPTED


def test_shares_cover_the_fleet_once_with_the_ids_one_process_would_give() -> None:
    shares = split.split(cps=10_001, drivers=7, request_rate=50.0, seed=7, processes=3)
    assert [s.worker for s in shares] == [1, 2, 3]
    assert [s.cps for s in shares] == [3334, 3334, 3333]
    assert [s.drivers for s in shares] == [3, 2, 2]
    ids = [cp for s in shares for cp in split.ids("SIM", s.cp_numbers, 10_001)]
    assert ids == split.ids("SIM", range(1, 10_002), 10_001)  # disjoint, in order, none missing
    assert ids[0] == "SIM-00001" and ids[-1] == "SIM-10001"  # padded to the fleet's width, not a share's
    drivers = [d for s in shares for d in split.ids("d", s.driver_numbers, 7)]
    assert drivers == [f"d-000{n}" for n in range(1, 8)]
    assert sum(s.request_rate for s in shares) == pytest.approx(50.0)
    assert [s.request_rate / s.drivers for s in shares] == pytest.approx([50 / 7] * 3)  # same per driver
    assert [s.seed for s in shares] == [7, 8, 9]
    assert split.split(4, 0, 5.0, None, 2)[1].seed is None
    assert all(s.request_rate > 0 for s in split.split(3, 1, 5.0, None, 3))  # a worker without drivers
    with pytest.raises(ValueError):
        split.split(2, 0, 1.0, None, 3)


def test_one_process_is_the_whole_fleet_and_the_settings_refuse_impossible_splits() -> None:
    settings = SimSettings(cps=20, drivers=4, request_rate=2.0, seed=3)
    assert settings.share == split.whole(20, 4, 2.0, 3)
    assert SimSettings(cps=20, drivers=4, processes=2, worker=2).share.first_cp == 11
    for wrong in (dict(cps=2, processes=3), dict(processes=0), dict(processes=2, worker=3)):
        with pytest.raises(ConfigError):
            SimSettings(**wrong).check()  # type: ignore[arg-type]


def _stats(latencies: list[float], **counts: int) -> SimStats:
    stats = SimStats(cps=10, drivers=2, **counts)
    stats.latencies["accepted"] = latencies
    return stats


def test_merged_counters_add_and_percentiles_come_from_every_sample() -> None:
    fast = _stats([0.01] * 98, requests_sent=98, accepted=98, cps_started=10)
    slow = _stats([1.0, 2.0], requests_sent=2, accepted=2, cps_started=10)
    fast.denied.update({"busy": 2})
    slow.denied.update({"busy": 1, "broken": 1})
    slow.errors.update({"no answer to a request within 30 s": 1})
    fast.loop_lag_s, fast.loop_lag_worst_at_s = [0.001, 0.002], 3.0
    slow.loop_lag_s, slow.loop_lag_worst_at_s = [0.5], 12.0
    fast.load_s, slow.load_s = 40.0, 41.5
    total = merge.merge([fast, slow], cps=20, drivers=4)
    assert (total.cps, total.drivers, total.cps_started) == (20, 4, 20)
    assert (total.requests_sent, total.accepted) == (100, 100)
    assert total.denied == Counter({"busy": 3, "broken": 1})
    assert total.total_errors == 1
    # Over the pooled samples p99 is a fast one; averaging the two workers' p99 would say ~1 s.
    assert percentile(total.latencies["accepted"], 99) == 1.0
    assert percentile(total.latencies["accepted"], 98) == 0.01
    assert len(total.latencies["accepted"]) == 100
    assert total.loop_lag_worst_at_s == 12.0 and total.load_s == 41.5
    assert not fast.errors  # the parts are left as they were


def test_registration_is_timed_from_what_central_showed_and_only_when_all_were_seen() -> None:
    stats = SimStats(cps=3, drivers=0)
    started = {"S-1": 100.0, "S-2": 100.5, "S-3": 101.0}
    merge.registration(stats, {"S-1": 101.0, "S-2": 101.0}, started, first_started=100.0)
    assert stats.cps_registered == 2 and stats.registration_s is None
    assert sorted(stats.latencies["cp_registered"]) == [0.5, 1.0]
    stats = SimStats(cps=3, drivers=0)
    merge.registration(stats, {"S-1": 101.0, "S-2": 101.0, "S-3": 102.5}, started, first_started=100.0)
    assert stats.cps_registered == 3 and stats.registration_s == 2.5
    assert sorted(stats.latencies["cp_registered"]) == [0.5, 1.0, 1.5]


def test_the_simulators_cpu_is_each_process_and_their_sum() -> None:
    one = merge.process_figures(user_s=3.0, sys_s=1.0, wall_s=8.0, max_rss_mb=100.0)
    assert one == {
        "cpu_s": 4.0,
        "user_s": 3.0,
        "sys_s": 1.0,
        "wall_s": 8.0,
        "cpu_percent": 50.0,
        "max_rss_mb": 100.0,
    }
    parent = merge.process_figures(0.5, 0.5, 10.0, 60.0)
    workers = [merge.process_figures(6.0, 2.0, 9.5, 300.0), merge.process_figures(5.0, 1.0, 9.6, 280.0)]
    total = merge.total_process(parent, workers)
    assert (total["cpu_s"], total["user_s"], total["sys_s"]) == (15.0, 11.5, 3.5)
    assert total["cpu_percent"] == 150.0  # one and a half cores over the parent's 10 s
    assert (total["max_rss_mb"], total["processes"]) == (640.0, 2)
    stats = SimStats(cps=2, drivers=0, process=total)
    stats.workers = [
        {"name": "worker 1", "cps": "S-1..S-1", **workers[0]},
        {"name": "parent", "cps": "-", **parent},
    ]
    console = Console(record=True, width=160)
    console.print(render(stats))
    text = console.export_text()
    assert "2 worker processes" in text and "user 11.5 + sys 3.5; 150 % of one core" in text
    assert "worker 1" in text and "S-1..S-1" in text and "84 %" in text


def test_a_workers_report_crosses_the_pipe_exactly() -> None:
    stats = _stats([random.Random(1).random() for _ in range(50)], requests_sent=50, cps_started=3)
    stats.tickets.update({"completed": 4})
    stats.process = merge.process_figures(1.25, 0.5, 3.0, 77.7)
    report = wire.Report(stats, started_at={"S-1": 12345.678901234}, first_started=12345.6, crashed=False)
    line = wire.encode(report)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = wire.decode(line)
    assert isinstance(back, wire.Report)
    assert back.stats == stats  # every float as it was: percentiles merge to the same figures
    assert back.started_at == report.started_at and back.first_started == 12345.6
    progress = wire.decode(wire.encode(wire.Progress(stats)))
    assert isinstance(progress, wire.Progress)
    assert progress.stats.requests_sent == 50 and progress.stats.latencies["accepted"] == []
    assert wire.decode(wire.encode(wire.Ready(pid=42))) == wire.Ready(42)
    for junk in (b"hello\n", b'{"ready": {}}\n', b'{"what": 1}\n', b"[1]\n", line[:40]):
        with pytest.raises(ProtocolError):
            wire.decode(junk)
    assert [wire.command(b"go\n"), wire.command(b"stop\n")] == ["go", "stop"]
    with pytest.raises(ProtocolError):
        wire.command(b"exit\n")


def test_a_worker_is_started_with_every_setting_as_a_flag_and_the_secrets_in_its_environment() -> None:
    settings = SimSettings(
        cps=30,
        drivers=4,
        processes=3,
        cp_prefix="BENCH-1",
        seed=None,
        join_token="join-secret",
        operator_token="operator-secret",
        json_path=None,
    )
    args, env = worker_command(settings, 2)
    assert not any("secret" in arg for arg in args)
    assert env["EVCHARGE_JOIN_TOKEN"] == "join-secret" and env["EVCHARGE_OPERATOR_TOKEN"] == "operator-secret"
    assert "EVCHARGE_KAFKA_PASSWORD" not in env and "EVCHARGE_SIM_SEED" not in env
    assert {"join_token", "operator_token"} <= set(SECRETS)
    command = typer.main.get_command(app)
    assert isinstance(command, typer.main.TyperGroup)
    params = command.commands["sim"].make_context("sim", args[1:]).params
    assert (params["worker"], params["processes"], params["cps"], params["cp_prefix"]) == (
        2,
        3,
        30,
        "BENCH-1",
    )
    assert params["duration_s"] == settings.duration_s and params["json_path"] is None


def test_the_bench_gives_the_simulator_a_worker_per_2000_cps_and_no_more_than_the_cores_and_one() -> None:
    from bench.load import sim_processes

    cap = (os.cpu_count() or 1) + 1
    assert [sim_processes(n) for n in (100, 1000, 2000)] == [1, 1, 1]
    assert sim_processes(5000) == min(3, cap)
    assert sim_processes(10_000) == min(5, cap)
    assert sim_processes(1_000_000) == cap


async def test_a_stop_from_the_parent_ends_a_worker_with_its_report_and_leaves_the_signals_alone(
    tmp_path,
) -> None:
    """A stop said on stdin is not a signal: the SIGTERM that may follow it (a terminal's Ctrl-C,
    the bench stopping a process group) is then the first, not a second that exits without a report."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"stop\n")
    os.close(write_end)
    out = io.BytesIO()
    settings = SimSettings(
        cps=4, drivers=0, processes=2, worker=2, kafka="127.0.0.1:1", state_dir=tmp_path, log_level="error"
    )
    with os.fdopen(read_end, "rb") as commands:
        link = ParentLink(2, out=out, commands=commands)
        simulation = Simulation(settings, Console(file=io.StringIO()), link)
        signalled = asyncio.Event()
        async with asyncio.timeout(30):
            code = await simulation.run(signalled)
    assert not signalled.is_set()
    assert code == EXIT_INTERRUPTED
    (line,) = out.getvalue().splitlines(keepends=True)
    report = wire.decode(line)
    assert isinstance(report, wire.Report)
    assert report.stats.interrupted and report.stats.cps == 2 and not report.stats.errors
    assert report.stats.process["cpu_s"] >= 0 and not report.crashed


class _Deaf(PooledSimulation):
    """Workers that say they are ready and then hear nothing: hung, as a stopped or wedged one is."""

    async def _start(self, worker) -> None:  # type: ignore[no-untyped-def]
        ready = wire.encode(wire.Ready(pid=0)).decode()
        script = f"import sys, time; sys.stdout.write({ready!r}); sys.stdout.flush(); time.sleep(600)"
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )


async def test_workers_that_do_not_stop_are_killed_and_the_run_ends_saying_so(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pool, "STOP_TIMEOUT_S", 0.5)
    settings = SimSettings(cps=4, drivers=0, processes=2, kafka="127.0.0.1:1", state_dir=tmp_path)
    simulation = _Deaf(settings, Console(file=io.StringIO()))
    stop = asyncio.Event()
    stop.set()  # stopped at once: each is told to stop, and neither does
    async with asyncio.timeout(30):
        await simulation._run_workers(stop)
    processes = [w.process for w in simulation.workers]
    assert all(p is not None and p.returncode is not None for p in processes), "none left running"
    said = [e for e in simulation.stats.errors if "did not stop" in e]
    assert len(said) == 2 and all("killed" in e for e in said), simulation.stats.errors


def test_memory_per_cp_is_taken_between_runs_on_as_many_simulator_processes() -> None:
    rows = [
        {"cps": 100, "started": 100, "sim_processes": 1, "sim_max_rss_mb": 60.0},
        {"cps": 1000, "started": 1000, "sim_processes": 1, "sim_max_rss_mb": 96.0},
        # Three interpreters: 2 x 60 MB more that no CP costs.
        {"cps": 5000, "started": 5000, "sim_processes": 3, "sim_max_rss_mb": 400.0},
    ]
    assert load.marginal_rss_per_cp(rows) == 0.04
    assert load.marginal_rss_per_cp(rows[1:]) is None
