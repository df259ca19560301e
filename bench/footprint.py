"""Start-up time and resident memory of each role, from its start to its own "ready" signal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from evcharge.supervisor import Child

from bench.procs import rss_mb
from bench.system import BenchSystem, log_count, new_system, wait_for

# What each role says once it serves: central answers /health; the others log a line.
ENGINE_READY = "engine ready"
MONITOR_READY = "registered with central"
DRIVER_READY = " ready (Kafka "


def measure_footprint(root: Path, kafka: str, reps: int, broker: dict[str, Any]) -> dict[str, Any]:
    """`reps` starts of each role against the benchmark's broker; the broker's own from its start."""
    system = new_system(root, kafka, "footprint")
    roles: dict[str, dict[str, list[float]]] = {
        role: {"startup_s": [], "rss_mb": []} for role in ("central", "engine", "monitor", "driver")
    }
    roles["kafka"] = {"startup_s": [broker["start_s"]], "rss_mb": [broker["rss_mb"]]}
    try:
        for _ in range(reps):
            if system.central is not None:
                system.central.stop()
            system.start_central()
            _record(roles["central"], system.central_ready_s, system.central)
        cp = system.add_cp(system.ident("FOOT-1"), wait=False)
        cp.engine.stop()
        cp.monitor.stop()
        for _ in range(reps):
            seen = log_count(cp.engine, ENGINE_READY)
            started = time.monotonic()
            cp.engine.start()
            ready = wait_for(lambda s=seen: log_count(cp.engine, ENGINE_READY) > s, "the engine's ready line")
            _record(roles["engine"], ready - started, cp.engine)
            seen = log_count(cp.monitor, MONITOR_READY)
            started = time.monotonic()
            cp.monitor.start()
            ready = wait_for(
                lambda s=seen: log_count(cp.monitor, MONITOR_READY) > s, "the monitor registered"
            )
            _record(roles["monitor"], ready - started, cp.monitor)
            cp.monitor.stop()
            cp.engine.stop()
        for n in range(reps):
            started = time.monotonic()
            driver = _start_driver(system, n)
            ready = wait_for(lambda d=driver: DRIVER_READY in d.output(), "the driver's ready line")
            _record(roles["driver"], ready - started, driver)
            driver.stop()
    finally:
        system.stop_all()
    return roles


def _start_driver(system: BenchSystem, n: int) -> Child:
    """A driver with its own requests file: two requests for a CP nobody has, far apart.

    The first is denied at once and the driver then waits out its interval, so it is
    still alive (and measurable) after its ready line.
    """
    driver_id = system.ident(f"foot-driver-{n}")
    return system.start_driver(driver_id, ["BENCH-NOWHERE", "BENCH-NOWHERE"], interval_s=3600)


def _record(role: dict[str, list[float]], startup_s: float, child: Child | None) -> None:
    role["startup_s"].append(startup_s)
    rss = rss_mb(child.pid if child else None)
    if rss is not None:
        role["rss_mb"].append(rss)
