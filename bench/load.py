"""Load through the fleet simulator: latency at a sustained rate, central's throughput, registration at scale.

Each run gets a central of its own (a fresh registry), and `evcharge sim` as a
real process beside it. While it runs, central is sampled every half second:
its applied-event counter (`GET /health`), its consumer lag on
`evcharge.cp.events` (end offsets minus its committed offsets), and the CPU and
memory of central, the simulator and the broker from /proc.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loop import LoopThread
from bench.probe import LagProbe
from bench.procs import cpu_s, rss_mb
from bench.system import BenchSystem, new_system
from evcharge.supervisor import Child

SAMPLE_S = 0.5
SIM_GRACE_S = 90.0  # start-up, the drivers' last tickets and the report, beyond the planned load


@dataclass(frozen=True)
class Step:
    drivers: int
    meter_interval_s: float

    @property
    def cps(self) -> int:
        return 2 * self.drivers  # room to spare: few requests find their CP busy

    @property
    def target_per_s(self) -> float:
        return self.drivers / self.meter_interval_s


class LoadRunner:
    def __init__(self, root: Path, kafka: str, loop: LoopThread, broker_pid: int | None) -> None:
        self.root = root
        self.kafka = kafka
        self.loop = loop
        self.broker_pid = broker_pid
        self.lag = LagProbe(kafka)
        self._lag_started = False
        self._runs = 0

    def close(self) -> None:
        if self._lag_started:
            self.loop.run(self.lag.close(), 15)

    def run_sim(
        self, name: str, sim_args: list[str], planned_s: float, profile: Path | None = None
    ) -> dict[str, Any]:
        """One simulator run against a fresh central; its JSON report and what was sampled meanwhile."""
        if not self._lag_started:
            self.loop.run(self.lag.start(), 60)
            self._lag_started = True
        self._runs += 1
        system = new_system(self.root, self.kafka, name)
        report_path = system.root / "sim.json"
        samples: list[dict[str, float]] = []
        profiler: subprocess.Popen[bytes] | None = None
        try:
            system.start_central()
            sim = Child(
                f"sim {name}",
                [
                    "sim",
                    "--kafka",
                    self.kafka,
                    "--central",
                    f"127.0.0.1:{system.tcp_port}",
                    "--central-url",
                    system.url,
                    "--json",
                    str(report_path),
                    "--cp-prefix",
                    f"{name.upper()}-{self._runs}",
                    "--driver-prefix",
                    f"{name}-{self._runs}-driver",
                    "--seed",
                    "7",
                    *sim_args,
                ],
                system.logs / "sim.log",
            ).start()
            try:
                meters = _Meters(system.central.pid if system.central else None, sim.pid, self.broker_pid)
                deadline = time.monotonic() + planned_s + SIM_GRACE_S
                started = time.monotonic()
                while sim.alive and time.monotonic() < deadline:
                    samples.append(self._sample(system, meters, started))
                    if profile is not None and profiler is None and _steady(samples):
                        profiler = _start_profiler(system.central.pid, profile)  # type: ignore[union-attr]
                    time.sleep(SAMPLE_S)
                code = sim.wait(0) if not sim.alive else None
            finally:
                sim.stop()
            if profiler is not None:
                profiler.wait(30)
                profiler = None
            report = json.loads(report_path.read_text()) if report_path.exists() else {}
            return {"exit_code": code, "report": report, "samples": samples, "log": str(system.logs)}
        finally:
            if profiler is not None:
                profiler.kill()
                profiler.wait(10)
            system.stop_all()

    def _sample(self, system: BenchSystem, meters: _Meters, started: float) -> dict[str, float]:
        row: dict[str, float] = {"t": round(time.monotonic() - started, 3)}
        try:
            health = system.view.health()
            row["applied"] = health["counters"].get("events_applied", 0)
            row["sessions"] = health["sessions_in_progress"]
        except (OSError, KeyError, ValueError):
            pass
        # A missed lag sample is a gap in the series, not a failed run.
        with contextlib.suppress(Exception):
            row["written"], row["committed"] = self.loop.run(self.lag.sample(), 5)
        row.update(meters.read())
        return row


class _Meters:
    """CPU seconds and RSS of central, the simulator and the broker at one instant."""

    def __init__(self, central: int | None, sim: int | None, broker: int | None) -> None:
        self.pids = {"central": central, "sim": sim, "broker": broker}

    def read(self) -> dict[str, float]:
        row: dict[str, float] = {}
        for name, pid in self.pids.items():
            cpu, rss = cpu_s(pid), rss_mb(pid)
            if cpu is not None:
                row[f"{name}_cpu_s"] = cpu
            if rss is not None:
                row[f"{name}_rss_mb"] = round(rss, 1)
        return row


def _steady(samples: list[dict[str, float]]) -> bool:
    """Sessions have stopped growing: the load is at its plateau (profile that, not the ramp)."""
    sessions = [s.get("sessions", 0) for s in samples[-4:]]
    return len(sessions) == 4 and sessions[0] > 0 and max(sessions) - min(sessions) <= 0.05 * max(sessions)


def _start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    py_spy = profiler_path()
    if py_spy is None:
        return None
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--duration", "8", "--rate", "100", "--nonblocking",
         "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def profiler_path() -> str | None:
    import sys

    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


# ------------------------------------------------------------------ analysis


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


Say = Callable[[str], None]


def sustained_latency(runner: LoadRunner, quick: bool, say: Say) -> dict[str, Any]:
    """Request latency while the simulator's drivers keep sending at a steady rate."""
    duration = 10 if quick else 20
    rate = 20
    args = ["--cps", "200", "--drivers", "200", "--request-rate", str(rate), "--ramp-up", "3",
            "--duration", str(duration), "--session-seconds", "3", "--meter-interval", "1"]  # fmt: skip
    say(f"sim: 200 CPs, 200 drivers, {rate} requests/s for {duration} s")
    run = runner.run_sim("sustained", args, planned_s=3 + duration)
    report = run["report"]
    return {
        "request_rate_per_s": rate,
        "settings": "200 CPs, 200 drivers, 3 s sessions, 1 s meter interval",
        "latency_s": report.get("latency_s", {}),
        "requests": report.get("requests", {}),
        "errors": report.get("errors", {}),
        "sim_exit_code": run["exit_code"],
        "sim_loop_lag_s": report.get("sim_loop_lag_s", {}),
        **whole_run(run["samples"]),
    }


