"""OCPP chargers through one `evcharge gateway` process: how many it holds, how many transaction
messages it answers per second, call → result latency, and a reconnect storm.

- join: `chargers` simulated chargers (the `ocpp` library's own charge points, 1.6 and
  2.0.1 alternately) connect at once with the join token: time until central shows
  every one ON, BootNotification call → result under that load, the gateway's memory
  and CPU with all of them connected;
- storm: the gateway SIGKILLed with every charger connected and started again: time
  from the restart until central shows every one ON again, and the errors the chargers
  saw (refused handshakes, CallErrors, calls never answered);
- low load: ten chargers boot one after the other (BootNotification), one charges and
  meters five times a second (MeterValues / TransactionEvent(Updated));
- throughput: `metering` chargers charge and meter as fast as they are answered, one
  call at a time each (a charger's own rule): transaction messages answered per second
  and their call → result latency; then every session ends and central's record of it
  is compared with the charger's own meter, to the Wh.

The chargers run on the bench's own event loop, in the bench process, beside central,
the gateway and Kafka on the same cores: the figures are what one machine does with all of it.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.loop import LoopThread
from bench.procs import cpu_s, rss_mb
from bench.stats import summary
from bench.system import BenchSystem, new_system
from evcharge.devtools.commands import child
from evcharge.devtools.supervisor import Child
from evcharge.gateway.settings import GatewaySettings
from evcharge.gateway.sim import SimCharger, run_fleet
from evcharge.runtime.ports import free_ports
from evcharge.runtime.retry import Backoff

JOIN = "bench-join-token"
ALL_ON_TIMEOUT_S = 300.0
THROUGHPUT_WINDOW_S = 15.0
LOW_LOAD_METER_S = 5.0
Say = Callable[[str], None]


class GatewayBench:
    def __init__(self, system: BenchSystem, say: Say) -> None:
        self.system = system
        self.say = say
        self.port, self.metrics_port = free_ports(2)
        self.url = f"ws://127.0.0.1:{self.port}/ocpp"
        self.process: Child | None = None
        self.settings = GatewaySettings(
            port=self.port,
            metrics_port=self.metrics_port,
            kafka=system.kafka,
            central=(("127.0.0.1", system.tcp_port),),
            central_url=system.url,
            state_dir=system.state_dir,
            join_token=JOIN,
            gateway_id="gateway-bench",
            log_level="warning",
        )

    def start(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.process = child("gateway", self.settings, self.system.logs / "gateway.log").start()

    def statuses(self) -> dict[str, str]:
        code, body = self.system.view.get("/cp")
        if code != 200:
            raise OSError(f"GET /cp answered {code}")
        return {cp["cp_id"]: cp["status"] for cp in body["charging_points"]}

    async def until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll (in a thread: it asks central over HTTP) until true; seconds it took."""
        started = time.monotonic()
        while True:
            try:
                if await asyncio.to_thread(predicate):
                    return time.monotonic() - started
            except OSError:
                pass  # central or the gateway not answering yet
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{what}: not within {timeout_s:g} s")
            await asyncio.sleep(0.1)

    async def all_on(self, chargers: list[SimCharger], what: str) -> float:
        wanted = [c.cp_id for c in chargers]

        def on() -> bool:
            statuses = self.statuses()
            return all(statuses.get(cp_id) == "ON" for cp_id in wanted)

        return await self.until(on, ALL_ON_TIMEOUT_S, what)

    def usage(self) -> dict[str, Any]:
        pid = self.process.pid if self.process else None
        return {"gateway_rss_mb": _round(rss_mb(pid)), "gateway_cpu_s": _round(cpu_s(pid))}


