"""`python -m bench.run [--quick] [--trials N] [--out FILE]`: measure, print the table, save the JSON.

Everything runs on this machine in one go: its own Kafka on free ports in a temp
dir, its own central, CPs, drivers and simulators as real processes, its own
PostgreSQL for the store comparison, all stopped at the end whatever happens.
Order of the phases: footprint, the Kafka floor, low-load latency, detection and
recovery (Kafka last among them), the OCPP gateway, then the simulator's runs: sustained latency,
throughput steps and central's capacity on SQLite, the stores (bare commit rates,
central's capacity on PostgreSQL), two centrals failing over, scale, heartbeats, the whole fleet's
load, reads, and last the cost of security (a secure broker of its own beside the first). A phase
that fails is recorded as failed (its "error") and the run goes on with the next; only Kafka not
starting ends it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from bench import (
    chaos,
    failover,
    fleet,
    footprint,
    gateway,
    growth,
    heartbeats,
    latency,
    load,
    profile,
    reads,
    report,
    security,
    storage,
)
from bench.loop import LoopThread
from bench.probe import Prober
from bench.procs import machine, rss_mb
from bench.system import BenchSystem, new_system
from evcharge.devtools.kafka import KAFKA_VERSION, LocalBroker
from evcharge.logs import setup_logging
from evcharge.runtime.ports import free_ports

_T = TypeVar("_T")

SECTIONS = (
    "footprint", "floor", "main", "sustained", "throughput", "storage", "failover", "scale", "heartbeats",
    "fleet", "reads", "gateway", "security",
)  # fmt: skip
# Sections that, run alone (`--only`), are written into the existing --out file beside the
# figures of the other sections, which stay as their last run measured them. (Not those that
# share the `latency` figure: floor, main and sustained are run together or anew.)
MERGED_SECTIONS = frozenset(
    {"footprint", "throughput", "storage", "scale", "heartbeats", "fleet", "reads", "security", "failover"}
)


@dataclass(frozen=True)
class Plan:
    trials: int
    footprint_reps: int
    floor_samples: int
    accepted_samples: int
    reading_samples: int
    steps: list[load.Step] = field(default_factory=list)
    drain: load.Step = field(default_factory=lambda: load.Step(200, 0.05))
    backlog_s: float = 12.0
    scale_sizes: list[int] = field(default_factory=list)
    heartbeat_sizes: list[int] = field(default_factory=list)
    heartbeat_window_s: float = 10.0
    fleet_sizes: list[int] = field(default_factory=list)  # the whole load at once, scaled to each
    reads_window_s: float = 10.0
    commit_rounds: int = 5  # bare commit rates: rounds per database (SQLite alternates FULL and NORMAL)
    commit_round_s: float = 2.0
    gateway_chargers: int = 1000  # on one gateway process, and in its reconnect storm
    gateway_metering: int = 100  # of them metering as fast as they are answered
    quick: bool = False

    @classmethod
    def make(cls, quick: bool, trials: int | None) -> Plan:
        if quick:
            return cls(
                trials=trials or 3,
                footprint_reps=1,
                floor_samples=100,
                accepted_samples=40,
                reading_samples=6,
                steps=[load.Step(100, 0.1), load.Step(200, 0.05)],
                backlog_s=6.0,
                scale_sizes=[100, 1000],
                heartbeat_sizes=[1000, 2000],
                heartbeat_window_s=5.0,
                fleet_sizes=[1000],
                reads_window_s=6.0,
                commit_rounds=3,
                commit_round_s=1.0,
                gateway_metering=50,
                quick=True,
            )
        return cls(
            trials=trials or 5,
            footprint_reps=3,
            floor_samples=300,
            accepted_samples=100,
            reading_samples=20,
            steps=[load.Step(100, 0.1), load.Step(200, 0.1), load.Step(200, 0.05), load.Step(400, 0.05)],
            scale_sizes=[100, 1000, 5000],
            heartbeat_sizes=[1000, 2000, 5000, 10000],  # the growth curve of central's CPU and memory
            fleet_sizes=[2000, 5000, 10000],
        )


class Bench:
    def __init__(
        self,
        plan: Plan,
        root: Path,
        console: Console,
        profile_central: bool,
        only: frozenset[str] = frozenset(),
    ) -> None:
        self.plan = plan
        self.only = only  # the sections to run; empty: all of them
        self.baseline = ""  # a git revision whose central runs beside this one's, where a section says
        self.root = root
        self.console = console
        self.profile_central = profile_central
        self.gateway_only = False
        self.started = time.monotonic()
        self.results: dict[str, Any] = {
            "machine": machine(),
            "kafka_version": KAFKA_VERSION,
            "mode": "quick" if plan.quick else "full",
            "plan": {
                "trials": plan.trials,
                "steps": [[s.drivers, s.meter_interval_s] for s in plan.steps],
                "drain": [plan.drain.drivers, plan.drain.meter_interval_s, plan.backlog_s],
                "scale_sizes": plan.scale_sizes,
                "heartbeat_sizes": plan.heartbeat_sizes,
                "fleet_sizes": plan.fleet_sizes,
                "commit_rounds": [plan.commit_rounds, plan.commit_round_s],
                "gateway": [plan.gateway_chargers, plan.gateway_metering],
            },
            "phases_s": {},
        }
        self.loop = LoopThread()
        self.broker: LocalBroker | None = None
        self.systems: list[BenchSystem] = []
        self.prober: Prober | None = None
        self.runner: load.LoadRunner | None = None

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.started:6.1f} s[/]  {text}", highlight=False)

    def phase(self, name: str, work: Callable[[], _T]) -> _T:
        self.say(f"[bold]{name}[/]")
        started = time.monotonic()
        try:
            return work()
        finally:
            self.results["phases_s"][name] = round(time.monotonic() - started, 1)

    def measure(self, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """A phase whose failure becomes its figure ({"error": ...}); the run goes on."""
        try:
            return self.phase(name, work)
        except Exception as exc:
            self.say(f"[red]{name} failed: {exc!r}[/]")
            return {"error": repr(exc)}

    def run(self) -> None:
        plan = self.plan
        port, controller_port = free_ports(2)
        # die_with_parent: a bench killed outright (SIGKILL) takes its broker with it.
        self.broker = LocalBroker(
            data_dir=self.root / "kafka", port=port, controller_port=controller_port, die_with_parent=True
        )
        started = self.phase("kafka", lambda: self.broker.start(timeout_s=180, progress=self.say))  # type: ignore[union-attr]
        kafka = self.broker.bootstrap
        broker = {
            "start_s": started.start_s,
            "rss_mb": rss_mb(started.status.pid),
            "fetch_s": started.fetch_s,
        }
        if self.gateway_only:
            self._gateway(kafka)
            return

        if self.wants("footprint"):
            self.results["footprint"] = self.measure(
                "footprint",
                lambda: _footprint(
                    footprint.measure_footprint(self.root, kafka, plan.footprint_reps, broker)
                ),
            )
        lat: dict[str, Any] = self.results.setdefault("latency", {})
        if self.wants("floor") or self.wants("main"):
            lat["floor_s"] = self.measure(
                "kafka floor", lambda: latency.measure_floor(self.loop, kafka, plan.floor_samples)
            )
        if self.wants("main"):
            try:
                self._main_system(kafka, lat)
            except Exception as exc:
                # Central or its CPs did not come up: what needed them is failed, the rest still runs.
                self.say(f"[red]the main system failed: {exc!r}[/]")
                lat.setdefault("low_load", {"error": repr(exc)})
                self.results.setdefault("chaos", {"error": repr(exc)})
            finally:
                self._stop_main()

        # Before the simulator's runs: their central stays up until the end, and a second central
        # on another store on the same Kafka is kept from deciding (the claim).
        if self.wants("gateway"):
            self._gateway(kafka)

        self.runner = load.LoadRunner(self.root, kafka, self.loop, self.broker.status().pid)
        runner = self.runner
        if self.wants("sustained"):
            lat["sustained"] = self.measure(
                "sustained latency", lambda: load.sustained_latency(runner, plan.quick, self.say)
            )
        if self.wants("throughput"):
            self._throughput(runner)
        if self.wants("storage"):
            self._storage(runner)
        if self.wants("failover"):
            self.results["failover"] = self.measure(
                "failover", lambda: failover.measure(self.loop, self.root, kafka, plan.trials, self.say)
            )
        if self.wants("scale"):
            self.results["scale"] = self.measure(
                "scale", lambda: load.scale(runner, plan.scale_sizes, self.say)
            )
        baseline = self._baseline_env()
        if self.wants("heartbeats"):
            self.results["heartbeats"] = self.measure(
                "heartbeats",
                lambda: heartbeats.measure(
                    runner,
                    plan.heartbeat_sizes,
                    plan.heartbeat_window_s,
                    self.say,
                    baseline,
                    self.profile_central,
                ),
            )
        if self.wants("fleet"):
            self.results["fleet"] = self.measure(
                "fleet", lambda: fleet.measure(runner, plan.fleet_sizes, self.say, self.profile_central)
            )
        if self.wants("reads"):
            self.results["reads"] = self.measure(
                "reads", lambda: reads.measure(runner, self.loop, 1000, 50, plan.reads_window_s, self.say)
            )
            if baseline is not None:
                self.results["reads_baseline"] = self.measure(
                    "reads (baseline)",
                    lambda: reads.measure(
                        runner, self.loop, 1000, 50, plan.reads_window_s, self.say, baseline, "readsbase"
                    ),
                )
        if self.wants("security"):
            self.results["security"] = self.measure(
                "security",
                lambda: security.measure(
                    self.loop,
                    self.root,
                    runner,
                    plan.drain,
                    plan.backlog_s,
                    plan.accepted_samples,
                    plan.trials,
                    self.say,
                ),
            )

    def _baseline_env(self) -> dict[str, str] | None:
        """A central of `--baseline REV`: that revision's package, exported, ahead on its path."""
        if not self.baseline:
            return None
        where = self.root / "baseline"
        where.mkdir(exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", self.baseline, "evcharge"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
        self.results["baseline"] = subprocess.run(
            ["git", "rev-parse", "--short", self.baseline], check=True, capture_output=True, text=True
        ).stdout.strip()
        # PYTHONSAFEPATH: `python -m` would put the working directory (this checkout) first.
        return {"PYTHONPATH": str(where), "PYTHONSAFEPATH": "1"}

    def wants(self, section: str) -> bool:
        return not self.only or section in self.only

    def _throughput(self, runner: load.LoadRunner) -> None:
        plan = self.plan
        raw_profile = self.root / "central-profile.txt" if self.profile_central else None
        self.results["throughput"] = self.measure(
            "throughput",
            lambda: load.throughput(runner, plan.steps, plan.drain, plan.backlog_s, self.say, raw_profile),
        )
        profiled = self.results["throughput"].get("drain", {}).get("profiled", {})
        if raw_profile is not None and raw_profile.exists():
            try:
                rate = profiled.get("applied_per_s") or 0
                self.results["profile_central"] = {
                    "while": f"it worked off a second backlog at {rate:,.0f} readings/s, sampled",
                    **profile.summarise(raw_profile, profiled.get("profiled_s"), profile.RATE_HZ),
                }
            except Exception as exc:
                self.results["profile_central"] = {"error": repr(exc)}

    def _storage(self, runner: load.LoadRunner) -> None:
        plan = self.plan

        def drain_on_postgres(url: str, pid: int | None) -> dict[str, Any]:
            self.say(
                f"capacity on PostgreSQL: the same {plan.drain.drivers} sessions "
                f"and {plan.backlog_s:g} s of backlog"
            )
            return runner.drain(
                plan.drain, plan.backlog_s, self.say, None, name="drain-pg", store=url, store_pid=pid
            )

        self.results["storage"] = self.measure(
            "storage",
            lambda: storage.measure(
                self.loop,
                self.root / "commit-rate",
                plan.commit_round_s,
                plan.commit_rounds,
                self.say,
                drain_on_postgres,
            ),
        )

    def _gateway(self, kafka: str) -> None:
        plan = self.plan
        self.results["gateway"] = self.measure(
            "gateway",
            lambda: gateway.measure(
                self.loop, self.root, kafka, plan.gateway_chargers, plan.gateway_metering, self.say
            ),
        )

    def _main_system(self, kafka: str, lat: dict[str, Any]) -> None:
        """Central and two CPs measured one request at a time, then failed and restarted."""
        plan = self.plan
        system = new_system(self.root, kafka, "main", max_session_s=2.0)
        self.systems.append(system)
        system.start_central()
        target, spare = system.ident("BENCH-1"), system.ident("BENCH-2")
        for cp_id in (target, spare):
            system.add_cp(cp_id)
        prober = self.prober = Prober(kafka, system.ident("bench-probe"))
        self.loop.run(prober.start(), 60)
        lat["low_load"] = self.measure(
            "low-load latency",
            lambda: latency.measure_low_load(
                self.loop, prober, [target, spare], plan.accepted_samples, plan.reading_samples
            ),
        )
        lat["hop_multiples"] = latency.hop_multiples(lat["low_load"], lat["floor_s"])
        assert self.broker is not None
        broker = self.broker
        self.results["chaos"] = self.measure(
            "detection and recovery",
            lambda: chaos.Chaos(system, self.loop, prober, broker, target, spare).run(plan.trials, self.say),
        )

    def _stop_main(self) -> None:
        prober, self.prober = self.prober, None
        systems, self.systems = self.systems, []
        try:
            if prober is not None:
                self.loop.run(prober.close(), 30)
        finally:
            for system in systems:
                system.stop_all()

    def close(self) -> None:
        """Stop everything this run started, each step on its own so one failure does not skip the rest."""
        steps: list[Callable[[], object]] = [self._stop_main]
        if self.runner is not None:
            steps.append(self.runner.close)
        steps.append(self.loop.close)
        if self.broker is not None:
            steps.append(self.broker.stop)
        for step in steps:
            try:
                step()
            except Exception as exc:
                self.say(f"[red]cleanup: {exc!r}[/]")
        self.results["total_s"] = round(time.monotonic() - self.started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer trials and samples, no 5,000-CP run (~3 min)"
    )
    parser.add_argument(
        "--trials", type=int, default=None, help="trials per detection/recovery case (5; 3 quick)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"), help="where the JSON goes")
    parser.add_argument(
        "--plot",
        type=Path,
        default=growth.PLOT,
        help="where the growth curves go (PNG), from the heartbeat and throughput sections",
    )
    parser.add_argument("--no-profile", action="store_true", help="do not profile central with py-spy")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with every log")
    parser.add_argument(
        "--baseline",
        default="",
        help="a git revision whose central also runs in the heartbeat and reads sections (the reference)",
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated sections to run (default all): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--gateway-only",
        action="store_true",
        help="only the OCPP gateway's section (its own Kafka), written into the existing --out file",
    )
    args = parser.parse_args(argv)

    # The bench's own Kafka clients: one calm line per outage (as every role logs), no library noise.
    setup_logging("warning")
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    plan = Plan.make(args.quick, args.trials)
    root = Path(tempfile.mkdtemp(prefix="evcharge-bench-"))
    use_profiler = not args.no_profile and profile.profiler_path() is not None
    only = frozenset(filter(None, args.only.split(",")))
    if unknown := only - set(SECTIONS):
        parser.error(f"--only: no section {', '.join(sorted(unknown))} (there are {', '.join(SECTIONS)})")
    bench = Bench(plan, root, console, use_profiler, only)
    bench.baseline = args.baseline
    bench.gateway_only = args.gateway_only
    if not use_profiler and not args.no_profile:
        bench.say("py-spy not found: central is not profiled (pip install py-spy into .venv to profile)")
    # SIGTERM (make interrupted, CI cancelled) goes down the same path as Ctrl-C: everything is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    failed: BaseException | None = None
    try:
        bench.run()
    except BaseException as exc:
        failed = exc
        bench.results["error"] = repr(exc)
    finally:
        bench.close()
    alone = {"gateway"} if args.gateway_only else set(only) if only and only <= MERGED_SECTIONS else set()
    bench.results = save(args.out, bench.results, alone)
    console.print(report.table(bench.results))
    if args.plot is not None and (drawn := growth.plot(bench.results, args.plot)):
        console.print(f"growth curves drawn in {drawn}")
    # Run alone, the throughput section's profile is its run's, under throughput_run.
    drain_profile = bench.results.get("throughput_run", {}) if "throughput" in alone else bench.results
    if "profile_central" in drain_profile:
        console.print(_profile_lines(drain_profile["profile_central"]))
    took = next(
        (bench.results[f"{s}_run"]["total_s"] for s in sorted(alone) if f"{s}_run" in bench.results),
        bench.results["total_s"],
    )
    console.print(f"results written to {args.out} in {took:.0f} s")
    if failed is not None or args.keep:
        console.print(f"logs kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    if failed is not None:
        if isinstance(failed, KeyboardInterrupt):
            return 130
        console.print(f"[red]bench failed: {failed!r}[/]")
        return 1
    return 0


def save(path: Path, results: dict[str, Any], alone: set[str]) -> dict[str, Any]:
    """Write `results` to `path` as JSON, what is written returned. A run of `alone` sections
    only goes into the file there is, beside the figures of every other section."""
    if alone and path.exists():
        results = merged(json.loads(path.read_text()), results, alone)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def merged(earlier: dict[str, Any], run: dict[str, Any], sections: set[str]) -> dict[str, Any]:
    """`earlier` results with `sections` as `run` measured them, and that run's own machine, plan
    and timings beside each as `<section>_run`; every other section stays as it was."""
    own = {key: value for key, value in run.items() if key not in sections}
    out = dict(earlier)
    for section in sorted(sections):
        out[section] = run.get(section)
        out[f"{section}_run"] = own
    return out


def _footprint(roles: dict[str, Any]) -> dict[str, Any]:
    return {
        role: {
            "startup_median_s": round(statistics.median(f["startup_s"]), 3) if f["startup_s"] else None,
            "rss_median_mb": round(statistics.median(f["rss_mb"]), 1) if f["rss_mb"] else None,
            **f,
        }
        for role, f in roles.items()
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _profile_lines(p: dict[str, Any]) -> str:
    def fmt(pairs: list[list[Any]], n: int = 6) -> str:
        return "; ".join(f"{name} {pct} %" for name, pct in pairs[:n])

    return (
        f"central profiled with py-spy while {p['while']} ({p['samples']} busy samples):\n"
        f"  by library: {fmt(p['by_area_percent'])}\n"
        f"  self time: {fmt(p['self_percent'])}\n"
        f"  evcharge (inclusive): {fmt(p['evcharge_inclusive_percent'])}"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
