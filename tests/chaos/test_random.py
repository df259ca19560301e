"""Randomized chaos: two or three components at a time killed or frozen, overlapping, then brought
back, under continuous driver load; every invariant checked at the end.

`make test` runs a short run with a fixed seed and one with a fresh seed (printed, so a
failure replays: `make chaos-random SEED=<seed> ROUNDS=<n>`). `make chaos-soak ROUNDS=N`
runs as many rounds as asked: the time allowed grows with the rounds.
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass

import pytest

from evcharge.devtools.supervisor import Child
from tests.chaos.conftest import Scenario
from tests.harness import System, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes, pytest.mark.chaos]

ROUNDS = int(os.environ.get("EVCHARGE_CHAOS_ROUNDS") or 3)
GIVEN_SEED = os.environ.get("EVCHARGE_CHAOS_SEED") or None
FRESH_SEED = time.time_ns() % 1_000_000
SEEDS = [int(GIVEN_SEED)] if GIVEN_SEED else [1234, FRESH_SEED]
ROUND_BOUND_S = 60.0  # a round's outages and the system serving again, at most


@dataclass(frozen=True)
class Fault:
    victim: str
    mode: str  # "kill" or "freeze"
    at_s: float  # after the round began
    outage_s: float

    def __str__(self) -> str:
        return f"{self.mode} {self.victim} at +{self.at_s:.1f} s for {self.outage_s:.1f} s"


def plan_round(rng: random.Random, victims: list[str]) -> list[Fault]:
    """Two or three distinct victims, their outages overlapping."""
    chosen = rng.sample(victims, rng.choice((2, 3)))
    faults = []
    for victim in chosen:
        mode = "kill" if victim == "kafka" or rng.random() < 0.7 else "freeze"
        faults.append(Fault(victim, mode, rng.uniform(0.0, 1.5), rng.uniform(0.5, 4.0)))
    return sorted(faults, key=lambda f: f.at_s)


def play(faults: list[Fault], processes: dict[str, Child], kafka_broker) -> None:
    """Run the round's timeline: each fault at its moment, each recovery when its outage ends."""
    began = time.monotonic()
    timeline = [(f.at_s, "fault", f) for f in faults] + [(f.at_s + f.outage_s, "recover", f) for f in faults]
    for at_s, what, fault in sorted(timeline, key=lambda t: t[0]):
        time.sleep(max(0.0, began + at_s - time.monotonic()))
        if fault.victim == "kafka":
            kafka_broker.kill(signal.SIGKILL) if what == "fault" else kafka_broker.start()
            continue
        process = processes[fault.victim]
        if what == "fault":
            process.kill() if fault.mode == "kill" else process.freeze()
        elif fault.mode == "kill":
            if not process.alive:
                process.start()
        else:
            process.thaw()


@pytest.mark.timeout(240 + 90 * ROUNDS)
@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed-{s}" for s in SEEDS])
def test_overlapping_failures_under_load_keep_every_invariant(
    system: System, kafka_broker, scenario: Scenario, seed: int
) -> None:
    rng = random.Random(seed)
    scenario.name = f"random seed={seed} rounds={ROUNDS}"
    replay = f"make chaos-random SEED={seed} ROUNDS={ROUNDS}"
    print(f"\nrandomized chaos: seed {seed}, {ROUNDS} rounds (replay: {replay})")
    system.max_session_s = 3
    system.start_central()
    cps = [system.add_cp(system.ident(f"CP-00{i}")) for i in range(1, 4)]
    drivers = [system.ident(f"driver-{name}") for name in ("alice", "bob", "carol")]
    for driver in drivers:
        system.start_driver(driver, [rng.choice(cps).cp_id for _ in range(2 * ROUNDS + 2)], interval_s=0.5)

    processes: dict[str, Child] = {"central": system.central}
    for cp in cps:
        processes[cp.engine.name] = cp.engine
        processes[cp.monitor.name] = cp.monitor
    for driver in drivers:
        processes[driver] = system.drivers[driver]
    history: list[str] = []
    scenario.mark("fault_at")
    for number in range(1, ROUNDS + 1):
        # A driver that finished its file is no longer a victim worth choosing.
        victims = [name for name, p in processes.items() if p.alive] + ["kafka"]
        faults = plan_round(rng, victims)
        history.append(f"round {number}: " + "; ".join(map(str, faults)))
        print(history[-1])
        scenario.measured["history"] = history
        play(faults, processes, kafka_broker)
        for cp in cps:
            wait_until(
                lambda cp=cp: system.status(cp.cp_id) in ("ON", "SUPPLYING"),
                ROUND_BOUND_S,
                f"{cp.cp_id} serving again after {history[-1]} (seed {seed})",
            )
    scenario.mark("served_at")
    for driver in drivers:
        system.wait_driver_done(driver, 120 + 20 * ROUNDS)
    scenario.finish(restarted=[h.split(": ", 1)[1] for h in history])
