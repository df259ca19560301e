"""The simulator's drivers start when told: after `--drivers-after`, so the CPs register first."""

from __future__ import annotations

import asyncio
import random
import time

from evcharge.devtools.sim.drivers import DriverFleet, DriverSettings
from evcharge.devtools.sim.report import SimStats


class _Recorder:
    """A publisher that notes when each request was sent, and sends none (the driver moves on)."""

    def __init__(self) -> None:
        self.sent_at: list[float] = []
        self.first = asyncio.Event()

    async def publish(self, message: object, proof: object = None) -> bool:
        self.sent_at.append(time.monotonic())
        self.first.set()
        return False


async def test_no_driver_asks_before_its_start_and_they_ask_after_it() -> None:
    settings = DriverSettings(
        drivers=3, driver_prefix="d", request_rate=300.0, ramp_up_s=0.0, session_s=1.0, start_after_s=0.4
    )
    publisher = _Recorder()
    fleet = DriverFleet(settings, publisher, lambda: "CP-1", SimStats(cps=1, drivers=3), random.Random(7))  # type: ignore[arg-type]
    stop, abort = asyncio.Event(), asyncio.Event()
    started = time.monotonic()
    running = asyncio.create_task(fleet.run(stop, abort))
    try:
        await asyncio.wait_for(publisher.first.wait(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    assert min(publisher.sent_at) - started >= 0.4
