"""Simulated OCPP chargers: the `ocpp` library's own ChargePoint classes (1.6 and 2.0.1) over
`websockets`, behaving as real chargers do where the gateway's guarantees are at stake.

Each `SimCharger` boots once, reconnects by itself with a jittered backoff (and
without booting again, as a real charger does), authenticates with HTTP Basic
(the join token first, then the password the gateway sets), meters while it
charges, and sends its transaction messages through an offline queue: in order,
one at a time, each retried until it is answered, so nothing is lost while the
gateway or Kafka is away. It keeps what it metered (`MeterTrace`) so a test can
compare every ticket with the charger's own meter. `run_fleet` runs many.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from ocpp.exceptions import OCPPError
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from evcharge.runtime.retry import Backoff

log = logging.getLogger("evcharge.gateway.sim")
logging.getLogger("ocpp").setLevel(logging.WARNING)  # the library logs every frame at INFO


F = TypeVar("F", bound=Callable[..., Any])


def handles(action: str) -> Callable[[F], F]:
    """The `ocpp` library's `on`, typed."""
    return cast(Callable[[F], F], on(action))


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class MeterTrace:
    """One transaction as the charger metered it."""

    id_tag: str
    meter_start: int
    meter_stop: int | None = None
    tx_id: Any = None  # the OCPP transactionId once known
    readings: list[int] = field(default_factory=list)
    remote_start_id: int | None = None
    seq: itertools.count[int] = field(default_factory=itertools.count)  # 2.0.1 seqNo

    @property
    def wh(self) -> int | None:
        return None if self.meter_stop is None else self.meter_stop - self.meter_start


@dataclass
class Queued:
    """A transaction message waiting to be answered; `build` is called once, at its first send."""

    build: Callable[[], Any]
    on_answer: Callable[[Any], None] | None = None
    payload: Any = None


@dataclass
class Counters:
    connects: int = 0
    refusals: list[str] = field(default_factory=list)  # handshakes the gateway refused
    call_errors: list[str] = field(default_factory=list)
    timeouts: int = 0
    answered: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)  # action -> seconds, call to result

    def took(self, action: str, seconds: float) -> None:
        self.latencies.setdefault(action, []).append(seconds)