def measure(
    loop: LoopThread, root: Path, kafka: str, chargers: int, metering: int, say: Say
) -> dict[str, Any]:
    system = new_system(
        root,
        kafka,
        "gateway",
        central_overrides={"require_auth": True, "join_token": JOIN, "operator_token": "bench-op"},
    )
    bench = GatewayBench(system, say)
    out: dict[str, Any] = {"chargers": chargers, "metering_chargers": metering}
    fleet = Fleet()
    # The gateway is started and killed from here, the main thread (it dies with its parent, so
    # it must be started by the main thread); the chargers run on the loop's thread throughout.
    try:
        system.start_central()
        bench.start()
        loop.run(_join(bench, fleet, chargers, out), ALL_ON_TIMEOUT_S + 300)
        say("  the gateway SIGKILLed with every charger connected, and started again")
        loop.run(fleet.reset_counters(), 10)  # the storm's errors from here on
        assert bench.process is not None
        bench.process.kill()
        restarted = time.monotonic()
        bench.start()
        loop.run(_storm(bench, fleet, restarted, out), ALL_ON_TIMEOUT_S + 120)
        loop.run(_low_load(bench, fleet, out), 120)
        loop.run(_throughput(bench, fleet, metering, out), 360)
    finally:
        loop.run(fleet.stop(), 90)
        if bench.process is not None:
            bench.process.stop()
        system.stop_all()
    for key in ("join_boot_s", "low_load_boot_s", "low_load_meter_s", "loaded_meter_s"):
        out.get(key, {}).pop("samples", None)  # thousands of them: the summary is the figure
    return out


class Fleet:
    """The simulated chargers, run on the loop's thread from `_join` until `stop`."""

    def __init__(self) -> None:
        self.chargers: list[SimCharger] = []
        self._stop = asyncio.Event()
        self._running: asyncio.Task[None] | None = None

    def run(self, chargers: list[SimCharger]) -> None:
        self.chargers = chargers
        self._running = asyncio.create_task(run_fleet(chargers, self._stop))

    async def reset_counters(self) -> None:
        for charger in self.chargers:
            charger.counters = type(charger.counters)()

    async def stop(self) -> None:
        self._stop.set()
        if self._running is not None:
            await asyncio.wait_for(self._running, 60)


async def _join(bench: GatewayBench, fleet: Fleet, count: int, out: dict[str, Any]) -> None:
    say, system = bench.say, bench.system
    await bench.until(lambda: _answers(bench.metrics_port), 60, "the gateway's metrics endpoint")
    chargers = [
        SimCharger(
            f"GWB{i:04d}-{system.tag}",
            bench.url,
            version="1.6" if i % 2 else "2.0.1",
            password=JOIN,
            response_timeout_s=30,
            meter_interval_s=0.02,
            max_backlog=1,
            reconnect=Backoff(initial_delay_s=0.5, max_delay_s=3.0, jitter=0.9),
        )
        for i in range(count)
    ]
    say(f"{count} OCPP chargers join one gateway at once")
    fleet.run(chargers)
    out["join_all_on_s"] = round(await bench.all_on(chargers, f"all {count} chargers ON"), 2)
    # Each charger is then given a password of its own and reconnects with it.
    await bench.until(lambda: all(c.password != JOIN for c in chargers), 120, "every charger's password")
    await bench.all_on(chargers, "all ON with their own passwords")
    out["join_boot_s"] = summary(_latencies(chargers, "BootNotification"))
    before = bench.usage()
    await asyncio.sleep(5)  # all connected, nothing charging: the idle cost
    after = bench.usage()
    out["connected"] = sum(c.connected.is_set() for c in chargers)
    out["gateway_rss_mb"] = after["gateway_rss_mb"]
    out["gateway_idle_cpu_percent"] = _percent(before["gateway_cpu_s"], after["gateway_cpu_s"], 5)
    out["join_errors"] = _errors(chargers)


async def _storm(bench: GatewayBench, fleet: Fleet, restarted: float, out: dict[str, Any]) -> None:
    chargers = fleet.chargers
    await bench.until(
        lambda: sum(s == "DISCONNECTED" for s in bench.statuses().values()) >= len(chargers) // 2,
        60,
        "central to see the chargers gone",
    )
    await bench.all_on(chargers, f"all {len(chargers)} chargers ON again")
    out["storm_all_on_s"] = round(time.monotonic() - restarted, 2)
    out["storm_errors"] = _errors(chargers)
    bench.say(f"  all ON again {out['storm_all_on_s']} s after the restart, errors {out['storm_errors']}")


