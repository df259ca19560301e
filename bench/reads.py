"""Many dashboards polling `GET /cp` while central goes on deciding: answers/s, their latency, and
what the decisions and heartbeats beside them felt.

A fresh central gets `cps` CPs from `evcharge sim` (real monitors heartbeating
every second, no drivers). The bench's own driver (`Prober`) then charges at
those CPs one request after another, first with no dashboard (the same-run
reference), then while `bench.poll` runs that many clients asking for the whole
list back to back. Central's CPU over each window, its heartbeats counted, and
the CPs still ON are read beside them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.load import LoadRunner, SimLoad
from bench.loop import LoopThread
from bench.probe import ProbeFailed, Prober
from bench.procs import cpu_s
from bench.stats import summary
from bench.system import BenchSystem, new_system, wait_for

GOALS = {"answers_per_s": 1000, "p99_s": 0.050, "cpu_ms_per_answer": 1.0}


def measure(
    runner: LoadRunner,
    loop: LoopThread,
    cps: int,
    clients: int,
    window_s: float,
    say: Callable[[str], None],
    env: dict[str, str] | None = None,
    name: str = "reads",
) -> dict[str, Any]:
    """`env` for central: a baseline revision's (`--baseline`) is the same-run reference."""
    system = new_system(runner.root, runner.kafka, name)
    prober: Prober | None = None
    try:
        system.start_central(env=env)
        load: SimLoad = {"cps": cps, "drivers": 0, "ramp_up_s": cps / 500, "duration_s": 4 * window_s + 120}
        sim, _ = runner.start_sim(system, name, load)
        try:
            wait_for(lambda: _on(system) >= cps, f"{cps} CPs to show ON", timeout_s=30 + cps / 50)
            targets = [c["cp_id"] for c in system.view.get("/cp")[1]["charging_points"]][:20]
            prober = Prober(runner.kafka, system.ident("reads-probe"))
            loop.run(prober.start(), 60)
            loop.run(prober.charge(targets[0]), 60)  # the first request pays for metadata: not counted
            say(f"  {cps:,} CPs ON; decisions with no dashboard for {window_s:g} s")
            quiet = _window(system, loop, prober, targets, window_s, poll=None)
            say(f"  … and with {clients} clients polling GET /cp")
            url = f"{system.url}/cp"
            loaded = _window(system, loop, prober, targets, window_s, poll=(url, clients))
        finally:
            sim.stop()
    finally:
        if prober is not None:
            loop.run(prober.close(), 30)
        system.stop_all()
    poll = loaded.pop("poll")
    answers = poll.get("answers") or 0
    extra_cpu_s = (loaded["central_cpu_percent"] - quiet["central_cpu_percent"]) / 100 * poll["seconds"]
    return {
        "cps": cps,
        "clients": clients,
        "window_s": window_s,
        "goals": GOALS,
        "poll": poll,
        "central_ms_per_answer": round(1000 * extra_cpu_s / answers, 3) if answers else None,
        "quiet": quiet,
        "loaded": loaded,
    }


def _window(
    system: BenchSystem,
    loop: LoopThread,
    prober: Prober,
    targets: list[str],
    window_s: float,
    poll: tuple[str, int] | None,
) -> dict[str, Any]:
    assert system.central is not None
    pid = system.central.pid
    poller = None
    if poll is not None:
        url, clients = poll
        poller = subprocess.Popen(
            [sys.executable, "-m", "bench.poll", url, str(clients), str(window_s)],
            stdout=subprocess.PIPE,
        )
    started, cpu_before, beats_before = time.monotonic(), cpu_s(pid), _heartbeats(system)
    accepted: list[float] = []
    failed = 0
    n = 0
    while time.monotonic() - started < window_s:
        try:
            charge = loop.run(prober.charge(targets[n % len(targets)]), 30)
            if charge.accepted_s is not None:
                accepted.append(charge.accepted_s)
        except ProbeFailed:
            failed += 1
        n += 1
    out: dict[str, Any] = {}
    if poller is not None:
        stdout, _ = poller.communicate(timeout=60)
        out["poll"] = json.loads(stdout)
    elapsed = time.monotonic() - started
    cpu_after, beats_after = cpu_s(pid), _heartbeats(system)
    assert cpu_before is not None and cpu_after is not None
    out.update(
        {
            "accepted_s": summary(accepted),
            "requests_failed": failed,
            "central_cpu_percent": round(100 * (cpu_after - cpu_before) / elapsed, 1),
            "heartbeats_per_s": None
            if beats_before is None or beats_after is None
            else round((beats_after - beats_before) / elapsed, 1),
            "cps_on": _on(system),
        }
    )
    return out


def _on(system: BenchSystem) -> int:
    """CPs whose monitor is there (ON, or supplying the bench's own request)."""
    listed = system.view.get("/cp")[1]["charging_points"]
    return sum(1 for c in listed if c["status"] in ("ON", "SUPPLYING"))


def _heartbeats(system: BenchSystem) -> int | None:
    """None from a central that does not count them (a baseline older than the counter)."""
    counted = system.view.health()["counters"].get("heartbeats")
    return None if counted is None else int(counted)
