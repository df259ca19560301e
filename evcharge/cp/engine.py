"""`evcharge engine`: a charging point's engine, wired to its store, Kafka and its health port.

Three tasks around one `EngineState`: the health/control port its monitor
checks, the command consumer (its own key's partition only), and the meter
that ticks while supplying. Each change is recorded (and queued for Kafka)
before anyone is told about it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from evcharge.cp.engine_state import EngineState
from evcharge.cp.engine_store import EngineStore
from evcharge.cp.health_port import serve_health_port
from evcharge.errors import ConfigError, ProtocolError
from evcharge.messages import (
    CpCommand,
    CpEvent,
    EndReason,
    MeterReading,
    ResumeCp,
    SessionEnded,
    SessionStarted,
    StartSupply,
    StopCp,
    StopSupply,
    decode,
)
from evcharge.runtime.consumer import ConsumerLoop, dead_letter
from evcharge.runtime.kafka import TOPICS, ensure_topics, key_partition
from evcharge.runtime.outbox import OutboxRelay
from evcharge.runtime.tcp import OwnedServer
from evcharge.runtime.waits import sleep_unless, wait_first

log = logging.getLogger("evcharge.engine")


@dataclass(frozen=True)
class EngineSettings:
    cp_id: str
    kafka: str
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 5000
    power_kw: float = 22.0
    price_eur_kwh: float = 0.30
    meter_interval_s: float = 1.0
    max_session_s: float = 30.0
    partitions: int = 8


def default_engine_port(cp_id: str) -> int:
    """5000 + the CP's number (CP-005 → 5005), so a row of CPs on one host needs no port flags."""
    digits = "".join(ch for ch in cp_id if ch.isdigit())
    return 5000 + int(digits[-3:]) if digits else 5000


