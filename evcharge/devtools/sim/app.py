"""`evcharge sim`: a fleet of simulated CPs and drivers in one process against a real central and Kafka.

The run: topics and the shared producer and consumers first, then the CPs and
drivers start over the ramp-up, load runs for the duration, the drivers finish
what they wait for, the fleet shuts down in order, and the report is printed.
As a worker of `--processes N` (`pool`), the same run covers the worker's share
of the fleet; it starts on its parent's go, and its progress and report go to
the parent, which watches central and prints the one report.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import random
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from rich.console import Console

from evcharge.devtools.sim import merge
from evcharge.devtools.sim.drivers import DriverFleet, DriverSettings
from evcharge.devtools.sim.fleet import Fleet, FleetSettings, Publisher
from evcharge.devtools.sim.link import ParentLink
from evcharge.devtools.sim.report import SimStats, render
from evcharge.devtools.sim.settings import SimSettings
from evcharge.devtools.sim.wire import Progress, Ready, Report
from evcharge.protocol.topics import CODECS, TOPICS, Topic
from evcharge.runtime.inbox import Inbox, Subscription
from evcharge.runtime.kafka import ensure_topics, new_producer
from evcharge.runtime.retry import Backoff, describe, is_retriable
from evcharge.runtime.shutdown import EXIT_INTERRUPTED
from evcharge.runtime.waits import sleep_unless, wait_first

log = logging.getLogger("evcharge.sim")

STARTUP_TIMEOUT_S = 60.0  # Kafka topics, producer, consumers, central's API
HTTP_TIMEOUT_S = 5.0
REGISTRATION_POLL_S = 0.5
PROGRESS_EVERY_S = 5.0
LAG_PROBE_S = 0.25
GO_TIMEOUT_S = 5 * STARTUP_TIMEOUT_S  # a worker's wait for its parent's go: beyond the parent's own
# Warnings the simulated faults cause on purpose; any other warning is an error.
FAULT_WARNINGS = ("engine BROKEN",)


class _Listed(msgspec.Struct):
    cp_id: str
    status: str


class _Listing(msgspec.Struct):
    """Of central's `GET /cp`, what the registration watch reads: decoded into these two fields
    alone, a listing of 10,000 CPs costs each poll a few milliseconds, not tens."""

    charging_points: list[_Listed]


_LISTING = msgspec.json.Decoder(_Listing)


class _NotStarted(Exception):
    """A start-up step failed (already counted) or the run was interrupted while starting."""


class _WarningCounter(logging.Handler):
    """Counts what the in-process monitors and runtime warn about: in a healthy run nothing does."""

    def __init__(self, stats: SimStats, expected: tuple[str, ...]) -> None:
        super().__init__(logging.WARNING)
        self._stats = stats
        self._expected = expected

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("evcharge.sim"):
            return  # the simulator counts its own problems where they happen
        kind = f"{record.name}: {record.msg}"
        if any(text in str(record.msg) for text in self._expected):
            self._stats.warnings[kind] += 1
        else:
            self._stats.error(kind)


class Simulation:
    def __init__(
        self, settings: SimSettings, console: Console | None = None, link: ParentLink | None = None
    ) -> None:
        """`link`: to the parent, when this process is a worker of `--processes N`."""
        settings.check()
        self.settings = settings
        self.link = link
        share = self.share = settings.share
        self.stats = SimStats(cps=share.cps, drivers=share.drivers)
        # A worker's stdout carries its messages to the parent: what it would print goes to stderr.
        self.console = console or Console(
            highlight=False, width=None if _is_tty() else 140, stderr=link is not None
        )
        self.run_id = uuid.uuid4().hex[:8]
        self.seen_at: dict[str, float] = {}  # monotonic, when central's API first showed each CP ON
        self.fleet_settings = FleetSettings(
            cps=share.cps,
            first_cp=share.first_cp,
            fleet_cps=settings.cps,
            cp_prefix=settings.cp_prefix,
            central=settings.central,
            ramp_up_s=settings.ramp_up_s,
            session_s=settings.session_s,
            meter_interval_s=settings.meter_interval_s,
            fault_rate_per_min=settings.fault_rate_per_min,
            join_token=settings.join_token,
            ca=settings.ca,
            state_dir=settings.state_dir,
            signing=settings.signing,
        )
        self.driver_settings = DriverSettings(
            drivers=share.drivers,
            first_driver=share.first_driver,
            fleet_drivers=settings.drivers,
            driver_prefix=settings.driver_prefix,
            request_rate=share.request_rate,
            ramp_up_s=settings.ramp_up_s,
            start_after_s=settings.drivers_after_s,
            session_s=settings.session_s,
        )
        self._abort = asyncio.Event()
        self._crashed = False
        self._started = (0.0, resource.getrusage(resource.RUSAGE_SELF))  # when the run began
        self._fleet: Fleet | None = None

    async def run(self, signalled: asyncio.Event) -> int:
        """The whole run; `signalled` is set by the first SIGINT/SIGTERM (`run_role`)."""
        s = self.settings
        # A worker also stops when its parent says so or is gone. That stop is an event of its own:
        # the signals' one set by it would make the signal that follows (Ctrl-C reaches every process
        # on the terminal, the bench stops a whole process group) a second one, which exits at once.
        stop = asyncio.Event() if self.link is not None else signalled
        self._abort = stop
        self._started = (time.monotonic(), resource.getrusage(resource.RUSAGE_SELF))
        gc.freeze()  # what the imports created lives as long as the process: no need to scan it
        counter = _WarningCounter(self.stats, FAULT_WARNINGS if s.fault_rate_per_min else ())
        evcharge_log, monitor_log = logging.getLogger("evcharge"), logging.getLogger("evcharge.monitor")
        monitor_level = monitor_log.level
        if s.log_level.lower() != "debug":
            monitor_log.setLevel(logging.WARNING)  # one INFO line per CP would drown everything
        evcharge_log.addHandler(counter)
        watchers = []
        if self.link is not None:
            watchers = [
                asyncio.create_task(self.link.listen(stop)),
                asyncio.create_task(_pass_on(signalled, stop)),
            ]
        try:
            await self._run(stop)
        finally:
            evcharge_log.removeHandler(counter)
            monitor_log.setLevel(monitor_level)
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        self.stats.interrupted = stop.is_set() and not self._crashed
        self._finish()
        if self.stats.total_errors:
            return 1
        return EXIT_INTERRUPTED if self.stats.interrupted else 0

    async def _run(self, stop: asyncio.Event) -> None:
        s = self.settings
        kafka = s.kafka_access
        producer = new_producer(kafka)
        try:
            await self._startup("Kafka topics", lambda: ensure_topics(kafka, TOPICS, s.partitions), stop)
            await self._startup("the Kafka producer", producer.start, stop, retry=False)
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
                # An https central is checked against --ca, as every role checks it.
                connector=aiohttp.TCPConnector(ssl=s.tls.client_context() or True),
            ) as http:
                await self._startup("central's HTTP API", lambda: self._get(http, "/health"), stop)
                tokens = await self._startup("the drivers' enrolment", lambda: self._enrol(http), stop)
                await self._load(Publisher(producer, self.stats), http, stop, tokens)
                if self.link is None:  # a worker's parent looks, once for every worker
                    await self._final_look(http)
        except _NotStarted:
            pass  # counted and said where it happened
        finally:
            try:
                async with asyncio.timeout(STARTUP_TIMEOUT_S):
                    await producer.stop()
            except Exception as exc:
                self.stats.error(f"cannot stop the Kafka producer cleanly: {describe(exc)}")

    async def _load(
        self,
        publisher: Publisher,
        http: aiohttp.ClientSession,
        stop: asyncio.Event,
        tokens: dict[str, str],
    ) -> None:
        s = self.settings
        rng = random.Random(self.share.seed)
        fleet = self._fleet = Fleet(self.fleet_settings, publisher, self.stats, rng)
        drivers = DriverFleet(
            self.driver_settings,
            publisher,
            fleet.pick,
            self.stats,
            rng,
            tokens,
        )
        kafka = s.kafka_access
        consumers = [
            Inbox(
                bootstrap=kafka,
                group_id=f"sim-{self.run_id}-{name}",
                subscriptions=[Subscription(topic)],
                codecs=CODECS,
                topics=TOPICS,
                handle=handle,
                dead_letter=set_aside,
                partitions=s.partitions,
                new_group_starts_at_end=True,
                name=f"sim {name}",
            )
            for name, topic, handle, set_aside in (
                ("commands", Topic.CP_COMMANDS, fleet.on_commands, fleet.dead_letter),
                ("updates", Topic.DRIVER_UPDATES, drivers.on_updates, drivers.dead_letter),
            )
        ]
        consumers_stop, fleet_stop, drivers_stop, watch_stop = (asyncio.Event() for _ in range(4))
        async with asyncio.TaskGroup() as tasks:
            for consumer in consumers:
                tasks.create_task(self._guard("a Kafka consumer", consumer.run(consumers_stop)))
            if await self._consumers_ready(consumers, stop) and await self._go(stop):
                started = time.monotonic()
                tasks.create_task(self._guard("the lag probe", self._probe_lag(started, watch_stop)))
                tasks.create_task(self._guard("the progress line", self._progress(started, watch_stop)))
                if self.link is None:
                    planned = set(self.fleet_settings.cp_ids())
                    watch = self._watch_registration(http, planned, lambda: fleet.started_at is not None)
                    tasks.create_task(self._guard("the registration watch", watch(watch_stop)))
                tasks.create_task(self._guard("the GC freeze", _freeze_when(fleet.all_started, watch_stop)))
                fleet_task = tasks.create_task(self._guard("the fleet", fleet.run(fleet_stop)))
                drivers_task = tasks.create_task(self._guard("the drivers", drivers.run(drivers_stop, stop)))
                await sleep_unless(stop, s.ramp_up_s + s.duration_s)
                self.stats.load_s = time.monotonic() - started
                # Order: no new requests, answers awaited; then sessions end and monitors leave.
                drivers_stop.set()
                await drivers_task
                self.stats.elapsed_s = time.monotonic() - started
                fleet_stop.set()
                await fleet_task
                await publisher.flush()
                watch_stop.set()
            consumers_stop.set()
        if self.link is None and fleet.started_at is not None:
            merge.registration(self.stats, self.seen_at, _started_at(fleet), fleet.started_at)
            if self.stats.registration_s is None and not stop.is_set():
                missing = s.cps - self.stats.cps_registered
                self.stats.error("CP never shown ON at central during the run", missing)

    async def _go(self, stop: asyncio.Event) -> bool:
        """A worker says it is ready and waits for its parent's go: every worker starts together."""
        if self.link is None:
            return True
        self.link.send(Ready(os.getpid()))
        await wait_first(self.link.go, stop, timeout_s=GO_TIMEOUT_S)
        if not self.link.go.is_set() and not stop.is_set():
            self.stats.error(f"no go from the parent within {GO_TIMEOUT_S:g} s")
        return self.link.go.is_set() and not stop.is_set()

    async def _consumers_ready(self, consumers: list[Inbox], stop: asyncio.Event) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for consumer in consumers:
            await wait_first(consumer.ready, stop, timeout_s=max(0.0, deadline - time.monotonic()))
            if stop.is_set():
                return False
            if not consumer.ready.is_set():
                self.stats.error(f"Kafka consumers not ready within {STARTUP_TIMEOUT_S:g} s")
                return False
        return True

    async def _startup(
        self, what: str, step: Callable[[], Awaitable[Any]], stop: asyncio.Event, *, retry: bool = True
    ) -> Any:
        """Run a start-up step, retried until it works or the deadline passes (then: an error)."""
        backoff = Backoff(max_delay_s=2.0)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        first = True
        while not stop.is_set():
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    result = await step()
            except Exception as exc:
                retriable = is_retriable(exc) or isinstance(exc, (LookupError, aiohttp.ClientError))
                if not retry or not retriable or time.monotonic() >= deadline:
                    self.stats.error(f"cannot start: {what}: {describe(exc)}")
                    self.console.print(f"cannot start: {what}: {describe(exc)}", style="red", markup=False)
                    raise _NotStarted from None
                (log.warning if first else log.debug)("waiting for %s (%s)", what, describe(exc))
                first = False
                await sleep_unless(stop, backoff.next_delay())
            else:
                return result
        raise _NotStarted

    async def _guard(self, what: str, work: Awaitable[None]) -> None:
        """A part of the run that fails is an error in the report and ends the run, never a traceback."""
        try:
            await work
        except Exception as exc:
            self.stats.error(f"{what} failed: {describe(exc)}")
            log.error("%s failed: %s", what, describe(exc), exc_info=exc)
            self._crashed = True
            self._abort.set()  # the run's own stop: the rest winds down in order

    async def _enrol(self, http: aiohttp.ClientSession) -> dict[str, str]:
        """Each driver's token from central (the operator's POST /drivers); none without the
        operator's token, when central takes any driver's name."""
        token = self.settings.operator_token
        if token is None:
            return {}
        ids = self.driver_settings.driver_ids()
        url = self.settings.central_url.rstrip("/") + "/drivers"
        tokens = {}
        for driver_id in ids:
            async with http.post(
                url, json={"driver_id": driver_id}, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                response.raise_for_status()
                tokens[driver_id] = (await response.json())["token"]
        return tokens

    async def _get(
        self, http: aiohttp.ClientSession, path: str, decoder: msgspec.json.Decoder[Any] | None = None
    ) -> Any:
        """Central's answer to GET `path`: JSON, or decoded by `decoder` into only what it reads."""
        async with http.get(self.settings.central_url.rstrip("/") + path) as response:
            response.raise_for_status()
            return await response.json() if decoder is None else decoder.decode(await response.read())

    def _watch_registration(
        self, http: aiohttp.ClientSession, planned: set[str], begun: Callable[[], bool]
    ) -> Callable[[asyncio.Event], Awaitable[None]]:
        """Poll central's API until every planned CP has been seen ON, once the fleet has `begun`;
        when each was first seen goes into `seen_at` (`merge.registration` makes the figures)."""

        async def watch(stop: asyncio.Event) -> None:
            while not await sleep_unless(stop, REGISTRATION_POLL_S):
                if not begun():
                    continue
                try:
                    listed = (await self._get(http, "/cp", _LISTING)).charging_points
                except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as exc:
                    self.stats.error(f"central's GET /cp failed: {describe(exc)}")
                    continue
                now = time.monotonic()
                for cp in listed:
                    cp_id = cp.cp_id
                    if cp_id in planned and cp.status in ("ON", "SUPPLYING") and cp_id not in self.seen_at:
                        self.seen_at[cp_id] = now
                self.stats.cps_registered = len(self.seen_at)
                if len(self.seen_at) == len(planned):
                    return

        return watch

    async def _progress(self, started: float, stop: asyncio.Event) -> None:
        while not await sleep_unless(stop, PROGRESS_EVERY_S):
            if self.link is not None:
                self.link.send(Progress(self.stats))
            else:
                self.console.print(self.stats.progress_line(time.monotonic() - started), markup=False)

    async def _probe_lag(self, started: float, stop: asyncio.Event) -> None:
        """How late the event loop wakes up: if the simulator itself is overloaded, its figures lie."""
        while True:
            expected = time.monotonic() + LAG_PROBE_S
            if await sleep_unless(stop, LAG_PROBE_S):
                return
            lag = max(0.0, time.monotonic() - expected)
            if lag > max(self.stats.loop_lag_s, default=0.0):
                self.stats.loop_lag_worst_at_s = expected - started
            self.stats.loop_lag_s.append(lag)

    async def _final_look(self, http: aiohttp.ClientSession) -> None:
        """What central lists at the end: our CPs, and its own counters."""
        try:
            listed = (await self._get(http, "/cp", _LISTING)).charging_points
            health = await self._get(http, "/health")
        except (aiohttp.ClientError, TimeoutError, KeyError, msgspec.DecodeError) as exc:
            self.stats.error(f"central's API failed at the end: {describe(exc)}")
            return
        ours = set(self.fleet_settings.cp_ids())
        self.stats.cps_listed = sum(1 for cp in listed if cp.cp_id in ours)
        self.stats.central_counters = dict(health.get("counters", {}))

    def _own_process(self) -> dict[str, float]:
        """This process's CPU since the run began, and its peak memory."""
        began, usage = self._started[1], resource.getrusage(resource.RUSAGE_SELF)
        return merge.process_figures(
            usage.ru_utime - began.ru_utime,
            usage.ru_stime - began.ru_stime,
            time.monotonic() - self._started[0],
            usage.ru_maxrss / 1024,  # Linux reports KiB
        )

    def _finish(self) -> None:
        self.stats.process = {**self._own_process(), "processes": 1}
        if self.link is not None:
            fleet = self._fleet
            self.link.send(
                Report(
                    self.stats,
                    started_at=_started_at(fleet) if fleet is not None else {},
                    first_started=fleet.started_at if fleet is not None else None,
                    crashed=self._crashed,
                )
            )
            return
        self._print_report()

    def _print_report(self) -> None:
        self.console.print(render(self.stats))
        if self.settings.json_path is not None:
            settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.settings).items()}
            self.settings.json_path.parent.mkdir(parents=True, exist_ok=True)
            self.settings.json_path.write_text(json.dumps(self.stats.to_json(settings), indent=2) + "\n")
            self.console.print(f"report written to {self.settings.json_path}")


async def _freeze_when(started: asyncio.Event, stop: asyncio.Event) -> None:
    """Once every CP exists, keep its long-lived objects out of the garbage collector's scans.

    With a thousand monitors, engines and their connections in one process a
    full collection took 0.1-0.9 s, every few seconds; a pause above 0.8 s
    made the monitors' health checks of their (in-process) engines time out:
    errors of the simulator, not of the system it measures.
    """
    await wait_first(started, stop)
    if started.is_set():
        gc.freeze()


async def _pass_on(signalled: asyncio.Event, stop: asyncio.Event) -> None:
    await signalled.wait()
    stop.set()


def _started_at(fleet: Fleet) -> dict[str, float]:
    return {cp_id: engine.started_at for cp_id, engine in fleet.engines.items() if engine.started_at}


def _is_tty() -> bool:
    return sys.stdout.isatty()
