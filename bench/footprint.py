"""Start-up time and resident memory of each role, from its start to the moment it says it serves.

Each role is asked over its own interface: central answers `GET /health`, an
engine its health port (opened once it reads its Kafka commands), a monitor is
listed by central as the CP's connected monitor, a driver writes `ready` to its
event stream once it reads its updates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.procs import rss_mb
from bench.system import BenchSystem, new_system, wait_for
from evcharge.devtools.supervisor import Child


def measure_footprint(root: Path, kafka: str, reps: int, broker: dict[str, Any]) -> dict[str, Any]:
    """`reps` starts of each role against the benchmark's broker; the broker's own from its start."""
    system = new_system(root, kafka, "footprint")
    roles: dict[str, dict[str, list[float]]] = {
        role: {"startup_s": [], "rss_mb": []} for role in ("central", "engine", "monitor", "driver")
    }
    roles["kafka"] = {"startup_s": [broker["start_s"]], "rss_mb": [broker["rss_mb"]]}
    try:
        for _ in range(reps):
            system.start_central()  # stops the previous one first
            assert system.central_ready_s is not None
            _record(roles["central"], system.central_ready_s, system.central)
        cp = system.add_cp(system.ident("FOOT-1"), wait=False)
        cp.engine.stop()
        cp.monitor.stop()
        for _ in range(reps):
            started = time.monotonic()
            cp.engine.start()
            ready = wait_for(lambda: system.engine_serving(cp), "the engine's health port")
            _record(roles["engine"], ready - started, cp.engine)
            started = time.monotonic()
            cp.monitor.start()
            ready = wait_for(lambda: system.monitor_connected(cp), "central to list the monitor")
            _record(roles["monitor"], ready - started, cp.monitor)
            cp.monitor.stop()
            cp.engine.stop()
        for n in range(reps):
            driver_id = system.ident(f"foot-driver-{n}")
            started = time.monotonic()
            driver = _start_driver(system, driver_id)
            ready = wait_for(lambda d=driver_id: system.driver_ready(d), "the driver's ready event")
            _record(roles["driver"], ready - started, driver)
            driver.stop()
    finally:
        system.stop_all()
    return roles


def _start_driver(system: BenchSystem, driver_id: str) -> Child:
    """A driver with its own requests file: two requests for a CP nobody has, far apart.

    The first is denied at once and the driver then waits out its interval, so it is
    still alive (and measurable) after it said it is ready.
    """
    return system.start_driver(driver_id, ["BENCH-NOWHERE", "BENCH-NOWHERE"], interval_s=3600)


def _record(role: dict[str, list[float]], startup_s: float, child: Child | None) -> None:
    role["startup_s"].append(startup_s)
    rss = rss_mb(child.pid if child else None)
    if rss is not None:
        role["rss_mb"].append(rss)