class SimCharger:
    def __init__(
        self,
        cp_id: str,
        url: str,
        *,
        version: str = "1.6",
        password: str | None = None,
        power_w: int = 22_000,
        meter_interval_s: float = 1.0,
        meter_start_wh: int = 10_000,
        response_timeout_s: float = 5.0,
        reconnect: Backoff | None = None,
        max_backlog: int | None = None,
        full_after_s: float | None = None,
    ) -> None:
        self.cp_id = cp_id
        self.url = url.rstrip("/") + "/" + cp_id
        self.version = version
        self.password = password
        self.power_w = power_w
        self.meter_interval_s = meter_interval_s
        self.meter_wh = meter_start_wh
        self.response_timeout_s = response_timeout_s
        # With a backlog this long a reading is not sent (the meter still counts): a load test
        # then offers as much as the gateway answers, not an ever longer queue.
        self.max_backlog = max_backlog
        # A car that is full after this long ends the transaction itself; None: it charges until stopped.
        self.full_after_s = full_after_s
        self.backoff = reconnect or Backoff(initial_delay_s=0.3, max_delay_s=3.0, jitter=0.9)
        self.queue: deque[Queued] = deque()
        self.history: list[Queued] = []  # every transaction message answered, in order
        self.traces: list[MeterTrace] = []
        self.counters = Counters()
        self.booted = False
        self.available = True
        self.connected = asyncio.Event()
        self.online = asyncio.Event()
        self.online.set()
        self._offline = asyncio.Event()
        self._queued = asyncio.Event()
        self._charging: MeterTrace | None = None
        self._meter_task: asyncio.Task[None] | None = None
        self._cp: Any = None
        self._ws: ClientConnection | None = None
        self._jobs: set[asyncio.Task[Any]] = set()

    # ---------------------------------------------------------- running

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await _first(stop, self.online)
                if stop.is_set():
                    return
                try:
                    await self._session(stop)
                    self.backoff.reset()
                except InvalidStatus as exc:
                    self.counters.refusals.append(f"HTTP {exc.response.status_code}: {_body(exc)}")
                except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError):
                    pass  # the gateway is away: come back later, as a charger does
                await _first(stop, timeout_s=self.backoff.next_delay())
        finally:
            await self._stop_jobs()

    async def _session(self, stop: asyncio.Event) -> None:
        headers = {}
        if self.password is not None:
            token = base64.b64encode(f"{self.cp_id}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        subprotocol = "ocpp1.6" if self.version == "1.6" else "ocpp2.0.1"
        async with connect(
            self.url,
            subprotocols=[subprotocol],  # type: ignore[list-item]
            additional_headers=headers,
            open_timeout=10,
            ping_interval=None,
            close_timeout=2,
        ) as ws:
            self._ws = ws
            self.counters.connects += 1
            cp = self._cp = (_Cp16 if self.version == "1.6" else _Cp201)(self, ws)
            reader = asyncio.create_task(cp.start())
            closed = asyncio.create_task(ws.wait_closed())
            gone = asyncio.create_task(_first(stop, self._offline))
            work = asyncio.create_task(self._work(cp))
            tasks = {reader, closed, gone, work}
            try:
                # The library's calls do not notice a closed socket: its close ends everything here.
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.connected.clear()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._cp = self._ws = None

    async def _work(self, cp: Any) -> None:
        if not self.booted:
            await self._boot(cp)
        self.connected.set()
        self._job(self.send_status("Available" if self.available else "Unavailable"))
        await self._send_queue(cp)

    async def _boot(self, cp: Any) -> None:
        while True:
            started = time.monotonic()
            if self.version == "1.6":
                result = await cp.call(call16.BootNotification("SimCharger", "evcharge-sim"), suppress=False)
            else:
                result = await cp.call(
                    call201.BootNotification(
                        charging_station={"model": "SimCharger", "vendor_name": "evcharge-sim"},
                        reason="PowerUp",
                    ),
                    suppress=False,
                )
            self.counters.took("BootNotification", time.monotonic() - started)
            if result.status == "Accepted":
                self.booted = True
                return
            await asyncio.sleep(max(1, int(result.interval or 1)))  # Pending: the spec's own wait

    async def _send_queue(self, cp: Any) -> None:
        """The offline queue: oldest first, each retried until answered."""
        while True:
            if not self.queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            item = self.queue[0]
            if item.payload is None:
                item.payload = item.build()
            started = time.monotonic()
            try:
                result = await cp.call(item.payload, suppress=False)
                self.counters.took(type(item.payload).__name__, time.monotonic() - started)
            except TimeoutError:
                self.counters.timeouts += 1
                continue  # unanswered: the same message again
            except OCPPError as exc:
                self.counters.call_errors.append(f"{type(item.payload).__name__}: {exc}")
                result = None
            self.counters.answered += 1
            self.queue.popleft()
            self.history.append(item)
            if item.on_answer is not None and result is not None:
                item.on_answer(result)

    def enqueue(self, build: Callable[[], Any], on_answer: Callable[[Any], None] | None = None) -> None:
        self.queue.append(Queued(build, on_answer))
        self._queued.set()

    def replay_queue_twice(self) -> None:
        """What a charger that lost its record of answers does: every queued message, twice."""
        copies = [Queued(q.build, q.on_answer, q.payload) for q in self.queue]
        for item in copies:
            if item.payload is None:
                item.payload = item.build()
        for original, copy in zip(self.queue, copies, strict=True):
            original.payload = copy.payload
        self.queue.extend(copies)
        self._queued.set()

    def replay_history(self) -> None:
        """Send every transaction message answered so far once more, exactly as it was."""
        self.queue.extend(Queued(q.build, None, q.payload) for q in self.history)
        self._queued.set()

    def go_offline(self) -> None:
        """Lose the network: the connection drops, the meter and the queue go on."""
        self.online.clear()
        self._offline.set()

    def go_online(self) -> None:
        self._offline.clear()
        self.online.set()

    async def drop_connection(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    def settled(self) -> bool:
        return not self.queue and self._charging is None

    # ------------------------------------------------------------ acts

    async def send_status(self, status: str, error_code: str = "NoError") -> None:
        """A StatusNotification for connector 1 (best effort: it is not a transaction message)."""
        cp = self._cp
        if cp is None:
            return
        with contextlib.suppress(TimeoutError, OCPPError, ConnectionClosed):
            if self.version == "1.6":
                await cp.call(call16.StatusNotification(1, error_code, status, timestamp=now_text()))
            else:
                status201 = {"Charging": "Occupied", "Preparing": "Occupied", "Finishing": "Occupied"}
                await cp.call(
                    call201.StatusNotification(now_text(), status201.get(status, status), 1, 1),
                    suppress=False,
                )

    async def swipe(self, id_tag: str) -> str:
        """An RFID card at the charger: Authorize, then a local start if accepted; the status."""
        cp = self._cp
        assert cp is not None, "not connected"
        if self.version == "1.6":
            result = await cp.call(call16.Authorize(id_tag), suppress=False)
            status = str(result.id_tag_info["status"])
        else:
            result = await cp.call(
                call201.Authorize({"id_token": id_tag, "type": "ISO14443"}), suppress=False
            )
            status = str(result.id_token_info["status"])
        if status == "Accepted":
            self.begin(id_tag)
        return status

    def begin(self, id_tag: str, remote_start_id: int | None = None) -> MeterTrace:
        assert self._charging is None, "already charging"
        trace = MeterTrace(id_tag, self.meter_wh, remote_start_id=remote_start_id)
        self.traces.append(trace)
        self._charging = trace
        stamp = now_text()
        if self.version == "1.6":

            def started(result: Any) -> None:
                trace.tx_id = result.transaction_id

            self.enqueue(lambda: call16.StartTransaction(1, id_tag, trace.meter_start, stamp), started)
        else:
            trace.tx_id = uuid.uuid4().hex
            info: dict[str, Any] = {"transaction_id": trace.tx_id, "charging_state": "Charging"}
            if remote_start_id is not None:
                info["remote_start_id"] = remote_start_id
            event = call201.TransactionEvent(
                event_type="Started",
                timestamp=stamp,
                trigger_reason="RemoteStart" if remote_start_id is not None else "Authorized",
                seq_no=next(trace.seq),
                transaction_info=info,
                id_token={
                    "id_token": id_tag,
                    "type": "Central" if remote_start_id is not None else "ISO14443",
                },
                meter_value=[_meter_201(trace.meter_start, 0, stamp)],
            )
            self.enqueue(lambda: event)
        self._meter_task = self._job(self._meter(trace))
        return trace

    async def _meter(self, trace: MeterTrace) -> None:
        loop = asyncio.get_running_loop()
        last = began = loop.time()
        while self._charging is trace:
            await asyncio.sleep(self.meter_interval_s)  # the meter's own clock
            if self._charging is not trace:
                return
            now = loop.time()
            self.meter_wh += int(self.power_w * (now - last) / 3600)
            last = now
            if self.full_after_s is not None and now - began >= self.full_after_s:
                self.end("Other" if self.version == "1.6" else "StoppedByEV")  # the car is full
                return
            if self.max_backlog is None or len(self.queue) < self.max_backlog:
                self._reading(trace, self.meter_wh)

    def _reading(self, trace: MeterTrace, wh: int) -> None:
        trace.readings.append(wh)
        stamp = now_text()
        if self.version == "1.6":
            value = [_meter_16(wh, self.power_w, stamp)]
            self.enqueue(lambda: call16.MeterValues(1, value, transaction_id=trace.tx_id))
        else:
            event = call201.TransactionEvent(
                event_type="Updated",
                timestamp=stamp,
                trigger_reason="MeterValuePeriodic",
                seq_no=next(trace.seq),
                transaction_info={"transaction_id": trace.tx_id, "charging_state": "Charging"},
                meter_value=[_meter_201(wh, self.power_w, stamp)],
            )
            self.enqueue(lambda: event)

    def end(self, reason: str = "Local") -> MeterTrace | None:
        trace = self._charging
        if trace is None:
            return None
        self._charging = None
        trace.meter_stop = self.meter_wh
        stamp = now_text()
        if self.version == "1.6":
            self.enqueue(lambda: call16.StopTransaction(trace.meter_stop, stamp, trace.tx_id, reason=reason))
        else:
            event = call201.TransactionEvent(
                event_type="Ended",
                timestamp=stamp,
                trigger_reason="RemoteStop" if reason == "Remote" else "StopAuthorized",
                seq_no=next(trace.seq),
                transaction_info={
                    "transaction_id": trace.tx_id,
                    "stopped_reason": reason,
                    "charging_state": "Idle",
                },
                meter_value=[_meter_201(trace.meter_stop or 0, 0, stamp, context="Transaction.End")],
            )
            self.enqueue(lambda: event)
        return trace

    # ----------------------------------------------------------- plumbing

    def _job(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return task

    async def _stop_jobs(self) -> None:
        for task in list(self._jobs):
            task.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)

    def later(self, work: Any) -> None:
        """Run `work` after the current handler has answered (it may make calls of its own)."""
        self._job(work)


def _meter_16(wh: int, power_w: int, stamp: str) -> dict[str, Any]:
    return {
        "timestamp": stamp,
        "sampledValue": [
            {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": str(power_w), "measurand": "Power.Active.Import", "unit": "W"},
        ],
    }


def _meter_201(wh: int, power_w: int, stamp: str, context: str = "Sample.Periodic") -> dict[str, Any]:
    return {
        "timestamp": stamp,
        "sampled_value": [
            {"value": wh, "measurand": "Energy.Active.Import.Register", "context": context},
            {"value": power_w, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}},
        ],
    }


class _Cp16(ChargePoint16):  # type: ignore[misc]
    def __init__(self, sim: SimCharger, ws: ClientConnection) -> None:
        super().__init__(sim.cp_id, ws, response_timeout=sim.response_timeout_s)
        self.sim = sim

    @handles("RemoteStartTransaction")
    def on_remote_start(self, id_tag: str, **_: Any) -> Any:
        from ocpp.v16 import call_result

        sim = self.sim
        if sim._charging is not None or not sim.available:
            return call_result.RemoteStartTransaction("Rejected")
        sim.begin(id_tag)
        return call_result.RemoteStartTransaction("Accepted")

    @handles("RemoteStopTransaction")
    def on_remote_stop(self, transaction_id: int, **_: Any) -> Any:
        from ocpp.v16 import call_result

        sim = self.sim
        if sim._charging is None or sim._charging.tx_id != transaction_id:
            return call_result.RemoteStopTransaction("Rejected")
        sim.end("Remote")
        return call_result.RemoteStopTransaction("Accepted")

    @handles("ChangeAvailability")
    def on_availability(self, connector_id: int, type: str, **_: Any) -> Any:
        from ocpp.v16 import call_result

        sim = self.sim
        sim.available = type == "Operative"
        sim.later(sim.send_status("Available" if sim.available else "Unavailable"))
        return call_result.ChangeAvailability("Accepted")

    @handles("ChangeConfiguration")
    def on_configuration(self, key: str, value: str, **_: Any) -> Any:
        from ocpp.v16 import call_result

        if key == "AuthorizationKey":
            self.sim.password = value
            self.sim.later(self.sim.drop_connection())  # come back with the new password
            return call_result.ChangeConfiguration("Accepted")
        return call_result.ChangeConfiguration("NotSupported")


class _Cp201(ChargePoint201):  # type: ignore[misc]
    def __init__(self, sim: SimCharger, ws: ClientConnection) -> None:
        super().__init__(sim.cp_id, ws, response_timeout=sim.response_timeout_s)
        self.sim = sim

    @handles("RequestStartTransaction")
    def on_request_start(self, id_token: dict[str, Any], remote_start_id: int, **_: Any) -> Any:
        from ocpp.v201 import call_result

        sim = self.sim
        if sim._charging is not None or not sim.available:
            return call_result.RequestStartTransaction("Rejected")
        trace = sim.begin(id_token["id_token"], remote_start_id)
        return call_result.RequestStartTransaction("Accepted", transaction_id=trace.tx_id)

    @handles("RequestStopTransaction")
    def on_request_stop(self, transaction_id: str, **_: Any) -> Any:
        from ocpp.v201 import call_result

        sim = self.sim
        if sim._charging is None or sim._charging.tx_id != transaction_id:
            return call_result.RequestStopTransaction("Rejected")
        sim.end("Remote")
        return call_result.RequestStopTransaction("Accepted")

    @handles("ChangeAvailability")
    def on_availability(self, operational_status: str, **_: Any) -> Any:
        from ocpp.v201 import call_result

        sim = self.sim
        sim.available = operational_status == "Operative"
        sim.later(sim.send_status("Available" if sim.available else "Unavailable"))
        return call_result.ChangeAvailability("Accepted")

    @handles("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        from ocpp.v201 import call_result

        results = []
        for item in set_variable_data:
            accepted = (
                item["component"]["name"] == "SecurityCtrlr"
                and item["variable"]["name"] == "BasicAuthPassword"
            )
            if accepted:
                self.sim.password = item["attribute_value"]
                self.sim.later(self.sim.drop_connection())
            results.append(
                {
                    "attribute_status": "Accepted" if accepted else "UnknownVariable",
                    "component": item["component"],
                    "variable": item["variable"],
                }
            )
        return call_result.SetVariables(set_variable_result=results)


async def _first(*events: asyncio.Event, timeout_s: float | None = None) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def _body(exc: InvalidStatus) -> str:
    body = exc.response.body or b""
    return body.decode(errors="replace").strip()[:200]


async def run_fleet(chargers: list[SimCharger], stop: asyncio.Event) -> None:
    """Run every charger until `stop`."""
    async with asyncio.TaskGroup() as group:
        for charger in chargers:
            group.create_task(charger.run(stop), name=f"sim {charger.cp_id}")


def main(argv: list[str] | None = None) -> int:
    """`python -m evcharge.gateway.sim --cps 100`: a fleet of OCPP chargers against a gateway."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m evcharge.gateway.sim", description=main.__doc__)
    parser.add_argument("--url", default="ws://127.0.0.1:9000/ocpp", help="the gateway's OCPP endpoint")
    parser.add_argument("--cps", type=int, default=10, help="how many chargers")
    parser.add_argument("--version", choices=["1.6", "2.0.1", "mixed"], default="mixed")
    parser.add_argument("--password", default=None, help="the join token (each then gets its own password)")
    parser.add_argument("--prefix", default="SIM", help="charger ids are PREFIX-0001, ...")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run")
    parser.add_argument(
        "--charge-s", type=float, default=30.0, help="a charge ends by itself after this long (0: never)"
    )
    parser.add_argument("--meter-interval", type=float, default=1.0, help="seconds between meter readings")
    args = parser.parse_args(argv)

    async def run() -> dict[str, Any]:
        chargers = [
            SimCharger(
                f"{args.prefix}-{i:04d}",
                args.url,
                version=args.version if args.version != "mixed" else ("1.6" if i % 2 else "2.0.1"),
                password=args.password,
                meter_interval_s=args.meter_interval,
                full_after_s=args.charge_s or None,
            )
            for i in range(args.cps)
        ]
        stop = asyncio.Event()
        fleet = asyncio.create_task(run_fleet(chargers, stop))
        await _first(stop, timeout_s=args.duration)
        stop.set()
        await fleet
        boots = sorted(x for c in chargers for x in c.counters.latencies.get("BootNotification", []))
        return {
            "chargers": len(chargers),
            "booted": sum(c.booted for c in chargers),
            "connects": sum(c.counters.connects for c in chargers),
            "refusals": sum(len(c.counters.refusals) for c in chargers),
            "call_errors": sum(len(c.counters.call_errors) for c in chargers),
            "boot_p50_ms": round(boots[len(boots) // 2] * 1000, 1) if boots else None,
        }

    print(json.dumps(asyncio.run(run()), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