class InstanceLock:
    """One live engine per CP id and state dir: a second one is refused instead of double-supplying."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(
                f"another engine is already running with this CP id and state dir ({self.path})"
            ) from None
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Engine:
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.state = EngineState(
            cp_id=settings.cp_id,
            power_kw=settings.power_kw,
            price_eur_kwh=settings.price_eur_kwh,
            max_session_s=settings.max_session_s,
        )
        self._store: EngineStore | None = None
        self._relay: OutboxRelay | None = None
        self._lock = asyncio.Lock()
        self._supply_changed = asyncio.Event()
        self.port = settings.port
        self.instance = uuid.uuid4().hex

    async def run(self, stop: asyncio.Event) -> int:
        s = self.settings
        lock = InstanceLock(s.state_dir / f"engine-{s.cp_id}.lock")
        lock.acquire()
        store = self._store = await EngineStore.open(s.state_dir / f"engine-{s.cp_id}.sqlite", s.cp_id)
        relay = self._relay = OutboxRelay(store.outbox, s.kafka)
        server = OwnedServer(self._serve_monitor, "health")
        try:
            await self._recover(store)
            consumer = ConsumerLoop(
                s.kafka,
                f"engine-{s.cp_id}",
                self._assign,
                self._on_commands,
                new_group_starts_at_end=True,
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(relay.run(stop), name="outbox relay")
                tasks.create_task(consumer.run(stop), name="command consumer")
                tasks.create_task(self._meter(stop), name="meter")
                # The health port opens only once commands can be read: a monitor
                # must not report this CP ON while a start command would go unseen.
                await wait_first(consumer.ready, stop)
                if not stop.is_set():
                    self.port = await server.start(s.host, s.port)
                    log.info(
                        "%s engine ready: health port %s:%d, %.1f kW, %.2f EUR/kWh",
                        s.cp_id,
                        s.host,
                        self.port,
                        s.power_kw,
                        s.price_eur_kwh,
                    )
                await stop.wait()
                log.info("%s engine stopping", s.cp_id)
        finally:
            await server.close()
            await store.close()
            lock.release()
        return 0

    async def _recover(self, store: EngineStore) -> None:
        self.state.stopped = await store.stopped()
        self.state.known_sessions = await store.known_sessions()
        crashed = await store.open_session()
        if crashed is not None:
            # We died mid-session: bill what we had recorded, once, and say how it ended.
            ended = SessionEnded(
                cp_id=self.settings.cp_id,
                session_id=crashed.session_id,
                seq=crashed.seq + 1,
                kwh=crashed.kwh,
                eur=crashed.eur,
                ended_at=time.time(),
                reason=EndReason.INTERRUPTED,
            )
            await store.record([ended])
            log.warning(
                "%s: session %s was interrupted by a restart; closed at %.3f kWh, %.2f EUR",
                self.settings.cp_id,
                crashed.session_id[:8],
                crashed.kwh,
                crashed.eur,
            )
        pending = await store.outbox.size()
        if pending:
            log.info(
                "%s: %d events from before the restart are waiting for Kafka",
                self.settings.cp_id,
                pending,
            )

    # ---------------------------------------------------------- changes

    async def _change(self, events: list[CpEvent], *, stopped: bool | None = None) -> None:
        """Record and queue what a transition produced; log it for the person at the CP."""
        assert self._store is not None and self._relay is not None
        if not events and stopped is None:
            return
        await self._store.record(events, stopped=stopped)
        self._relay.wake()
        for event in events:
            self._log_event(event)
        self._supply_changed.set()

    def _log_event(self, event: CpEvent) -> None:
        cp = self.settings.cp_id
        if isinstance(event, SessionStarted):
            log.info("%s SUPPLYING session %s for %s", cp, event.session_id[:8], event.driver_id)
        elif isinstance(event, MeterReading):
            log.info(
                "%s meter: %.1f kW, %.4f kWh, %.4f EUR (session %s #%d)",
                cp,
                event.kw,
                event.kwh,
                event.eur,
                event.session_id[:8],
                event.seq,
            )
        elif isinstance(event, SessionEnded):
            log.info(
                "%s session %s ended (%s): %.4f kWh, %.4f EUR",
                cp,
                event.session_id[:8],
                event.reason.value,
                event.kwh,
                event.eur,
            )
        else:
            log.warning("%s refused session %s: %s", cp, event.session_id[:8], event.reason)

    async def act(self, action: str) -> str:
        """The CP's own controls (keys in its terminal, or the control command on its port)."""
        now = time.time()
        async with self._lock:
            if action == "plug":
                events = self.state.plug_in(now)
                await self._change(events)
                return "supplying" if events else "cannot start a supply now"
            if action == "unplug":
                events = self.state.end(EndReason.UNPLUGGED, now)
                await self._change(events)
                return "unplugged" if events else "nothing was plugged in"
            if action == "fault":
                await self._change(self.state.raise_fault(now))
                log.warning("%s fault raised: answering KO", self.settings.cp_id)
                return "KO"
            if action == "clear":
                self.state.clear_fault()
                log.info("%s fault cleared: answering OK", self.settings.cp_id)
                return "OK"
            return self.describe()

    def describe(self) -> str:
        state = self.state
        health = "OK" if state.healthy else "KO"
        if state.supply is not None:
            m = state.supply.meter
            return (
                f"{health}, supplying session {state.supply.session_id[:8]} to "
                f"{state.supply.driver_id}: {m.kw:.1f} kW, {m.kwh:.4f} kWh, {m.eur:.4f} EUR"
            )
        return f"{health}, {'stopped by the operator' if state.stopped else 'idle'}"

    # ----------------------------------------------------------- meter

    async def _meter(self, stop: asyncio.Event) -> None:
        interval = self.settings.meter_interval_s
        while not stop.is_set():
            supply = self.state.supply
            if supply is None:
                self._supply_changed.clear()
                await wait_first(stop, self._supply_changed)
                continue
            # Each session is metered on its own cadence from its start: a session that
            # begins while another's interval runs must not be billed for that interval.
            session_id = supply.session_id
            next_tick = time.monotonic() + interval
            while True:
                if await sleep_unless(stop, max(0.0, next_tick - time.monotonic())):
                    return
                async with self._lock:
                    current = self.state.supply
                    if current is None or current.session_id != session_id:
                        break
                    await self._change(self.state.tick(interval, time.time()))
                next_tick += interval

    # ------------------------------------------------------------ Kafka

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        counts = await ensure_topics(self.settings.kafka, self.settings.partitions)
        tp = key_partition(counts, TOPICS.cp_commands, self.settings.cp_id)
        return [tp]

    async def _on_commands(self, records: list[ConsumerRecord]) -> None:
        for record in records:
            if record.key != self.settings.cp_id.encode():
                continue  # another CP whose id hashes to our partition
            try:
                command = decode(record.value, CpCommand)
            except ProtocolError as exc:
                assert self._store is not None and self._relay is not None
                await self._store.dead_letter(dead_letter(record, f"engine-{self.settings.cp_id}", str(exc)))
                self._relay.wake()
                continue
            await self._apply_command(command)  # type: ignore[arg-type]

    async def _apply_command(self, command: StartSupply | StopSupply | StopCp | ResumeCp) -> None:
        now = time.time()
        async with self._lock:
            if isinstance(command, StartSupply):
                if command.engine is not None and command.engine != self.instance:
                    log.warning(
                        "%s: session %s was authorised for another engine of this CP (%s), not this one "
                        "(%s): is a second engine running with id %s? This one stays out of it.",
                        self.settings.cp_id,
                        command.session_id[:8],
                        command.engine[:8],
                        self.instance[:8],
                        self.settings.cp_id,
                    )
                    return
                await self._change(self.state.start(command, now))
            elif isinstance(command, StopSupply):
                billed = None
                if command.billed_kwh is not None and command.billed_eur is not None:
                    billed = (command.billed_kwh, command.billed_eur)
                events = self.state.end(command.reason, now, command.session_id, billed)
                await self._change(events)
                if not events and billed is not None:
                    await self._adopt_billed(command.session_id, billed)
            elif isinstance(command, StopCp):
                events = self.state.stop_cp(now)
                await self._change(events, stopped=True)
                log.warning("%s stopped by the operator (out of order)", self.settings.cp_id)
            else:
                await self._change(self.state.resume_cp(), stopped=False)
                log.info("%s resumed by the operator", self.settings.cp_id)

    async def _adopt_billed(self, session_id: str, billed: tuple[float, float]) -> None:
        """Central closed a session this engine had already closed after a crash.

        A reading recorded just before the crash may never have reached central;
        central billed what it had, and the engine's record follows it so that
        both say the same. The difference is logged, not billed twice.
        """
        assert self._store is not None
        recorded = await self._store.adopt_billed(session_id, *billed)
        if recorded is not None and recorded != billed:
            log.warning(
                "%s: session %s was billed by central at %.5f kWh / %.4f EUR; this engine had "
                "recorded %.5f kWh / %.4f EUR before it crashed; record adjusted",
                self.settings.cp_id,
                session_id[:8],
                *billed,
                *recorded,
            )

    # ------------------------------------------------------- health port

    async def _serve_monitor(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_health_port(
            reader,
            writer,
            self.state,
            control=self.act,
            on_protocol_error=self._protocol_error,
            instance=self.instance,
        )

    def _protocol_error(self, peer: str, exc: ProtocolError) -> None:
        log.warning("%s health port: %s sent %s: closed", self.settings.cp_id, peer, exc)