async def _low_load(bench: GatewayBench, fleet: Fleet, out: dict[str, Any]) -> None:
    system = bench.system
    bench.say("  low load: ten chargers boot one after the other, one meters five times a second")
    late = [SimCharger(f"GWL{i}-{system.tag}", bench.url, version="1.6" if i % 2 else "2.0.1",
                       password=JOIN) for i in range(10)]  # fmt: skip
    for charger in late:
        alone = asyncio.Event()
        task = asyncio.create_task(charger.run(alone))
        await bench.until(_booted(charger), 30, "a late charger's boot")
        alone.set()
        await task
    quiet = fleet.chargers[-1]
    quiet.meter_interval_s, quiet.max_backlog = 0.2, None
    quiet.counters.latencies.clear()
    if await quiet.swipe(system.ident("bench-quiet")) != "Accepted":
        raise AssertionError("central did not authorise the quiet charger's card")
    await asyncio.sleep(LOW_LOAD_METER_S)
    quiet.end("Local")
    await bench.until(quiet.settled, 30, "the quiet charger's stop answered")
    out["low_load_boot_s"] = summary(_latencies(late, "BootNotification"))
    out["low_load_meter_s"] = summary(_meters([quiet]))


async def _throughput(bench: GatewayBench, fleet: Fleet, metering: int, out: dict[str, Any]) -> None:
    system = bench.system
    bench.say(f"  throughput: {metering} chargers meter as fast as they are answered")
    busy = fleet.chargers[:metering]
    for charger in busy:
        charger.counters.latencies.clear()
    answers = await asyncio.gather(*(c.swipe(system.ident(f"bench-d{i}")) for i, c in enumerate(busy)))
    if set(answers) != {"Accepted"}:
        raise AssertionError(f"cards not authorised: {sorted(set(answers))}")
    answered = sum(c.counters.answered for c in busy)
    cpu = bench.usage()["gateway_cpu_s"]
    await asyncio.sleep(THROUGHPUT_WINDOW_S)
    answered = sum(c.counters.answered for c in busy) - answered
    out["transaction_messages_per_s"] = round(answered / THROUGHPUT_WINDOW_S, 1)
    out["throughput_gateway_cpu_percent"] = _percent(cpu, bench.usage()["gateway_cpu_s"], THROUGHPUT_WINDOW_S)
    out["loaded_meter_s"] = summary(_meters(busy))
    for charger in busy:
        charger.end("Local")
    await bench.until(lambda: all(c.settled() for c in busy), 120, "every stop answered")
    out["billing"] = await _billing(bench, busy)
    out["throughput_errors"] = _errors(busy)
    bench.say(f"  {out['transaction_messages_per_s']} transaction messages/s")


async def _billing(bench: GatewayBench, chargers: list[SimCharger]) -> dict[str, int]:
    """Central's record of each session against the charger's own meter (stop - start, Wh)."""
    wanted = {c.cp_id for c in chargers}

    def sessions() -> list[dict[str, Any]]:
        code, body = bench.system.view.get("/sessions?limit=1000")
        if code != 200:
            raise OSError(f"GET /sessions answered {code}")
        return [s for s in body["sessions"] if s["cp_id"] in wanted and s["state"] == "ended"]

    await bench.until(lambda: len(sessions()) >= len(wanted), 60, "every metered session ended")
    billed = {s["cp_id"]: s["wh"] for s in await asyncio.to_thread(sessions)}
    exact = sum(1 for c in chargers if billed.get(c.cp_id) == c.traces[-1].wh)
    return {"sessions": len(chargers), "billed_as_metered": exact}


def _booted(charger: SimCharger) -> Callable[[], bool]:
    return lambda: charger.booted


def _answers(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
        return bool(response.status == 200)


def _latencies(chargers: list[SimCharger], action: str) -> list[float]:
    return [x for c in chargers for x in c.counters.latencies.get(action, [])]


def _meters(chargers: list[SimCharger]) -> list[float]:
    """A reading's call → result: MeterValues (1.6) and TransactionEvent (2.0.1, mostly Updated)."""
    return _latencies(chargers, "MeterValues") + _latencies(chargers, "TransactionEvent")


def _errors(chargers: list[SimCharger]) -> dict[str, int]:
    return {
        "refused_handshakes": sum(len(c.counters.refusals) for c in chargers),
        "call_errors": sum(len(c.counters.call_errors) for c in chargers),
        "unanswered_calls": sum(c.counters.timeouts for c in chargers),
    }


def _percent(before: float | None, after: float | None, seconds: float) -> float | None:
    return None if before is None or after is None else round((after - before) / seconds * 100, 1)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
