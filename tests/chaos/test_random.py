"""Randomized chaos: random components killed or frozen, then restarted, under continuous load.

Off by default; `make chaos-random SEED=7 ROUNDS=10` runs it. The seed is
printed first, so a failing run can be replayed exactly.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from evcharge.supervisor import Child, wait_until
from tests.harness import System

pytestmark = [pytest.mark.kafka, pytest.mark.processes, pytest.mark.chaos]

ROUNDS = int(os.environ.get("EVCHARGE_CHAOS_ROUNDS", "0"))
SEED = int(os.environ.get("EVCHARGE_CHAOS_SEED") or time.time_ns() % 1_000_000)


@pytest.mark.skipif(ROUNDS == 0, reason="randomized chaos runs with `make chaos-random ROUNDS=N [SEED=S]`")
def test_random_failures_under_load_keep_every_invariant(system: System, kafka_broker, chaos_report) -> None:
    rng = random.Random(SEED)
    print(
        f"\nrandomized chaos: seed {SEED}, {ROUNDS} rounds "
        f"(replay: make chaos-random SEED={SEED} ROUNDS={ROUNDS})"
    )
    system.max_session_s = 4
    system.start_central()
    cps = [system.add_cp(system.ident(f"CP-00{i}")) for i in range(1, 4)]
    drivers = [system.ident(f"driver-{name}") for name in ("alice", "bob", "carol")]
    for driver in drivers:
        system.start_driver(driver, [rng.choice(cps).cp_id for _ in range(4 * ROUNDS + 4)], interval_s=0.5)

    victims: dict[str, Child | str] = {"central": system.central, "kafka": "kafka"}
    for cp in cps:
        victims[f"engine {cp.cp_id}"] = cp.engine
        victims[f"monitor {cp.cp_id}"] = cp.monitor
    for driver in drivers:
        victims[driver] = system.drivers[driver]

    history = []
    for round_number in range(1, ROUNDS + 1):
        name = rng.choice(sorted(victims))
        mode = "kill" if name == "kafka" or rng.random() < 0.7 else "freeze"
        outage_s = rng.uniform(0.5, 4.0)
        history.append(f"round {round_number}: {mode} {name} for {outage_s:.1f} s")
        print(history[-1])
        victim = victims[name]
        if victim == "kafka":
            kafka_broker.kill(signal.SIGKILL)
            time.sleep(outage_s)
            kafka_broker.start()
        else:
            assert isinstance(victim, Child)
            if not victim.alive:
                continue  # a driver that already finished its file
            if mode == "kill":
                victim.kill()
                time.sleep(outage_s)
                victim.start()
            else:
                victim.freeze()
                time.sleep(outage_s)
                victim.thaw()
        for cp in cps:
            wait_until(
                lambda cp=cp: system.status(cp.cp_id) in ("ON", "SUPPLYING"),
                45,
                f"{cp.cp_id} serving again after {history[-1]} (seed {SEED})",
            )

    for driver in drivers:
        system.wait_driver_done(driver, 60 + 15 * ROUNDS)
    system.assert_invariants()
    unexpected = system.unexpected_log_lines()
    assert unexpected == {}, f"seed {SEED}: unexpected errors {unexpected}; history {history}"
    sessions = system.sessions()
    chaos_report(
        {
            "scenario": f"random seed={SEED} rounds={ROUNDS}",
            "sessions": len(sessions),
            "tickets_lost": 0,
            "duplicates": 0,
            "restarted": [h.split(": ", 1)[1] for h in history],
        }
    )
