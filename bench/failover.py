"""Two centrals on one PostgreSQL: how soon a standby serves when the leader dies or freezes, and
what a rolling restart of both costs the drivers.

- leader killed (SIGKILL): the standby leads (its `/health`), and a fresh request is
  accepted and its supply started by the new leader, both timed from the kill;
- leader frozen (SIGSTOP past its lease): the same, then the old leader is thawed and
  timed until it has stepped down to standby by itself;
- rolling restart: each central stopped (SIGTERM) and started again in turn, leader
  first, while a driver asks for one charge after another: how many were denied or
  went unanswered (the promise: none).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.loop import LoopThread
from bench.probe import ProbeFailed, Prober
from bench.stats import summary
from bench.storage import BenchPostgres
from bench.system import new_system, wait_for
from evcharge.devtools.system import CentralNode

SERVE_TIMEOUT_S = 30.0
Say = Callable[[str], None]


def measure(loop: LoopThread, root: Path, kafka: str, trials: int, say: Say) -> dict[str, Any]:
    postgres = BenchPostgres()
    postgres.start()
    system = None
    prober = None
    try:
        url = postgres.server.create_database("failover")
        system = new_system(root, kafka, "failover", store=url, max_session_s=1.0)
        system.central_overrides = {"startup_grace_s": 2.0}
        system.start_centrals(2)
        cp = system.ident("FAILOVER-1")
        system.add_cp(cp)
        prober = Prober(kafka, system.ident("failover-probe"))
        loop.run(prober.start(), 60)
        out: dict[str, Any] = {}
        for name, trial in (("leader_killed", _killed), ("leader_frozen", _frozen)):
            out[name] = _trials(
                trials, say, name.replace("_", " "), lambda trial=trial: trial(system, loop, prober, cp)
            )
        say("rolling restart of both centrals under requests")
        out["rolling_restart"] = _rolling(system, loop, prober, cp)
        return out
    finally:
        if prober is not None:
            loop.run(prober.close(), 30)
        if system is not None:
            system.stop_all()
        postgres.close()


def _trials(trials: int, say: Say, name: str, trial: Callable[[], dict[str, float]]) -> dict[str, Any]:
    rows: list[dict[str, float]] = []
    error = None
    for n in range(trials):
        say(f"{name} {n + 1}/{trials}")
        try:
            rows.append(trial())
        except (TimeoutError, ProbeFailed, AssertionError) as exc:
            error = f"trial {n + 1}: {exc}"
            say(f"{name}: {error}")
            break
    keys = rows[0] if rows else {}
    return {"trials": rows, "error": error, **{k: summary([r[k] for r in rows]) for k in keys}}


def _leader(system: Any) -> CentralNode:
    node: CentralNode = system.wait_leader(SERVE_TIMEOUT_S)
    return node


def _killed(system: Any, loop: LoopThread, prober: Prober, cp: str) -> dict[str, float]:
    old = _leader(system)
    killed = time.monotonic()
    old.child.kill()
    led = wait_for(lambda: _leads_other(system, old), "the standby to lead", SERVE_TIMEOUT_S) - killed
    served = loop.run(prober.serve(cp, killed, SERVE_TIMEOUT_S), SERVE_TIMEOUT_S + 5)
    system.wait_leader(SERVE_TIMEOUT_S, not_=old)
    old.child.start()
    wait_for(lambda: old.role() == "standby", "the restarted central to be a standby", SERVE_TIMEOUT_S)
    return {"takeover_s": led, "served_s": served.accepted_s or 0.0, "started_s": served.started_s or 0.0}


def _frozen(system: Any, loop: LoopThread, prober: Prober, cp: str) -> dict[str, float]:
    old = _leader(system)
    frozen = time.monotonic()
    old.child.freeze()
    try:
        led = wait_for(lambda: _leads_other(system, old), "the standby to lead", SERVE_TIMEOUT_S) - frozen
        served = loop.run(prober.serve(cp, frozen, SERVE_TIMEOUT_S), SERVE_TIMEOUT_S + 5)
        system.wait_leader(SERVE_TIMEOUT_S, not_=old)
    finally:
        old.child.thaw()
    thawed = time.monotonic()
    stepped = wait_for(lambda: old.role() == "standby", "the thawed leader to step down", SERVE_TIMEOUT_S)
    return {
        "takeover_s": led,
        "served_s": served.accepted_s or 0.0,
        "stepped_down_s": stepped - thawed,
    }


def _leads_other(system: Any, old: CentralNode) -> bool:
    return any(node is not old and node.role() == "leader" for node in system.centrals)


def _rolling(system: Any, loop: LoopThread, prober: Prober, cp: str) -> dict[str, Any]:
    done = threading.Event()
    outcomes: dict[str, int] = {"accepted": 0, "denied": 0, "unanswered": 0}
    denials: list[str] = []

    async def ask() -> None:
        while not done.is_set():
            try:
                charge = await prober.charge(cp, timeout_s=20.0)
            except ProbeFailed:
                outcomes["unanswered"] += 1
                continue
            if charge.denied:
                outcomes["denied"] += 1
                denials.append(charge.denied)
                await asyncio.sleep(0.2)
            else:
                outcomes["accepted"] += 1

    asking = asyncio.run_coroutine_threadsafe(ask(), loop.loop)
    started = time.monotonic()
    try:
        for _ in range(len(system.centrals)):
            old = _leader(system)
            old.child.stop()
            system.wait_leader(SERVE_TIMEOUT_S, not_=old)
            old.child.start()
            wait_for(lambda old=old: old.role() == "standby", "the restarted central to be a standby", 60)
    finally:
        done.set()
        asking.result(60)
    took = round(time.monotonic() - started, 1)
    return {**outcomes, "denial_codes": sorted(set(denials)), "duration_s": took}
