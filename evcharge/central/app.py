"""`evcharge central`: wires the service to its store, Kafka, the monitors' TCP port, HTTP and the panel."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from evcharge.central.audit import AuditLog
from evcharge.central.http_api import CentralApi
from evcharge.central.monitor_server import MonitorServer
from evcharge.central.service import CentralService
from evcharge.central.store import CentralStore
from evcharge.errors import ProtocolError
from evcharge.messages import (
    ChargeRequest,
    CpEvent,
    DriverRequest,
    StopRequest,
    decode,
)
from evcharge.runtime.consumer import ConsumerLoop, dead_letter
from evcharge.runtime.kafka import TOPICS, all_partitions, ensure_topics
from evcharge.runtime.outbox import OutboxRelay
from evcharge.runtime.waits import sleep_unless

log = logging.getLogger("evcharge.central")


@dataclass(frozen=True)
class CentralSettings:
    kafka: str
    db_path: Path
    host: str = "127.0.0.1"
    tcp_port: int = 7000
    http_port: int = 8000
    partitions: int = 8
    request_ttl_s: float = 60.0
    start_timeout_s: float = 10.0
    heartbeat_timeout_s: float = 3.0
    panel: bool = False
    # After a restart, requests that queued meanwhile are judged only once the
    # known CPs' monitors are back (or this much time passed), not against a
    # registry that still shows everything DISCONNECTED.
    startup_grace_s: float = 5.0
    require_auth: bool = False
    join_token: str | None = None
    operator_token: str | None = None
    audit_path: Path | None = None


class CentralApp:
    def __init__(self, settings: CentralSettings) -> None:
        self.settings = settings

    async def run(self, stop: asyncio.Event) -> int:
        s = self.settings
        started = time.monotonic()
        store = await CentralStore.open(s.db_path)
        relay = OutboxRelay(store.outbox, s.kafka)
        service = CentralService(
            store,
            request_ttl_s=s.request_ttl_s,
            start_timeout_s=s.start_timeout_s,
            heartbeat_timeout_s=s.heartbeat_timeout_s,
            on_outbox=relay.wake,
            join_token=s.join_token if s.require_auth else None,
            audit=AuditLog(s.audit_path),
        )
        self.service = service
        await service.load()
        monitors = MonitorServer(service, s.host, s.tcp_port)
        consumer = ConsumerLoop(s.kafka, "central", self._assign, _Dispatcher(service, store, relay).handle)
        api = CentralApi(
            service,
            started,
            lambda: relay.kafka_up and consumer.kafka_up,
            operator_token=s.operator_token if s.require_auth else None,
        )
        runner = web.AppRunner(api.app, access_log=None)
        try:
            await monitors.start()
            await runner.setup()
            await web.TCPSite(runner, s.host, s.http_port).start()
            log.info(
                "HTTP API on http://%s:%d (database %s, Kafka %s)",
                s.host,
                s.http_port,
                s.db_path,
                s.kafka,
            )
            await service.wait_for_monitors(s.startup_grace_s)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(relay.run(stop), name="outbox relay")
                tasks.create_task(consumer.run(stop), name="kafka consumer")
                tasks.create_task(monitors.watch_heartbeats(stop), name="heartbeat watch")
                tasks.create_task(_every(1.0, service.expire_unstarted, stop), name="start deadline")
                if s.panel:
                    from evcharge.central.panel import run_panel

                    tasks.create_task(run_panel(service, stop), name="panel")
                await stop.wait()
                log.info("central stopping: closing monitor connections, flushing the outbox")
        finally:
            # Order: stop accepting, drop peers (they reconnect elsewhere), then close the store.
            await monitors.close()
            await runner.cleanup()
            await store.close()
            service.audit.close()
        log.info("central stopped")
        return 0

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        counts = await ensure_topics(self.settings.kafka, self.settings.partitions)
        return [
            *all_partitions(counts, TOPICS.driver_requests),
            *all_partitions(counts, TOPICS.cp_events),
        ]


class _Dispatcher:
    """Turns a batch of records into service calls, in order; undecodable records become dead letters."""

    def __init__(self, service: CentralService, store: CentralStore, relay: OutboxRelay) -> None:
        self._service = service
        self._store = store
        self._relay = relay

    async def handle(self, records: list[ConsumerRecord]) -> None:
        # Facts before decisions: the engines' events of a batch are applied before
        # its requests, so a request is judged on the freshest state (after an
        # outage, a CP's session may have ended in the same backlog).
        records = sorted(records, key=lambda r: r.topic == TOPICS.driver_requests)
        events: list[tuple[ConsumerRecord, CpEvent]] = []
        for record in records:
            kind = DriverRequest if record.topic == TOPICS.driver_requests else CpEvent
            try:
                message = decode(record.value, kind)
            except ProtocolError as exc:
                await self._dead_letter(record, str(exc))
                continue
            if isinstance(message, (ChargeRequest, StopRequest)):
                await self._flush(events)
                if isinstance(message, ChargeRequest):
                    await self._service.charge(message)
                else:
                    await self._service.stop_request(message)
            else:
                events.append((record, message))  # type: ignore[arg-type]
        await self._flush(events)

    async def _flush(self, events: list[tuple[ConsumerRecord, CpEvent]]) -> None:
        if not events:
            return
        rejected = await self._service.apply_events([event for _, event in events])
        for position, reason in rejected.items():
            await self._dead_letter(events[position][0], reason)
        events.clear()

    async def _dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        self._service.counters["dead_letters"] = self._service.counters.get("dead_letters", 0) + 1
        await self._store.dead_letter(dead_letter(record, "central", reason))
        self._relay.wake()


async def _every(interval_s: float, action, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await action()
        await sleep_unless(stop, interval_s)
