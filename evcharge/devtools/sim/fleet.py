"""Simulated charging points: the real engine state machine and the real monitor, many to a process.

Each CP is an `EngineState` behind its own TCP health port, checked by a real
`Monitor` that registers and heartbeats with the real central. What is shared,
so that a thousand CPs cost the broker what one process costs: one producer for
every event, one consumer for every command, one clock for every meter.

There is no SQLite outbox here, unlike `evcharge engine`: the simulator measures
central, not the engines' durability. Events go straight to the shared producer,
in order per CP (a CP's lock is held while its events are enqueued). With
`signing`, each carries its CP's signature, as the real engine's do, with the key
its monitor kept from the join.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from evcharge.config import DEFAULT_STATE_DIR
from evcharge.cp import engine_commands
from evcharge.cp.engine_commands import CpCommand
from evcharge.cp.engine_key import EventSigner
from evcharge.cp.engine_state import CpEvent, EngineState
from evcharge.cp.health_port import serve_health_port
from evcharge.cp.monitor import Monitor
from evcharge.cp.settings import MonitorSettings, engine_key_path
from evcharge.devtools.sim import split
from evcharge.devtools.sim.report import SimStats
from evcharge.errors import ProtocolError
from evcharge.protocol import signing
from evcharge.protocol.messages import EndReason, KafkaMessage, SessionStarted, encode
from evcharge.protocol.topics import dead_letter, route
from evcharge.protocol.units import parse_price
from evcharge.runtime.inbox import Delivery
from evcharge.runtime.retry import describe
from evcharge.runtime.tcp import OwnedServer
from evcharge.runtime.waits import sleep_unless, wait_first

log = logging.getLogger("evcharge.sim")

SEND_TIMEOUT_S = 10.0
DELIVERY_TIMEOUT_S = 30.0
BATCH_S = 0.005
FAULT_SECONDS = (4.0, 8.0)  # long enough for the monitor's 3 failed checks to make central see BROKEN


class Publisher:
    """The one producer of the simulator; every delivery is checked by a callback, none awaited inline."""

    def __init__(self, producer: AIOKafkaProducer, stats: SimStats) -> None:
        self._producer = producer
        self._stats = stats
        self._in_flight: set[asyncio.Future[object]] = set()

    async def publish(self, message: KafkaMessage, proof: tuple[str, str] | None = None) -> bool:
        """Enqueue `message`; callers that need order per key call this in order (under a lock).

        `proof`: (header, HMAC key) of who wrote it, signed over the exact bytes sent.
        """
        payload = encode(message)
        headers = [(proof[0], signing.sign(proof[1], payload))] if proof else None
        return await self.publish_raw(*route(message), payload, headers)

    async def publish_raw(
        self, topic: str, key: str, payload: bytes, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> bool:
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                delivery = await self._producer.send(topic, payload, key=key.encode(), headers=headers)
        except Exception as exc:
            self._stats.error(f"cannot enqueue a message for {topic}: {describe(exc)}")
            return False
        self._in_flight.add(delivery)
        delivery.add_done_callback(self._delivered)
        return True

    def _delivered(self, delivery: asyncio.Future[object]) -> None:
        self._in_flight.discard(delivery)
        if delivery.cancelled():
            self._stats.error("a Kafka delivery was cancelled")
        elif delivery.exception() is not None:
            self._stats.error(f"Kafka delivery failed: {describe(delivery.exception())}")  # type: ignore[arg-type]

    async def flush(self, timeout_s: float = DELIVERY_TIMEOUT_S) -> None:
        """Wait for every enqueued message to be acknowledged (or count those that were not)."""
        if not self._in_flight:
            return
        _, late = await asyncio.wait(set(self._in_flight), timeout=timeout_s)
        if late:
            self._stats.error("Kafka deliveries not acknowledged at the end", len(late))


@dataclass(frozen=True)
class FleetSettings:
    cps: int
    cp_prefix: str
    central: tuple[tuple[str, int], ...]
    ramp_up_s: float
    session_s: float
    meter_interval_s: float
    fault_rate_per_min: float
    power_w: int = 22000
    join_token: str | None = None
    ca: Path | None = None  # central's monitor port speaks TLS, checked against this CA
    state_dir: Path = DEFAULT_STATE_DIR  # each monitor's secret and its engine's key
    signing: bool = False
    first_cp: int = 1  # a worker of `--processes N` runs CPs first_cp .. first_cp + cps - 1
    fleet_cps: int | None = None  # of a fleet this size (the ids' width); None: `cps`

    def cp_ids(self) -> list[str]:
        numbers = range(self.first_cp, self.first_cp + self.cps)
        return split.ids(self.cp_prefix, numbers, self.fleet_cps or self.cps)


class SimEngine:
    """One simulated engine: its state machine, its health port, and its events to Kafka."""

    def __init__(
        self,
        state: EngineState,
        publisher: Publisher,
        stats: SimStats,
        on_supply: Callable[[SimEngine, str], None],
        signer: EventSigner | None = None,
    ) -> None:
        self.state = state
        self._signer = signer
        self._on_supply = on_supply
        self._publisher = publisher
        self._stats = stats
        self._lock = asyncio.Lock()
        self._server = OwnedServer(self._serve_monitor, f"health {state.cp_id}")
        self.port = 0
        self.checked = False  # its monitor has asked at least once: worth a driver's request
        self.started_at = 0.0  # monotonic, when its health port opened
        self.fault_ends_at: float | None = None  # monotonic

    @property
    def cp_id(self) -> str:
        return self.state.cp_id

    async def start(self) -> int:
        # Port 0: the OS picks, so two simulators (or a test run) never collide.
        self.port = await self._server.start("127.0.0.1", 0)
        self.started_at = time.monotonic()
        return self.port

    async def close(self) -> None:
        await self._server.close()

    async def _publish(self, events: list[CpEvent]) -> None:
        key = self._signer.key() if self._signer is not None else None
        proof = (signing.SIGNATURE_HEADER, key) if key else None
        for event in events:
            if await self._publisher.publish(event, proof):
                self._stats.events_published += 1

    async def _transition(self, change: Callable[[float], list[CpEvent]]) -> list[CpEvent]:
        """Apply a change and enqueue its events under this CP's lock, so events leave in order."""
        async with self._lock:
            events = change(time.time())
            await self._publish(events)
            return events

    async def apply(self, command: CpCommand, withdrawn: set[str]) -> None:
        self._stats.commands[type(command).__name__] += 1
        step = None

        def change(now: float) -> list[CpEvent]:
            nonlocal step
            step = engine_commands.handle(self.state, command, instance="", now=now, withdrawn=withdrawn)
            return step.events

        events = await self._transition(change)
        if any(isinstance(event, SessionStarted) for event in events):
            self._on_supply(self, events[0].session_id)

    def supplying(self, session_id: str) -> bool:
        return self.state.supply is not None and self.state.supply.session_id == session_id

    async def tick(self, elapsed_ms: int, session_id: str) -> bool:
        """One meter reading of `session_id` if it still runs; True while it goes on."""
        if not self.supplying(session_id):
            return False
        await self._transition(lambda now: self.state.tick(elapsed_ms, now))
        return self.supplying(session_id)

    async def raise_fault(self, lasting_s: float) -> None:
        self.fault_ends_at = time.monotonic() + lasting_s
        self._stats.faults_injected += 1
        await self._transition(self.state.raise_fault)

    async def clear_fault(self) -> None:
        self.fault_ends_at = None
        await self._transition(lambda now: self.state.clear_fault())

    async def unplug(self) -> bool:
        return bool(await self._transition(lambda now: self.state.end(EndReason.UNPLUGGED, now)))

    async def _serve_monitor(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The real health protocol, as the real engine serves it (no local controls here)."""
        await serve_health_port(
            reader, writer, self.state, on_check=self._checked, on_protocol_error=self._protocol_error
        )

    def _checked(self) -> None:
        self.checked = True

    def _protocol_error(self, peer: str, exc: ProtocolError) -> None:
        self._stats.error(f"health port: protocol error from {peer}: {exc}")


class Fleet:
    """Every simulated CP: started over the ramp-up, ticked by one clock, stopped in order."""

    def __init__(self, settings: FleetSettings, publisher: Publisher, stats: SimStats, rng: random.Random):
        self.settings = settings
        self._publisher = publisher
        self._stats = stats
        self._rng = rng
        self.engines: dict[str, SimEngine] = {}
        self.ready: list[SimEngine] = []  # checked by their monitor: what drivers pick from
        self._monitor_stops: list[asyncio.Event] = []
        self.started_at: float | None = None  # monotonic, when the first CP started
        # The meter schedule: (due, order, engine, session_id), earliest first.
        self._due: list[tuple[float, int, SimEngine, str]] = []
        self._order = itertools.count()
        self._new_supply = asyncio.Event()
        self.all_started = asyncio.Event()

    def pick(self) -> str | None:
        """A random CP whose monitor is up (a CP that central cannot know yet is not worth asking)."""
        if len(self.ready) < len(self.engines):
            ready = set(self.ready)
            self.ready.extend(e for e in self.engines.values() if e.checked and e not in ready)
        return self._rng.choice(self.ready).cp_id if self.ready else None

    async def on_commands(self, deliveries: list[Delivery[CpCommand]]) -> None:
        """The one inbox of `cp_commands`: each command goes to the engine its key names."""
        withdrawn = engine_commands.withdrawn(d.message for d in deliveries)
        for delivery in deliveries:
            command = delivery.message
            engine = self.engines.get(command.cp_id)
            if engine is None:
                continue  # a CP of another simulator or a real engine on the same broker
            await engine.apply(command, withdrawn)

    async def dead_letter(self, record: object, reason: str) -> None:
        """Set aside like a real engine does; the inbox's warning is counted as an error of the run."""
        r: Any = record
        await self._publisher.publish_raw(
            *dead_letter(r.topic, r.partition, r.offset, r.key, r.value, "sim-fleet", reason)
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Start the CPs over the ramp-up, run the clock until `stop`, then end supplies and shut down.

        Shutdown order: end any supply still running (so central closes it with
        a ticket), stop the monitors (central sees them leave), and only then
        close the health ports, so no monitor ever reports its engine broken.
        """
        try:
            async with asyncio.TaskGroup() as tasks:
                clock = tasks.create_task(self._clock(stop), name="fleet clock")
                await self._start_cps(stop, tasks)
                self.all_started.set()
                await stop.wait()
                await clock
                for engine in self.engines.values():
                    if await engine.unplug():
                        self._stats.unplugged_at_end += 1
                for monitor_stop in self._monitor_stops:
                    monitor_stop.set()
        finally:
            await asyncio.gather(*(engine.close() for engine in self.engines.values()))

    async def _start_cps(self, stop: asyncio.Event, tasks: asyncio.TaskGroup) -> None:
        s = self.settings
        cp_ids = s.cp_ids()
        step_s = s.ramp_up_s / len(cp_ids)
        self.started_at = time.monotonic()
        for n, cp_id in enumerate(cp_ids):
            due = self.started_at + n * step_s
            if await sleep_unless(stop, max(0.0, due - time.monotonic())):
                return
            price = parse_price(f"{self._rng.uniform(0.25, 0.45):.2f}")
            state = EngineState(
                cp_id=cp_id, power_w=s.power_w, price=price, max_session_ms=round(s.session_s * 1000)
            )
            # Events come of commands, which follow the join: by then the monitor has kept the key.
            signer = EventSigner(engine_key_path(s.state_dir, cp_id), required=True) if s.signing else None
            engine = self.engines[cp_id] = SimEngine(
                state, self._publisher, self._stats, self._supply_began, signer
            )
            try:
                port = await engine.start()
            except OSError as exc:
                self._stats.error(f"cannot open a health port: {describe(exc)}")
                continue
            monitor = Monitor(
                MonitorSettings(
                    cp_id=cp_id,
                    engine=f"127.0.0.1:{port}",
                    central=s.central,
                    location=f"simulated ({s.cp_prefix})",
                    price=price,
                    max_w=s.power_w,
                    join_token=s.join_token,
                    ca=s.ca,
                    state_dir=s.state_dir,
                )
            )
            # One stop per monitor: a monitor refused as a duplicate sets its own stop,
            # which must not stop the rest of the fleet.
            monitor_stop = asyncio.Event()
            self._monitor_stops.append(monitor_stop)
            if stop.is_set():
                monitor_stop.set()
            tasks.create_task(self._run_monitor(monitor, monitor_stop), name=f"monitor {cp_id}")
            self._stats.cps_started += 1

    async def _run_monitor(self, monitor: Monitor, stop: asyncio.Event) -> None:
        """A monitor that fails is counted, never allowed to take the fleet down with it."""
        try:
            code = await monitor.run(stop)
        except Exception as exc:
            self._stats.error(f"monitor crashed: {describe(exc)}")
            log.warning("%s monitor crashed: %s", monitor.settings.cp_id, describe(exc))
            return
        if code:
            self._stats.error(f"monitor exited with code {code}")

    def _supply_began(self, engine: SimEngine, session_id: str) -> None:
        due = time.monotonic() + self.settings.meter_interval_s
        heapq.heappush(self._due, (due, next(self._order), engine, session_id))
        self._new_supply.set()

    async def _clock(self, stop: asyncio.Event) -> None:
        """One task for every meter: each session gets a reading one interval after it began, and so on.

        A schedule rather than a tick of every engine at once keeps each
        session's own cadence, as `evcharge engine` does, so "request → ticket"
        is the session's length plus what the system added. The same task
        injects and clears the simulated faults once per interval.
        """
        interval = self.settings.meter_interval_s
        interval_ms = max(1, round(interval * 1000))
        fault_chance = self.settings.fault_rate_per_min * interval / 60.0
        next_fault_round = time.monotonic() + interval
        while not stop.is_set():
            wake_at = min(self._due[0][0] if self._due else math.inf, next_fault_round)
            self._new_supply.clear()
            await wait_first(stop, self._new_supply, timeout_s=max(0.0, wake_at - time.monotonic()))
            now = time.monotonic()
            # Readings due within a few milliseconds go together: fewer wake-ups, same cadence.
            while self._due and self._due[0][0] <= now + BATCH_S and not stop.is_set():
                due, _, engine, session_id = heapq.heappop(self._due)
                if await engine.tick(interval_ms, session_id):
                    # After a stall, carry on from now instead of a burst of catch-up readings.
                    following = due + interval if due + interval > now else now + interval
                    heapq.heappush(self._due, (following, next(self._order), engine, session_id))
            if now >= next_fault_round:
                next_fault_round = now + interval
                if fault_chance or any(e.fault_ends_at is not None for e in self.engines.values()):
                    await self._faults(now, fault_chance)

    async def _faults(self, now: float, chance: float) -> None:
        for engine in list(self.engines.values()):
            if engine.fault_ends_at is not None:
                if now >= engine.fault_ends_at:
                    await engine.clear_fault()
            elif chance and self._rng.random() < chance:
                await engine.raise_fault(self._rng.uniform(*FAULT_SECONDS))
