"""`python -m bench.run [--quick] [--trials N] [--out FILE]`: measure, print the table, save the JSON.

Everything runs on this machine in one go: its own Kafka on free ports in a temp
dir, its own central, CPs, drivers and simulators as real processes, its own
PostgreSQL for the store comparison, all stopped at the end whatever happens.
Order of the phases: footprint, the Kafka floor, low-load latency, detection and
recovery (Kafka last among them), then the simulator's runs: sustained latency,
throughput steps and central's capacity on SQLite, the stores (bare commit rates,
central's capacity on PostgreSQL), two centrals failing over, scale. A phase that fails is recorded as failed
(its "error") and the run goes on with the next; only Kafka not starting ends it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from bench import chaos, failover, footprint, latency, load, profile, report, storage
from bench.loop import LoopThread
from bench.probe import Prober
from bench.procs import machine, rss_mb
from bench.system import BenchSystem, new_system
from evcharge.devtools.kafka import KAFKA_VERSION, LocalBroker
from evcharge.logs import setup_logging
from evcharge.runtime.ports import free_ports

_T = TypeVar("_T")


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
    commit_rounds: int = 5  # bare commit rates: rounds per database (SQLite alternates FULL and NORMAL)
    commit_round_s: float = 2.0
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
                commit_rounds=3,
                commit_round_s=1.0,
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
        )


class Bench:
    def __init__(self, plan: Plan, root: Path, console: Console, profile_central: bool) -> None:
        self.plan = plan
        self.root = root
        self.console = console
        self.profile_central = profile_central
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
                "commit_rounds": [plan.commit_rounds, plan.commit_round_s],
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

        self.results["footprint"] = self.measure(
            "footprint",
            lambda: _footprint(footprint.measure_footprint(self.root, kafka, plan.footprint_reps, broker)),
        )
        lat: dict[str, Any] = self.results.setdefault("latency", {})
        lat["floor_s"] = self.measure(
            "kafka floor", lambda: latency.measure_floor(self.loop, kafka, plan.floor_samples)
        )
        try:
            self._main_system(kafka, lat)
        except Exception as exc:
            # Central or its CPs did not come up: what needed them is failed, the rest still runs.
            self.say(f"[red]the main system failed: {exc!r}[/]")
            lat.setdefault("low_load", {"error": repr(exc)})
            self.results.setdefault("chaos", {"error": repr(exc)})
        finally:
            self._stop_main()

        self.runner = load.LoadRunner(self.root, kafka, self.loop, self.broker.status().pid)
        runner = self.runner
        lat["sustained"] = self.measure(
            "sustained latency", lambda: load.sustained_latency(runner, plan.quick, self.say)
        )
        raw_profile = self.root / "central-profile.txt" if self.profile_central else None
        self.results["throughput"] = self.measure(
            "throughput",
            lambda: load.throughput(runner, plan.steps, plan.drain, plan.backlog_s, self.say, raw_profile),
        )
        drained = self.results["throughput"].get("drain", {})
        if raw_profile is not None and raw_profile.exists():
            try:
                rate = drained.get("applied_per_s") or 0
                self.results["profile_central"] = {
                    "while": f"it worked off a backlog at {rate:,.0f} readings/s",
                    **profile.summarise(raw_profile, drained.get("profiled_s"), load.PROFILE_RATE_HZ),
                }
            except Exception as exc:
                self.results["profile_central"] = {"error": repr(exc)}

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
        self.results["failover"] = self.measure(
            "failover", lambda: failover.measure(self.loop, self.root, kafka, plan.trials, self.say)
        )
        self.results["scale"] = self.measure("scale", lambda: load.scale(runner, plan.scale_sizes, self.say))

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
    parser.add_argument("--no-profile", action="store_true", help="do not profile central with py-spy")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with every log")
    args = parser.parse_args(argv)

    # The bench's own Kafka clients: one calm line per outage (as every role logs), no library noise.
    setup_logging("warning")
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    plan = Plan.make(args.quick, args.trials)
    root = Path(tempfile.mkdtemp(prefix="evcharge-bench-"))
    use_profiler = not args.no_profile and load.profiler_path() is not None
    bench = Bench(plan, root, console, use_profiler)
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(bench.results, indent=2, ensure_ascii=False) + "\n")
    console.print(report.table(bench.results))
    if "profile_central" in bench.results:
        console.print(_profile_lines(bench.results["profile_central"]))
    console.print(f"results written to {args.out} in {bench.results['total_s']:.0f} s")
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
