"""`evcharge engine`: a charging point's engine, wired to its store, Kafka and its health port.

Three tasks around one `EngineState`: the health/control port its monitor
checks, the command inbox (its own key's partition only), and the meter that
ticks while supplying. Each change is recorded (and queued for Kafka) before
anyone is told about it. When the disk is full the engine stops supplying what
it could not bill, answers KO with why, keeps what it must still write in
memory, and writes it (and recovers) by itself once space is back.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import time
import uuid
from collections.abc import Sequence
from typing import IO, Any

from aiokafka import ConsumerRecord

from evcharge.cp import engine_commands
from evcharge.cp.engine_key import EventSigner
from evcharge.cp.engine_state import CpEvent, EngineState
from evcharge.cp.engine_store import EngineStore
from evcharge.cp.health_port import serve_health_port
from evcharge.cp.settings import EngineSettings
from evcharge.errors import ConfigError, ProtocolError, StorageFull
from evcharge.protocol.messages import (
    EndReason,
    EngineAction,
    MeterReading,
    SessionEnded,
    SessionStarted,
)
from evcharge.protocol.topics import CODECS, TOPICS, Topic, dead_letter
from evcharge.protocol.units import eur_text, kw_text, kwh_text, price_text
from evcharge.runtime.faults import crash_point
from evcharge.runtime.inbox import Delivery, Inbox, Subscription
from evcharge.runtime.outbox import OutboxRelay
from evcharge.runtime.tcp import OwnedServer
from evcharge.runtime.waits import sleep_unless, wait_first

log = logging.getLogger("evcharge.engine")

RECORD_RETRY_S = 1.0


class InstanceLock:
    """One live engine per CP id and state dir: a second one is refused instead of double-supplying."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self._file: IO[str] | None = None

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
            power_w=settings.power_w,
            price=settings.price,
            max_session_ms=round(settings.max_session_s * 1000),
        )
        self._store: EngineStore | None = None
        self._relay: OutboxRelay | None = None
        self._lock = asyncio.Lock()
        self._supply_changed = asyncio.Event()
        # What could not be written while the disk was full, in order: written first when it can be.
        self._unrecorded: list[tuple[list[CpEvent], bool | None]] = []
        self._space_back = asyncio.Event()
        self.port = settings.health_port
        self.instance = uuid.uuid4().hex

    async def run(self, stop: asyncio.Event) -> int:
        s = self.settings
        await s.kafka_access.check()  # a broker we must not trust: one line, no retries
        lock = InstanceLock(s.state_dir / f"engine-{s.cp_id}.lock")
        lock.acquire()
        try:
            store = self._store = await EngineStore.open(s.state_dir / f"engine-{s.cp_id}.sqlite")
        except BaseException:
            lock.release()
            raise
        signer = EventSigner(s.key_path, required=s.signing)
        relay = self._relay = OutboxRelay(
            store.outbox, s.kafka_access, may_publish=signer.may_publish, headers_for=signer.headers
        )
        server = OwnedServer(self._serve_monitor, "health")
        try:
            await self._recover(store)
            inbox = Inbox(
                bootstrap=s.kafka_access,
                group_id=f"engine-{s.cp_id}",
                subscriptions=[Subscription(Topic.CP_COMMANDS, key=s.cp_id)],
                codecs=CODECS,
                topics=TOPICS,
                handle=self._on_commands,
                dead_letter=self._dead_letter,
                partitions=s.partitions,
                new_group_starts_at_end=True,
                name=f"engine {s.cp_id}",
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(relay.run(stop), name="outbox relay")
                tasks.create_task(inbox.run(stop), name="command inbox")
                tasks.create_task(self._meter(stop), name="meter")
                tasks.create_task(self._write_unrecorded(stop), name="unrecorded writer")
                # The health port opens only once commands can be read: a monitor
                # must not report this CP ON while a start command would go unseen.
                await wait_first(inbox.ready, stop)
                if not stop.is_set():
                    self.port = await server.start(s.host, s.health_port)
                    log.info(
                        "%s engine ready: health port %s:%d, %s kW, local price %s EUR/kWh",
                        s.cp_id,
                        s.host,
                        self.port,
                        kw_text(s.power_w),
                        price_text(s.price),
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
                wh=crashed.wh,
                micro_eur=crashed.micro_eur,
                ended_at=time.time(),
                reason=EndReason.INTERRUPTED,
            )
            await store.record([ended])
            log.warning(
                "%s: session %s was interrupted by a restart; closed at %s kWh, %s EUR",
                self.settings.cp_id,
                crashed.session_id[:8],
                kwh_text(crashed.wh),
                eur_text(crashed.micro_eur),
            )
        pending = (await store.outbox.outbox_stats()).rows
        if pending:
            log.info(
                "%s: %d events from before the restart are waiting for Kafka", self.settings.cp_id, pending
            )

    # ---------------------------------------------------------- changes

    async def _change(self, events: list[CpEvent], *, stopped: bool | None = None) -> None:
        """Record and queue what a transition produced; log it for the person at the CP.

        Called with the lock held. A full disk turns the engine KO instead of failing.
        """
        assert self._store is not None and self._relay is not None
        if not events and stopped is None:
            return
        if self._unrecorded:
            self._unrecorded.append((events, stopped))  # keep the order: after what waits already
        else:
            try:
                await self._store.record(events, stopped=stopped)
            except StorageFull as exc:
                self._cannot_record(events, stopped, exc)
            else:
                if any(isinstance(e, MeterReading) for e in events):
                    crash_point("engine.recorded")
                self._relay.wake()
        for event in events:
            self._log_event(event)
        self._supply_changed.set()

    def _cannot_record(self, events: list[CpEvent], stopped: bool | None, exc: StorageFull) -> None:
        ended = self.state.cannot_record(time.time())
        self._unrecorded.append((events + ended, stopped))
        self._space_back.set()
        log.warning(
            "%s cannot record its meter (%s): supply stopped, answering KO, taking no session "
            "until it can write again",
            self.settings.cp_id,
            exc,
        )

    async def _write_unrecorded(self, stop: asyncio.Event) -> None:
        """While the disk is full: try to write what waits, in order; then recover by itself."""
        assert self._store is not None and self._relay is not None
        while not stop.is_set():
            if not self._unrecorded:
                self._space_back.clear()
                await wait_first(stop, self._space_back)
                continue
            if await sleep_unless(stop, RECORD_RETRY_S):
                return
            async with self._lock:
                try:
                    while self._unrecorded:
                        events, stopped = self._unrecorded[0]
                        await self._store.record(events, stopped=stopped)
                        self._unrecorded.pop(0)
                except StorageFull:
                    continue
                self.state.recording = True
                self._relay.wake()
            log.info(
                "%s records again: what waited in memory is written, the CP takes sessions",
                self.settings.cp_id,
            )

    def _log_event(self, event: CpEvent) -> None:
        cp = self.settings.cp_id
        if isinstance(event, SessionStarted):
            log.info("%s SUPPLYING session %s for %s", cp, event.session_id[:8], event.driver_id)
        elif isinstance(event, MeterReading):
            log.info(
                "%s meter: %s kW, %s kWh, %s EUR (session %s #%d)",
                cp,
                kw_text(event.power_w),
                kwh_text(event.wh),
                eur_text(event.micro_eur),
                event.session_id[:8],
                event.seq,
            )
        elif isinstance(event, SessionEnded):
            log.info(
                "%s session %s ended (%s): %s kWh, %s EUR",
                cp,
                event.session_id[:8],
                event.reason.value,
                kwh_text(event.wh),
                eur_text(event.micro_eur),
            )
        else:
            log.info("%s refused session %s: %s", cp, event.session_id[:8], event.reason)

    async def act(self, action: EngineAction) -> str:
        """The CP's own controls (keys in its terminal, or the control command on its port)."""
        now = time.time()
        async with self._lock:
            if action is EngineAction.PLUG:
                events = self.state.plug_in(now)
                await self._change(events)
                return "supplying" if events else f"cannot start a supply now ({self.describe()})"
            if action is EngineAction.UNPLUG:
                events = self.state.end(EndReason.UNPLUGGED, now)
                await self._change(events)
                return "unplugged" if events else "nothing was plugged in"
            if action is EngineAction.FAULT:
                await self._change(self.state.raise_fault(now))
                log.warning("%s fault raised: answering KO", self.settings.cp_id)
                return "KO"
            if action is EngineAction.CLEAR:
                self.state.clear_fault()
                log.info("%s fault cleared: answering OK", self.settings.cp_id)
                return "OK" if self.state.healthy else f"KO: {self.state.detail}"
            return self.describe()

    def describe(self) -> str:
        state = self.state
        health = "OK" if state.healthy else f"KO ({state.detail})"
        if state.supply is not None:
            m = state.supply.meter
            return (
                f"{health}, supplying session {state.supply.session_id[:8]} to "
                f"{state.supply.driver_id}: {kw_text(m.power_w)} kW, {kwh_text(m.wh)} kWh, "
                f"{eur_text(m.micro_eur)} EUR"
            )
        return f"{health}, {'stopped by the operator' if state.stopped else 'idle'}"

    # ----------------------------------------------------------- meter

    async def _meter(self, stop: asyncio.Event) -> None:
        interval_ms = self.settings.meter_interval_ms
        while not stop.is_set():
            supply = self.state.supply
            if supply is None:
                self._supply_changed.clear()
                await wait_first(stop, self._supply_changed)
                continue
            # Each session is metered on its own cadence from its start: a session that
            # begins while another's interval runs must not be billed for that interval.
            session_id = supply.session_id
            next_tick = time.monotonic() + interval_ms / 1000
            while True:
                if await sleep_unless(stop, max(0.0, next_tick - time.monotonic())):
                    return
                async with self._lock:
                    current = self.state.supply
                    if current is None or current.session_id != session_id:
                        break
                    await self._change(self.state.tick(interval_ms, time.time()))
                next_tick += interval_ms / 1000

    # ------------------------------------------------------------ Kafka

    async def _on_commands(self, deliveries: Sequence[Delivery[Any]]) -> None:
        if self._unrecorded:
            # Nothing new while what we owe is not written: the inbox hands these over again.
            raise StorageFull("the engine cannot record yet")
        commands = [d.message for d in deliveries]
        withdrawn = engine_commands.withdrawn(commands)
        for command in commands:
            async with self._lock:
                step = engine_commands.handle(
                    self.state, command, instance=self.instance, now=time.time(), withdrawn=withdrawn
                )
                await self._change(step.events, stopped=step.stopped)
            if step.note:
                (log.warning if step.warning else log.info)("%s %s", self.settings.cp_id, step.note)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        assert self._store is not None and self._relay is not None
        consumer = f"engine-{self.settings.cp_id}"
        await self._store.dead_letter(
            *dead_letter(
                record.topic, record.partition, record.offset, record.key, record.value, consumer, reason
            )
        )
        self._relay.wake()

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
