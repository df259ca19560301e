"""Failure detection and recovery, repeated: how long central takes to show a failure, and to serve again.

Detection: the signal (SIGKILL, or SIGSTOP for a hung process) → central's API
shows the status. Recovery: the restart → serving again, which is the same
criterion for every component: a fresh request is accepted and its supply starts
(for the driver, its own next request shows as accepted in its event stream).
What central's API says on the way (CP back ON, /health up) is kept alongside.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from typing import Any

from bench.loop import LoopThread
from bench.probe import Prober
from bench.stats import run_trials
from bench.system import BenchSystem, wait_for
from evcharge.devtools.kafka import LocalBroker
from evcharge.devtools.supervisor import Child
from evcharge.devtools.system import ChargePoint

SERVE_TIMEOUT_S = 30.0
KAFKA_START_TIMEOUT_S = 120.0
CHECK_CYCLE_S = 1.0  # the monitor's default check interval and heartbeat interval

Trial = Callable[[], dict[str, float]]


class Chaos:
    def __init__(
        self,
        system: BenchSystem,
        loop: LoopThread,
        prober: Prober,
        broker: LocalBroker,
        target: str,
        spare: str,
    ) -> None:
        self.system = system
        self.loop = loop
        self.prober = prober
        self.broker = broker
        self.target = target  # the CP whose engine and monitor fail
        self.spare = spare  # the CP used to show the system serves while the target is down
        self._rng = random.Random(7)

    def run(self, trials: int, say: Callable[[str], None]) -> dict[str, Any]:
        cases: dict[str, Trial] = {
            "engine_killed": self.engine_killed,
            "engine_hung": self.engine_hung,
            "monitor_killed": self.monitor_killed,
            "monitor_hung": self.monitor_hung,
            "driver_killed": self._driver_trials(trials),
            "central_killed": self.central_killed,
            "kafka_killed": self.kafka_killed,
        }
        results: dict[str, Any] = {}
        for name, trial in cases.items():
            results[name] = run_trials(trials, say, name, trial)
        return results

    def _cp(self) -> ChargePoint:
        return self.system.cps[self.target]

    def _random_moment(self) -> None:
        """Fail at a random point of the monitor's 1 s check and heartbeat cycle.

        Right after `_settle` the cycle has just ticked (central flipped to ON after a
        check), so failing at once would always land at the same, worst, phase.
        """
        time.sleep(self._rng.uniform(0.0, CHECK_CYCLE_S))

    def _serve(self, cp_id: str, since: float) -> float:
        charge = self.loop.run(self.prober.serve(cp_id, since, SERVE_TIMEOUT_S), SERVE_TIMEOUT_S + 20)
        assert charge.started_s is not None
        return charge.started_s

    def _settle(self) -> None:
        """Every CP ON and every engine reading its commands before the next trial."""
        for cp in self.system.cps.values():
            self.system.wait_cp(cp.cp_id, "ON")
            wait_for(lambda cp=cp: self.system.engine_serving(cp), f"{cp.cp_id}'s engine to serve")

    # ------------------------------------------------------------- engine

    def engine_killed(self) -> dict[str, float]:
        self._settle()
        cp = self._cp()
        self._random_moment()
        failed = time.monotonic()
        cp.engine.kill()
        detection = self.system.wait_cp(cp.cp_id, "BROKEN") - failed
        restarted = time.monotonic()
        cp.engine.start()
        on = self.system.wait_cp(cp.cp_id, "ON") - restarted
        return {"detection_s": detection, "on_s": on, "recovery_s": self._serve(cp.cp_id, restarted)}

    def engine_hung(self) -> dict[str, float]:
        self._settle()
        cp = self._cp()
        self._random_moment()
        failed = time.monotonic()
        cp.engine.freeze()
        try:
            detection = self.system.wait_cp(cp.cp_id, "BROKEN") - failed
        finally:
            thawed = time.monotonic()
            cp.engine.thaw()
        return {"detection_s": detection, "on_after_wake_s": self.system.wait_cp(cp.cp_id, "ON") - thawed}

    # ------------------------------------------------------------ monitor

    def monitor_killed(self) -> dict[str, float]:
        self._settle()
        cp = self._cp()
        self._random_moment()
        failed = time.monotonic()
        cp.monitor.kill()
        detection = self.system.wait_cp(cp.cp_id, "DISCONNECTED") - failed
        restarted = time.monotonic()
        cp.monitor.start()
        on = self.system.wait_cp(cp.cp_id, "ON") - restarted
        return {"detection_s": detection, "on_s": on, "recovery_s": self._serve(cp.cp_id, restarted)}

    def monitor_hung(self) -> dict[str, float]:
        self._settle()
        cp = self._cp()
        self._random_moment()
        failed = time.monotonic()
        cp.monitor.freeze()
        try:
            detection = self.system.wait_cp(cp.cp_id, "DISCONNECTED") - failed
        finally:
            thawed = time.monotonic()
            cp.monitor.thaw()
        return {"detection_s": detection, "on_after_wake_s": self.system.wait_cp(cp.cp_id, "ON") - thawed}

    # ------------------------------------------------------------- driver

    def _driver_trials(self, trials: int) -> Trial:
        """A driver with one request per trial and a long pause between them, killed during the pause.

        Restarted, it resumes its requests file at the next line: the time until
        that request shows as accepted in its event stream is its recovery.
        """
        system = self.system
        driver_id = system.ident("bench-driver")
        state: dict[str, Child] = {}

        def trial() -> dict[str, float]:
            self._settle()
            driver = state.get("driver")
            if driver is None:
                driver = state["driver"] = system.start_driver(
                    driver_id, [self.spare] * (trials + 1), interval_s=3600
                )
                wait_for(
                    lambda: system.driver_count(driver_id, "ticket") >= 1, f"{driver_id}'s first ticket", 60
                )
            done = system.driver_count(driver_id, "accepted")
            # Killed while it waits out its interval: the last request is answered and shown.
            wait_for(lambda: system.driver_settled(driver_id), f"{driver_id}'s ticket", 60)
            time.sleep(0.2)  # its journal records the outcome right after showing it
            driver.kill()
            restarted = time.monotonic()
            driver.start()
            ready = wait_for(lambda: system.driver_ready(driver_id), "the driver's ready event")
            accepted = wait_for(
                lambda: system.driver_count(driver_id, "accepted") > done, f"{driver_id}'s next request", 60
            )
            return {"ready_s": ready - restarted, "recovery_s": accepted - restarted}

        return trial

    # ------------------------------------------------------------ central

    def central_killed(self) -> dict[str, float]:
        self._settle()
        central = self.system.central
        assert central is not None
        central.kill()
        restarted = time.monotonic()
        central.start()
        api = self.system.wait_central() - restarted
        on = max(self.system.wait_cp(cp_id, "ON") for cp_id in self.system.cps) - restarted
        return {"api_s": api, "on_s": on, "recovery_s": self._serve(self.spare, restarted)}

    # -------------------------------------------------------------- Kafka

    def kafka_killed(self) -> dict[str, float]:
        self._settle()
        self.broker.kill(signal.SIGKILL)
        # A killed JVM holds its ports for a moment: start() would find it "running".
        wait_for(lambda: not self.broker.status().running, "the killed broker to be gone")
        restarted = time.monotonic()
        started = self.broker.start(timeout_s=KAFKA_START_TIMEOUT_S)
        broker_s = time.monotonic() - restarted
        health = (
            wait_for(lambda: self.system.view.health()["kafka"] == "up", "central to see Kafka") - restarted
        )
        return {
            "broker_start_s": broker_s,
            "broker_own_start_s": started.start_s,
            "health_up_s": health,
            "recovery_s": self._serve(self.spare, restarted),
        }
