"""Load through the fleet simulator: latency at a sustained rate, central's throughput (on SQLite
and on PostgreSQL), registration at scale.

Each run gets a central of its own (a fresh registry), and `evcharge sim` as a
real process beside it. While it runs, central is sampled every half second:
its applied-event counter (`GET /health`), its consumer lag on
`evcharge.cp.events` (end offsets minus its committed offsets), and the CPU and
memory of central, the simulator and the broker from /proc. A runner given
credentials runs its systems with security on, the simulator's monitors, engines
and drivers included.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loop import LoopThread
from bench.probe import LagProbe
from bench.procs import cpu_s, rss_mb, tree_cpu_s, tree_rss_mb
from bench.profile import Profiles, central_and_sim, start_profiler
from bench.series import drain_rate, drained, rates, whole_run
from bench.system import BenchSystem, new_system, wait_for
from evcharge.devtools.commands import child
from evcharge.devtools.kafka.secure import ADMIN
from evcharge.devtools.sim.settings import SimSettings
from evcharge.devtools.supervisor import Child
from evcharge.devtools.system import Credentials
from evcharge.runtime.kafka_access import Kafka, KafkaAccess
from evcharge.runtime.tls import TlsFiles

SAMPLE_S = 0.5
DRAIN_SAMPLE_S = 0.1
SIM_GRACE_S = 90.0  # start-up, the drivers' last tickets and the report, beyond the planned load
CPS_PER_SIM_PROCESS = 2000  # one simulator process saturates a core near this many CPs


def sim_processes(cps: int) -> int:
    """Worker processes for a fleet of `cps`: one per 2,000 CPs, at most one more than the cores
    (the workers, central and the broker share them: more would only add switching)."""
    return max(1, min((os.cpu_count() or 1) + 1, math.ceil(cps / CPS_PER_SIM_PROCESS)))


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

    def load(self, *, duration_s: float, session_s: float) -> SimLoad:
        """Every driver sends its first request within the first second, then charges `session_s`."""
        return {
            "cps": self.cps,
            "drivers": self.drivers,
            "request_rate": float(self.drivers),
            "ramp_up_s": 1.0,
            "duration_s": duration_s,
            "session_s": session_s,
            "meter_interval_s": self.meter_interval_s,
        }


# What a run asks of the simulator: SimSettings fields, the rest is the runner's.
SimLoad = dict[str, Any]


class LoadRunner:
    def __init__(
        self,
        root: Path,
        kafka: str,
        loop: LoopThread,
        broker_pid: int | None,
        credentials: Credentials | None = None,
    ) -> None:
        self.root = root
        self.kafka = kafka
        self.loop = loop
        self.broker_pid = broker_pid
        self.credentials = credentials
        self.lag = LagProbe(self.admin)
        self._lag_started = False
        self._runs = 0

    def close(self) -> None:
        if self._lag_started:
            self.loop.run(self.lag.close(), 15)

    @property
    def admin(self) -> Kafka:
        """How the bench's own clients and the simulator reach Kafka: on the secure broker as its
        admin, the one user allowed both the engines' and the drivers' topics and every group."""
        c = self.credentials
        if c is None or c.kafka_users is None:
            return self.kafka
        return KafkaAccess(self.kafka, ADMIN, c.kafka_users.password(ADMIN), TlsFiles(ca=c.ca))

    def _sim_security(self, system: BenchSystem) -> dict[str, Any]:
        c = self.credentials
        if c is None:
            return {}
        kafka = self.admin
        users = (
            {"kafka_user": kafka.user, "kafka_password": kafka.password}
            if isinstance(kafka, KafkaAccess)
            else {}
        )
        return {
            **users,
            "ca": c.ca,
            "join_token": c.join_token,
            "operator_token": c.operator_token,
            "sign_events": True,
            "state_dir": system.root / "sim-state",
        }

    def start_sim(self, system: BenchSystem, name: str, load: SimLoad) -> tuple[Child, Path]:
        if not self._lag_started:
            self.loop.run(self.lag.start(), 60)
            self._lag_started = True
        self._runs += 1
        report_path = system.root / "sim.json"
        url = urllib.parse.urlsplit(system.url)
        settings = SimSettings(
            kafka=self.kafka,
            central=((url.hostname or "127.0.0.1", system.tcp_port),),
            central_url=system.url,
            json_path=report_path,
            cp_prefix=f"{name.upper()}-{self._runs}",
            driver_prefix=f"{name}-{self._runs}-driver",
            seed=7,
            **self._sim_security(system),
            **load,
        )
        sim = child("sim", settings, system.logs / "sim.log", name=f"sim {name}").start()
        return sim, report_path

    def run_sim(
        self, name: str, load: SimLoad, planned_s: float, profile_at_s: float | None = None
    ) -> dict[str, Any]:
        """One simulator run against a fresh central; its JSON report and what was sampled meanwhile.
        With `profile_at_s`, central and the busiest simulator process are profiled from then on for
        PROFILE_S (the CPU figures of that stretch include py-spy's sampling)."""
        system = new_system(self.root, self.kafka, name, credentials=self.credentials)
        samples: list[dict[str, float]] = []
        profiles: Profiles | None = None
        try:
            system.start_central()
            sim, report_path = self.start_sim(system, name, load)
            try:
                central_pid = system.central.pid if system.central else None
                meters = _Meters(central_pid, sim.pid, self.broker_pid)
                deadline = time.monotonic() + planned_s + SIM_GRACE_S
                started = time.monotonic()
                while sim.alive and time.monotonic() < deadline:
                    samples.append(self._sample(system, meters, started))
                    due = profile_at_s is not None and time.monotonic() - started >= profile_at_s
                    if due and profiles is None and central_pid is not None and sim.pid is not None:
                        profiles = central_and_sim(central_pid, sim.pid, system.root)
                    time.sleep(SAMPLE_S)
                code = sim.wait(0) if not sim.alive else None
            finally:
                sim.stop()
            metrics = ""  # central's own histograms over the run ("" if it could not be scraped)
            with contextlib.suppress(Exception):
                metrics = system.view.text("/metrics")
            report = json.loads(report_path.read_text()) if report_path.exists() else {}
            return {
                "central_metrics": metrics,
                "exit_code": code,
                "report": report,
                "samples": samples,
                "log": str(system.logs),
                "profiles": profiles.summaries() if profiles is not None else {},
            }
        finally:
            if profiles is not None:
                profiles.stop()
            system.stop_all()

    def drain(
        self,
        step: Step,
        backlog_s: float,
        say: Say,
        profile: Path | None,
        *,
        name: str = "drain",
        store: str | None = None,
        store_pid: int | None = None,
    ) -> dict[str, Any]:
        """Central's own capacity: the rate at which it works off a backlog with the machine to itself.

        The simulator starts sessions at central, then central is stopped while the
        engines go on metering for `backlog_s`; the simulator is killed and central
        restarted alone. What it applies per second until it has caught up is what
        it can apply at most: no load generator shares the two cores meanwhile.
        `store` None is SQLite in the run's state dir, else a PostgreSQL URL, whose
        server (`store_pid`, its backends included) is metered beside central.
        """
        # Restarted, central need not wait for monitors that are gone for good.
        system = new_system(
            self.root,
            self.kafka,
            name,
            store=store,
            central_overrides={"startup_grace_s": 0.0},
            credentials=self.credentials,
        )
        samples: list[dict[str, float]] = []
        profiler: subprocess.Popen[bytes] | None = None
        try:
            system.start_central()
            long_s = 120  # sessions and load far longer than the measurement: nothing ends meanwhile
            sim, _ = self.start_sim(system, name, step.load(duration_s=long_s, session_s=long_s))
            try:
                wait_for(
                    lambda: system.view.health()["sessions_in_progress"] >= 0.8 * step.drivers,
                    "the simulator's sessions to start",
                    60,
                )
                assert system.central is not None
                system.central.stop()
                say(f"central stopped; the simulator's engines meter on for {backlog_s:g} s")
                time.sleep(backlog_s)
            finally:
                sim.kill()
            before = self.loop.run(self.lag.sample(), 10)
            backlog = before["written"] - before["committed"]
            say(f"backlog of {backlog:,} records; central restarted alone")
            restarted = time.monotonic()
            system.central.start()
            meters = _Meters(system.central.pid, None, self.broker_pid, store_pid)
            system.wait_central()  # py-spy attaches to a running interpreter, not to one starting up
            profiled_from = time.monotonic()
            if profile is not None:
                profiler = start_profiler(system.central.pid, profile)  # type: ignore[arg-type]
            while time.monotonic() - restarted < 120:
                row = self._sample(system, meters, restarted)
                samples.append(row)
                if drained(samples):
                    break
                time.sleep(DRAIN_SAMPLE_S)
            profiled_s = time.monotonic() - profiled_from
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl-C
                profiler.wait(30)
                profiler = None
            return {
                "store": "postgresql" if store else "sqlite",
                # evcharge.runtime.sqlite opens every role's file so: an fsync per commit.
                **({} if store else {"sqlite_synchronous": "FULL"}),
                "drivers": step.drivers,
                "meter_interval_s": step.meter_interval_s,
                "backlog_s": backlog_s,
                "backlog_records": backlog,
                "profiled_s": round(profiled_s, 2),
                **drain_rate(samples),
            }
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
            row.update(self.loop.run(self.lag.sample(), 5))
        row.update(meters.read())
        return row


class _Meters:
    """CPU seconds and RSS of central, the simulator, the broker (and PostgreSQL) at one instant."""

    def __init__(
        self, central: int | None, sim: int | None, broker: int | None, postgres: int | None = None
    ) -> None:
        self.pids = {"central": central, "sim": sim, "broker": broker, "postgres": postgres}

    def read(self) -> dict[str, float]:
        row: dict[str, float] = {}
        for name, pid in self.pids.items():
            if pid is None:
                continue
            # PostgreSQL works in a backend per connection, the simulator in its worker processes
            # (--processes N): their CPU is the whole tree's.
            cpu = tree_cpu_s(pid) if name in ("postgres", "sim") else cpu_s(pid)
            rss = tree_rss_mb(pid) if name == "sim" else rss_mb(pid)
            if cpu is not None:
                row[f"{name}_cpu_s"] = cpu
            if rss is not None:
                row[f"{name}_rss_mb"] = round(rss, 1)
        return row


# ------------------------------------------------------------------ analysis


Say = Callable[[str], None]


def sustained_latency(runner: LoadRunner, quick: bool, say: Say) -> dict[str, Any]:
    """Request latency while the simulator's drivers keep sending at a steady rate."""
    duration = 10 if quick else 20
    rate = 20
    load: SimLoad = {
        "cps": 200,
        "drivers": 200,
        "request_rate": float(rate),
        "ramp_up_s": 3.0,
        "duration_s": float(duration),
        "session_s": 3.0,
        "meter_interval_s": 1.0,
    }
    say(f"sim: 200 CPs, 200 drivers, {rate} requests/s for {duration} s")
    run = runner.run_sim("sustained", load, planned_s=3 + duration)
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


def throughput(
    runner: LoadRunner, steps: list[Step], drain: Step, backlog_s: float, say: Say, profile: Path | None
) -> dict[str, Any]:
    """Live: offered readings raised step by step while central keeps up. Then its capacity, alone."""
    rows: list[dict[str, Any]] = []
    for n, step in enumerate(steps):
        say(
            f"step {n + 1}: {step.drivers} sessions, a reading every {step.meter_interval_s:g} s "
            f"(≈ {step.target_per_s:.0f}/s)"
        )
        try:
            run = runner.run_sim(
                f"tput{n + 1}", step.load(duration_s=10.0, session_s=STEP_SESSION_S), planned_s=STEP_PLANNED_S
            )
        except Exception as exc:  # a failed step ends the steps; the capacity run still runs
            say(f"[red]  step {n + 1} failed: {exc!r}[/]")
            rows.append({"drivers": step.drivers, "target_per_s": step.target_per_s, "error": repr(exc)})
            break
        row = {
            "drivers": step.drivers,
            "cps": step.cps,
            "meter_interval_s": step.meter_interval_s,
            "target_per_s": step.target_per_s,
            **rates(run["samples"]),
            "sim_errors": run["report"].get("errors", {}).get("total"),
            "sim_loop_lag_p99_s": run["report"].get("sim_loop_lag_s", {}).get("p99"),
        }
        # The simulator's one meter clock awaits every send: past some rate it cannot offer more.
        row["sim_bound"] = row.get("offered_per_s", 0) < 0.8 * step.target_per_s
        rows.append(row)
        say(
            f"  offered {row.get('offered_per_s')}/s, applied {row.get('applied_per_s')}/s, "
            f"lag {row.get('lag_start')}→{row.get('lag_end')}, "
            f"central CPU {row.get('central_cpu_percent')} %, sim CPU {row.get('sim_cpu_percent')} %"
        )
        if not row.get("keeping_up", False) or row["sim_bound"]:
            break
    sustained = [r["applied_per_s"] for r in rows if r.get("keeping_up")]
    steady = _confirm_steady(runner, rows, say) if sustained else None
    say(f"capacity: {drain.drivers} sessions metering while central is stopped for {backlog_s:g} s")
    try:
        drained = runner.drain(drain, backlog_s, say, None)
    except Exception as exc:
        say(f"[red]  the capacity run failed: {exc!r}[/]")
        drained = {"store": "sqlite", "error": repr(exc)}
    if profile is not None and "error" not in drained:
        # Where the time goes, from a second backlog of the same size: py-spy's sampling shares
        # the two cores with central, so the figure above is taken without it.
        say("the same backlog again, central profiled")
        try:
            profiled = runner.drain(drain, backlog_s, say, profile, name="drain-profiled")
            drained["profiled"] = {key: profiled.get(key) for key in ("applied_per_s", "profiled_s")}
        except Exception as exc:
            drained["profiled"] = {"error": repr(exc)}
    return {
        "steps": rows,
        "max_sustained_applied_per_s": max(sustained) if sustained else None,
        "limited_by": _limit(rows),
        **({"steady_minute": steady} if steady is not None else {}),
        "drain": drained,
    }


# Sessions outlast the drivers' sending (10 s), so the plateau holds from when the
# last first request was answered until the first sessions end.
STEP_SESSION_S = 12
STEP_PLANNED_S = 1 + 10 + STEP_SESSION_S
# The best step again, its sessions a minute long: a rate is sustainable only if the backlog
# does not grow over a minute of it, which a step's 10 s cannot show.
STEADY_SESSION_S = 62


def _confirm_steady(runner: LoadRunner, rows: list[dict[str, Any]], say: Say) -> dict[str, Any]:
    best = max((r for r in rows if r.get("keeping_up")), key=lambda r: r["applied_per_s"])
    step = Step(best["drivers"], best["meter_interval_s"])
    say(f"the best step ({step.target_per_s:.0f}/s) held for a minute: is it sustainable?")
    try:
        run = runner.run_sim(
            "steady",
            step.load(duration_s=10.0, session_s=STEADY_SESSION_S),
            planned_s=1 + 10 + STEADY_SESSION_S,
        )
    except Exception as exc:
        say(f"[red]  the minute failed: {exc!r}[/]")
        return {"target_per_s": step.target_per_s, "error": repr(exc)}
    row = {"drivers": step.drivers, "target_per_s": step.target_per_s, **rates(run["samples"])}
    say(
        f"  offered {row.get('offered_per_s')}/s, applied {row.get('applied_per_s')}/s over "
        f"{row.get('window_s')} s, backlog {row.get('lag_start')}→{row.get('lag_end')} "
        f"({row.get('lag_growth_per_s')}/s)"
    )
    return row


def _limit(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no step ran"
    last = rows[-1]
    if last.get("error"):
        return f"not known: the step at {last['target_per_s']:.0f}/s failed"
    if not last.get("keeping_up", False):
        return "central (its backlog grew)"
    if last.get("sim_bound"):
        offered = last.get("offered_per_s")
        return f"the simulator (it offered {offered} of the {last['target_per_s']:.0f}/s asked)"
    return "not reached: central kept up with the highest step"


def scale(runner: LoadRunner, sizes: list[int], say: Say) -> dict[str, Any]:
    """CPs joining all at once: how fast central shows them ON, errors, memory per simulated CP."""
    rows = []
    for size in sizes:
        duration = max(5, min(45, size // 100))
        say(f"{size} CPs at once (load {duration} s)")
        processes = sim_processes(size)
        load: SimLoad = {
            "cps": size,
            "drivers": 0,
            "ramp_up_s": 0.0,
            "duration_s": float(duration),
            "processes": processes,
        }
        run = runner.run_sim(f"scale{size}", load, planned_s=duration)
        report = run["report"]
        cps = report.get("cps", {})
        process = report.get("sim_process", {})
        rss = process.get("max_rss_mb")
        rows.append(
            {
                "cps": size,
                "started": cps.get("started"),
                "registered": cps.get("registered"),
                "registration_s": cps.get("registration_s"),
                "registrations_per_s": cps.get("registrations_per_s"),
                "errors": report.get("errors", {}).get("total"),
                "errors_by_kind": report.get("errors", {}).get("by_kind"),
                "sim_exit_code": run["exit_code"],
                "sim_processes": processes,
                # Every process of the simulator: its workers and the parent, user + system seconds.
                "sim_cpu_s": process.get("cpu_s"),
                "sim_busiest_process_percent": _busiest(report),
                "sim_max_rss_mb": rss,
                "rss_per_cp_mb": round(rss / (cps.get("started") or size), 3) if rss else None,
                **whole_run(run["samples"]),
            }
        )
        # A simulator process runs its monitors and engines on one loop: past about a core's
        # worth, its own checks and heartbeats run late and the errors are the simulator's.
        busiest = rows[-1]["sim_busiest_process_percent"] or 0
        rows[-1]["sim_saturated"] = busiest >= 90 or (cps.get("started") or 0) < size
        say(
            f"  {cps.get('registered')} registered in {cps.get('registration_s')} s, "
            f"errors {rows[-1]['errors']}"
        )
    return {"runs": rows, "marginal_rss_per_cp_mb": marginal_rss_per_cp(rows)}


def marginal_rss_per_cp(rows: list[dict[str, Any]]) -> float | None:
    """What one more simulated CP costs in memory: between the smallest and the biggest run on
    the same number of simulator processes (another process is another interpreter, not CPs)."""
    spans = []
    for processes in {r.get("sim_processes") for r in rows}:
        same = [r for r in rows if r.get("sim_processes") == processes and r.get("sim_max_rss_mb")]
        if len(same) >= 2:
            small, big = same[0], same[-1]
            started = (big.get("started") or big["cps"]) - (small.get("started") or small["cps"])
            if started > 0:
                spans.append((started, (big["sim_max_rss_mb"] - small["sim_max_rss_mb"]) / started))
    return round(max(spans)[1], 3) if spans else None


def _busiest(report: dict[str, Any]) -> float | None:
    """The highest share of a core any one simulator process used over its run."""
    workers = [w for w in report.get("sim_workers", []) if w.get("name") != "parent"]
    shares = [w.get("cpu_percent") for w in workers] or [report.get("sim_process", {}).get("cpu_percent")]
    known = [s for s in shares if s is not None]
    return max(known) if known else None
