"""`evcharge central`: wires the service to its store, Kafka, the monitors' TCP port, HTTP and the panel."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from evcharge.central.audit import AuditLog
from evcharge.central.decisions import Rules
from evcharge.central.facts import DeadLettered
from evcharge.central.http_api import CentralApi
from evcharge.central.ledger import CpEvent
from evcharge.central.live import LiveFeed
from evcharge.central.metrics import Metrics
from evcharge.central.monitor_server import MonitorServer
from evcharge.central.observers import Counters, Messages
from evcharge.central.service import CentralService
from evcharge.central.settings import CentralSettings
from evcharge.central.store import CentralStore, open_store
from evcharge.central.store.sqlite import SqliteStore
from evcharge.protocol.messages import ChargeRequest, StopRequest, new_id
from evcharge.protocol.topics import CODECS, TOPICS, Topic, dead_letter
from evcharge.runtime.inbox import Delivery, Inbox, Subscription
from evcharge.runtime.outbox import OutboxRelay

log = logging.getLogger("evcharge.central")


class CentralApp:
    def __init__(self, settings: CentralSettings, *, auth: bool) -> None:
        self.settings = settings
        self.auth = auth
        self.instance = new_id()

    def audit_path(self, store: CentralStore) -> Any:
        s = self.settings
        if s.audit_log is not None:
            return s.audit_log
        if isinstance(store, SqliteStore):
            return store.database.path.parent / "audit.log"
        return s.state_dir / "audit.log"

    async def run(self, stop: asyncio.Event) -> int:
        s = self.settings
        store = await open_store(s.store)
        if isinstance(store, SqliteStore):
            where = f"monitors on {s.host}:{s.tcp_port}, HTTP on {s.host}:{s.http_port}"
            store.claim(f"central pid {os.getpid()} ({where})")
        relay = OutboxRelay(store.outbox, s.kafka)
        messages, counters, metrics = Messages(), Counters(), Metrics()
        audit = AuditLog(self.audit_path(store))
        service = CentralService(
            store,
            Rules(
                request_ttl_s=s.request_ttl_s,
                start_timeout_s=s.start_timeout_s,
                join_token=s.join_token if self.auth else None,
            ),
            observers=[messages, counters, metrics, audit],
            on_outbox=relay.wake,
        )
        self.service = service
        live = LiveFeed(lambda: service.state, messages, role=lambda: "single", instance=self.instance)
        service.observers.append(live)
        await service.load()
        dispatcher = _Dispatcher(service, store, relay, metrics)
        inbox = Inbox(
            bootstrap=s.kafka,
            group_id="central",
            subscriptions=[Subscription(Topic.DRIVER_REQUESTS), Subscription(Topic.CP_EVENTS)],
            codecs=CODECS,
            topics=TOPICS,
            handle=dispatcher.handle,
            dead_letter=dispatcher.dead_letter,
            partitions=s.partitions,
            name="central",
        )
        monitors = MonitorServer(
            service, s.host, s.tcp_port, heartbeat_timeout_s=s.heartbeat_timeout_s, instance=self.instance
        )
        api = CentralApi(
            service,
            messages,
            counters,
            instance=self.instance,
            kafka_up=lambda: relay.kafka_up and inbox.kafka_up,
            store_state=lambda: f"cannot record: {inbox.store_error}" if inbox.store_error else "ok",
            operator_token=s.operator_token if self.auth else None,
            live=live,
            metrics=lambda: metrics.render(
                service.state, store.outbox.outbox_stats, lambda: _lags(inbox), time.time(), leader=True
            ),
        )
        runner = web.AppRunner(api.app, access_log=None)
        try:
            await monitors.start()
            await runner.setup()
            await web.TCPSite(runner, s.host, s.http_port).start()
            log.info("HTTP API on http://%s:%d (store %s, Kafka %s)", s.host, s.http_port, store.url, s.kafka)
            async with asyncio.TaskGroup() as tasks:
                # The page is live from the start: it sees the monitors come back.
                tasks.create_task(live.run(stop), name="live feed")
                await service.wait_for_monitors(s.startup_grace_s, stop)
                tasks.create_task(relay.run(stop), name="outbox relay")
                tasks.create_task(inbox.run(stop), name="kafka inbox")
                tasks.create_task(monitors.watch_heartbeats(stop), name="heartbeat watch")
                tasks.create_task(service.run_deadlines(stop), name="start deadlines")
                if s.panel:
                    from evcharge.central.panel import run_panel

                    tasks.create_task(run_panel(service, messages, stop), name="panel")
                await stop.wait()
                log.info("central stopping: closing monitor connections, flushing the outbox")
        finally:
            # Order: stop accepting, drop peers (they reconnect elsewhere), then close the store.
            live.close()
            await monitors.close()
            await runner.cleanup()
            await store.close()
            audit.close()
        log.info("central stopped")
        return 0


async def _lags(inbox: Inbox) -> dict[tuple[str, int], int]:
    return {(tp.topic, tp.partition): lag for tp, lag in (await inbox.lags()).items()}


class _Dispatcher:
    """Turns a batch of deliveries into service calls, in order; misfits become dead letters."""

    def __init__(
        self, service: CentralService, store: CentralStore, relay: OutboxRelay, metrics: Metrics
    ) -> None:
        self._service = service
        self._store = store
        self._relay = relay
        self._metrics = metrics

    async def handle(self, deliveries: Sequence[Delivery[Any]]) -> None:
        # Facts before decisions: the engines' events of a batch are applied before
        # its requests, so a request is judged on the freshest state (after an
        # outage, a CP's session may have ended in the same backlog).
        ordered = sorted(deliveries, key=lambda d: d.record.topic == Topic.DRIVER_REQUESTS)
        events: list[Delivery[CpEvent]] = []
        for delivery in ordered:
            message = delivery.message
            if isinstance(message, ChargeRequest):
                await self._flush(events)
                # The broker stamped the request when it arrived (LogAppendTime): its age
                # needs no trust in the driver's clock.
                waited = max(0.0, time.time() - delivery.broker_time_s)
                await self._service.charge(message, waited_s=waited)
            elif isinstance(message, StopRequest):
                await self._flush(events)
                await self._service.stop_request(message)
            else:
                events.append(delivery)
        await self._flush(events)

    async def _flush(self, events: list[Delivery[CpEvent]]) -> None:
        if not events:
            return
        with self._metrics.event_apply.time():
            rejected = await self._service.apply_events([d.message for d in events])
        for position, (code, reason) in rejected.items():
            record = events[position].record
            log.warning(
                "central set aside record %s[%d]@%d as a dead letter: %s",
                record.topic,
                record.partition,
                record.offset,
                reason,
            )
            await self.dead_letter(record, reason, code)
        events.clear()

    async def dead_letter(self, record: Any, reason: str, code: str = "undecodable") -> None:
        await self._store.dead_letter(
            *dead_letter(
                record.topic, record.partition, record.offset, record.key, record.value, "central", reason
            )
        )
        self._service.tell(DeadLettered(record.topic, reason, code))
        self._relay.wake()