def throughput(runner: LoadRunner, steps: list[Step], say: Say, profile: Path | None) -> dict[str, Any]:
    """Offered meter readings raised step by step until central's backlog grows (or the sim tops out)."""
    rows: list[dict[str, Any]] = []
    for n, step in enumerate(steps):
        args = _step_args(step)
        say(
            f"step {n + 1}: {step.drivers} sessions, a reading every {step.meter_interval_s:g} s "
            f"(≈ {step.target_per_s:.0f}/s)"
        )
        last = n == len(steps) - 1
        run = runner.run_sim(f"tput{n + 1}", args, planned_s=STEP_PLANNED_S)
        row = {
            "drivers": step.drivers,
            "cps": step.cps,
            "meter_interval_s": step.meter_interval_s,
            "target_per_s": step.target_per_s,
            **rates(run["samples"]),
            "sim_errors": run["report"].get("errors", {}).get("total"),
            "sim_loop_lag_p99_s": run["report"].get("sim_loop_lag_s", {}).get("p99"),
        }
        row["sim_bound"] = (
            row.get("sim_cpu_percent", 0) >= 90 and row.get("offered_per_s", 0) < 0.8 * step.target_per_s
        )
        rows.append(row)
        say(
            f"  offered {row.get('offered_per_s')}/s, applied {row.get('applied_per_s')}/s, "
            f"lag {row.get('lag_start')}→{row.get('lag_end')}, "
            f"central CPU {row.get('central_cpu_percent')} %, "
            f"sim CPU {row.get('sim_cpu_percent')} %"
        )
        if not row.get("keeping_up", False) or row["sim_bound"] or last:
            break
    sustained = [r["applied_per_s"] for r in rows if r.get("keeping_up")]
    result: dict[str, Any] = {
        "steps": rows,
        "max_sustained_applied_per_s": max(sustained) if sustained else None,
        "peak_applied_per_s": max((r.get("applied_per_s", 0) for r in rows), default=None),
        "limited_by": _limit(rows),
    }
    if profile is not None and rows:
        top = max(rows, key=lambda r: r.get("applied_per_s", 0))
        step = Step(top["drivers"], top["meter_interval_s"])
        say(f"profiling central with py-spy at {step.target_per_s:.0f}/s offered")
        run = runner.run_sim("profile", _step_args(step), planned_s=STEP_PLANNED_S, profile=profile)
        result["profile_run"] = rates(run["samples"])
    return result


# Sessions outlast the drivers' sending (10 s): every driver asks once, and the plateau
# holds from when the last first request was answered until the first sessions end.
STEP_SESSION_S = 12
STEP_PLANNED_S = 1 + 10 + STEP_SESSION_S


def _step_args(step: Step) -> list[str]:
    return ["--cps", str(step.cps), "--drivers", str(step.drivers), "--request-rate", str(step.drivers),
            "--ramp-up", "1", "--duration", "10", "--session-seconds", str(STEP_SESSION_S),
            "--meter-interval", str(step.meter_interval_s)]  # fmt: skip


def _limit(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no step ran"
    last = rows[-1]
    if not last.get("keeping_up", False):
        return "central (its backlog grew)"
    if last.get("sim_bound"):
        return "the simulator (near 100 % CPU, below the offered target)"
    return "not reached: the highest step was kept up with"


def scale(runner: LoadRunner, sizes: list[int], say: Say) -> dict[str, Any]:
    """CPs joining all at once: how fast central shows them ON, errors, memory per simulated CP."""
    rows = []
    for size in sizes:
        duration = max(5, min(45, size // 100))
        say(f"{size} CPs at once (load {duration} s)")
        run = runner.run_sim(
            f"scale{size}",
            ["--cps", str(size), "--drivers", "0", "--ramp-up", "0", "--duration", str(duration)],
            planned_s=duration,
        )
        report = run["report"]
        cps = report.get("cps", {})
        process = report.get("sim_process", {})
        rss = process.get("max_rss_mb")
        rows.append(
            {
                "cps": size,
                "registered": cps.get("registered"),
                "registration_s": cps.get("registration_s"),
                "registrations_per_s": cps.get("registrations_per_s"),
                "errors": report.get("errors", {}).get("total"),
                "errors_by_kind": report.get("errors", {}).get("by_kind"),
                "sim_exit_code": run["exit_code"],
                "sim_max_rss_mb": rss,
                "rss_per_cp_mb": round(rss / size, 3) if rss else None,
                **whole_run(run["samples"]),
            }
        )
        say(
            f"  {cps.get('registered')} registered in {cps.get('registration_s')} s, "
            f"errors {rows[-1]['errors']}"
        )
    marginal = None
    with_rss = [r for r in rows if r.get("sim_max_rss_mb")]
    if len(with_rss) >= 2:
        small, big = with_rss[0], with_rss[-1]
        marginal = round((big["sim_max_rss_mb"] - small["sim_max_rss_mb"]) / (big["cps"] - small["cps"]), 3)
    return {"runs": rows, "marginal_rss_per_cp_mb": marginal}
