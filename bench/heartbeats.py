"""What a heartbeat costs central: its CPU per heartbeat with many monitors heartbeating every second.

Each size gets a fresh central. Its idle CPU is measured first (no monitor yet:
Kafka polls, the lease, the watch), then `evcharge sim` registers that many CPs
(a real monitor over TCP checking a real engine health port each) and sends no
driver. Once every CP shows ON and the registrations are over, central's CPU and
its `heartbeats` counter are read across a steady window: the CPU beyond idle
over the heartbeats counted is the cost of one. The simulator's own CPU over the
same window is beside it: it runs every monitor and engine, so it shows who the
limit is. Central runs on uvloop, and once more on asyncio's own loop at the
first size, so the loop's share of the figure is measured, not assumed; with a
baseline (`--baseline REV`), a central of that revision runs at the first size
too, the same-run reference for what the changes since bought.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from bench import profile
from bench.load import LoadRunner, SimLoad, sim_processes
from bench.procs import cpu_s, kernel_cpu_s, rss_mb, tree_cpu_s
from bench.system import new_system
from evcharge.devtools import system as devsystem

GOAL_US = 30.0
IDLE_S = 3.0
SETTLE_S = 2.0
# Each look lists every CP, ≈ 10 ms of central's CPU per 1,000: looked at back to back, 10,000 CPs
# would keep central answering the bench instead of registering the monitors it is timed on.
ALL_ON_POLL_S = 1.0


def measure(
    runner: LoadRunner,
    sizes: list[int],
    window_s: float,
    say: Callable[[str], None],
    baseline: dict[str, str] | None = None,
    profiled: bool = True,
) -> dict[str, Any]:
    runs = []
    for n, size in enumerate(sizes):
        variants = {"uvloop": {"EVCHARGE_EVENT_LOOP": "uvloop"}}
        if n == 0:
            variants["asyncio"] = {"EVCHARGE_EVENT_LOOP": "asyncio"}
            if baseline is not None:
                variants["baseline"] = baseline
        for loop, env in variants.items():
            say(f"{size:,} monitors heartbeating every second, central: {loop}")
            try:
                runs.append(_one(runner, size, loop, env, window_s, profiled and loop == "uvloop"))
            except Exception as exc:
                say(f"[red]  failed: {exc!r}[/]")
                runs.append({"cps": size, "loop": loop, "error": repr(exc)})
                continue
            r = runs[-1]
            say(
                f"  {r['heartbeats_per_s']:,.0f} heartbeats/s: central {r['central_cpu_percent']} % CPU "
                f"(idle {r['central_idle_cpu_percent']} %), {r['us_per_heartbeat']} µs each; "
                f"simulator {r['sim_cpu_percent']} %"
            )
    return {"goal_us": GOAL_US, "window_s": window_s, "runs": runs}


def _one(
    runner: LoadRunner, size: int, loop: str, env: dict[str, str], window_s: float, profiled: bool
) -> dict[str, Any]:
    name = f"hb{size}{loop[:2]}"
    system = new_system(runner.root, runner.kafka, name)
    try:
        system.start_central(env=env)
        assert system.central is not None
        pid = system.central.pid
        idle_from, idle_cpu = time.monotonic(), cpu_s(pid)
        time.sleep(IDLE_S)
        idle_rate = _rate(idle_cpu, cpu_s(pid), time.monotonic() - idle_from)
        # Registrations at ~200/s, the steady window, and room to spare: the sim outlives the window.
        ramp_s = max(1.0, size / 500)
        processes = sim_processes(size)
        load: SimLoad = {
            "cps": size,
            "drivers": 0,
            "ramp_up_s": ramp_s,
            "duration_s": ramp_s + size / 100 + SETTLE_S + window_s + 60,
            "processes": processes,
        }
        sim, _ = runner.start_sim(system, name, load)
        try:
            # A fleet the simulator cannot carry never shows all ON: its window is measured all the
            # same, with how many were ON beside the figures, since where it breaks is a figure too.
            with contextlib.suppress(TimeoutError):
                devsystem.wait_for(
                    lambda: _all_on(system.view.get("/cp")[1], size),
                    timeout_s=30 + size / 100,
                    what=f"{size} CPs to show ON",
                    interval_s=ALL_ON_POLL_S,
                )
            time.sleep(SETTLE_S)  # the last registrations' commits and the first checks are over
            on_at_start = _on(system.view.get("/cp")[1]["charging_points"])
            started = time.monotonic()
            # The simulator's CPU is its process tree's: with --processes N its workers do the work.
            before = (cpu_s(pid), tree_cpu_s(sim.pid), _heartbeats(system.view.health()), kernel_cpu_s(pid))
            time.sleep(window_s)
            after = (cpu_s(pid), tree_cpu_s(sim.pid), _heartbeats(system.view.health()), kernel_cpu_s(pid))
            elapsed = time.monotonic() - started
            listed = system.view.get("/cp")[1]["charging_points"]
            central_rss = rss_mb(pid)
            # Where the time goes, central's and the busiest simulator process's: after the window,
            # not in it, so that py-spy's own sampling is not counted as central's work.
            profiles = (
                profile.central_and_sim(pid, sim.pid, runner.root / name).summaries()
                if profiled and pid is not None and sim.pid is not None
                else {}
            )
        finally:
            sim.stop()
    finally:
        system.stop_all()
    central_rate = _rate(before[0], after[0], elapsed)
    kernel_rate = _rate(before[3], after[3], elapsed)
    sim_rate = _rate(before[1], after[1], elapsed)
    # A central without the counter (a baseline's older revision): each monitor ON at the window's
    # start beats once a second. A counter that did not move is no heartbeat, not an estimate.
    estimated = before[2] is None or after[2] is None
    beats: float = on_at_start * elapsed if estimated else after[2] - before[2]  # type: ignore[operator]
    per_s = beats / elapsed
    net_cpu_s = (central_rate - idle_rate) * elapsed
    return {
        "cps": size,
        "loop": loop,
        "heartbeats_per_s": round(per_s, 1),
        **({"heartbeats_estimated": True} if estimated else {}),
        "central_cpu_percent": round(100 * central_rate, 1),
        "central_idle_cpu_percent": round(100 * idle_rate, 1),
        "us_per_heartbeat": round(1e6 * net_cpu_s / beats, 1) if beats else None,
        "us_per_heartbeat_gross": round(1e6 * central_rate * elapsed / beats, 1) if beats else None,
        # Of the gross: what the kernel spent for central (a wakeup, a recv and a send per heartbeat).
        "us_per_heartbeat_kernel": round(1e6 * kernel_rate * elapsed / beats, 1) if beats else None,
        "sim_cpu_percent": round(100 * sim_rate, 1),
        "sim_processes": processes,
        "sim_us_per_heartbeat": round(1e6 * sim_rate * elapsed / beats, 1) if beats else None,
        "central_rss_mb": central_rss,
        "on_at_start": on_at_start,
        "on_at_end": _on(listed),
        **{f"profile_{who}": summary for who, summary in profiles.items()},
    }


def _on(cps: list[dict[str, Any]]) -> int:
    return sum(1 for cp in cps if cp["status"] == "ON")


def _all_on(body: dict[str, Any], size: int) -> bool:
    return _on(body["charging_points"]) >= size


def _heartbeats(health: dict[str, Any]) -> int | None:
    """Central's count of heartbeats so far; None from a central that does not count them."""
    counters = health["counters"]
    return int(counters["heartbeats"]) if "heartbeats" in counters else None


def _rate(before: float | None, after: float | None, elapsed: float) -> float:
    if before is None or after is None or elapsed <= 0:
        raise RuntimeError("central's or the simulator's CPU could not be read")
    return (after - before) / elapsed
