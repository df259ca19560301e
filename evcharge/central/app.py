"""`evcharge central`: wires the service to its store, Kafka, the monitors' TCP port, HTTP and the panel."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from evcharge.central import provenance
from evcharge.central.audit import AuditLog
from evcharge.central.claim import AnotherStoreLeads, KafkaClaim
from evcharge.central.decisions import Rules
from evcharge.central.facts import DeadLettered
from evcharge.central.http_api import CentralApi
from evcharge.central.leadership import Holder, Leadership
from evcharge.central.ledger import CpEvent
from evcharge.central.live import LiveFeed
from evcharge.central.metrics import Metrics
from evcharge.central.monitor_server import MonitorServer
from evcharge.central.observers import Counters, Messages
from evcharge.central.service import CentralService
from evcharge.central.settings import CentralSettings
from evcharge.central.standby import Standby
from evcharge.central.store import CentralStore, open_store
from evcharge.central.store.postgres import PostgresStore
from evcharge.central.store.sqlite import SqliteStore
from evcharge.errors import Fenced, Refused
from evcharge.protocol.messages import ChargeRequest, DenyCode, StopRequest, new_id
from evcharge.protocol.topics import CODECS, TOPICS, Topic, dead_letter
from evcharge.runtime.inbox import Delivery, Inbox, Subscription
from evcharge.runtime.outbox import OutboxRelay
from evcharge.runtime.waits import wait_first

log = logging.getLogger("evcharge.central")

NO_EPOCH = -1  # matches no epoch of the store: every commit is refused


class CentralApp:
    """One central: always serving HTTP and the monitors' port; deciding only while it leads.

    With a SQLite store it leads from the start, alone. With a shared PostgreSQL
    store it is a standby until the lease is its own, then leads until it stops or
    loses the lease (a newer epoch; a fenced commit or publish), and is a standby
    again. Before any decision it has staked its claim on Kafka (`claim.py`).
    """

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
        try:
            return await self._run(stop)
        except* AnotherStoreLeads as refused:
            raise refused.exceptions[0] from None

    async def _run(self, stop: asyncio.Event) -> int:
        s = self.settings
        kafka = s.kafka_access
        tls = s.tls
        await kafka.check()  # a broker we must not trust: one line, no retries
        store = await open_store(s.store)
        if isinstance(store, SqliteStore):
            where = f"monitors on {s.host}:{s.tcp_port}, HTTP on {s.host}:{s.http_port}"
            store.claim(f"central pid {os.getpid()} ({where})")
        host = s.advertised_host
        scheme = "https" if tls.serving else "http"
        me = Holder(
            self.instance, f"{host}:{s.tcp_port}", f"{scheme}://{host}:{s.http_port}", os.getpid(), host
        )
        lease = store.leadership_lease()
        if isinstance(store, PostgresStore):
            store.epoch = NO_EPOCH  # a standby's commits are refused until it leads
        leadership = Leadership(lease, me, lease_s=s.lease_s, renew_every_s=s.lease_s / 4)
        store_id = await store.identity()
        claim = KafkaClaim(kafka, me, store_id, store.url, role=lambda: leadership.role)
        links = _Links()
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
            on_outbox=links.wake_relay,
        )
        service.may_decide = lambda: leadership.leading and claim.staked.is_set()
        service.on_fenced = lambda: leadership.step_down("the store refused a commit: another central leads")
        self.service = service
        live = LiveFeed(lambda: service.state, messages, role=lambda: leadership.role, instance=self.instance)
        service.observers.append(live)
        standby = Standby(
            lambda: leadership.leading, leadership.leader, staked=claim.staked, tls=tls.client_context()
        )
        monitors = MonitorServer(
            service,
            s.host,
            s.tcp_port,
            heartbeat_timeout_s=s.heartbeat_timeout_s,
            instance=self.instance,
            leader_hint=lambda: _not_leader(leadership),
            counts=counters.counts,
            tls=tls.server_context(),
        )
        api = CentralApi(
            service,
            messages,
            counters,
            instance=self.instance,
            kafka_up=lambda: claim.kafka_up and links.kafka_up(),
            store_state=links.store_state,
            role=lambda: leadership.role,
            leader=leadership.leader,
            epoch=lambda: leadership.epoch if leadership.leading and leadership.shared else None,
            operator_token=s.operator_token if self.auth else None,
            live=live,
            metrics=lambda: metrics.render(
                service.state, store.outbox.outbox_stats, links.lags, time.time(), leader=leadership.leading
            ),
            standby=standby,
            drivers_proven=self.auth and s.proofs_required,
        )
        runner = web.AppRunner(api.app, access_log=None)
        await service.load()  # before the API answers: a leader's first term starts from this
        try:
            await monitors.start()
            await runner.setup()
            await web.TCPSite(runner, s.host, s.http_port, ssl_context=tls.server_context()).start()
            log.info(
                "HTTP API on %s://%s:%d (store %s, Kafka %s%s)",
                scheme,
                s.host,
                s.http_port,
                store.url,
                s.kafka,
                f" as {kafka.user}" if kafka.secure else "",
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(claim.run(stop), name="Kafka claim")
                tasks.create_task(live.run(stop), name="live feed")
                tasks.create_task(standby.run(stop), name="standby's view of the leader")
                tasks.create_task(monitors.watch_heartbeats(stop), name="heartbeat watch")
                if s.panel:
                    from evcharge.central.panel import run_panel

                    tasks.create_task(run_panel(service, messages, stop), name="panel")
                while await leadership.wait_to_lead(stop):
                    await self._lead(stop, store, leadership, claim, service, monitors, links, metrics)
                    if stop.is_set():
                        break
                    monitors.drop_all("this central no longer leads")
                    leadership.became_standby()
                stop.set()
                log.info("central stopping: closing monitor connections, flushing the outbox")
        finally:
            # Order: hand the lead over, stop accepting, drop peers (they reconnect elsewhere),
            # then close the store.
            await leadership.release()
            live.close()
            await monitors.close()
            await runner.cleanup()
            await store.close()
            audit.close()
        log.info("central stopped")
        return 0

    async def _lead(
        self,
        stop: asyncio.Event,
        store: CentralStore,
        leadership: Leadership,
        claim: KafkaClaim,
        service: CentralService,
        monitors: MonitorServer,
        links: _Links,
        metrics: Metrics,
    ) -> None:
        """One term as the leader: until `stop`, or until the lead is lost."""
        s = self.settings
        if isinstance(store, PostgresStore):
            store.epoch = leadership.epoch
        if leadership.shared:
            await service.load()  # other centrals may have led since: start from the store
        ended = asyncio.Event()
        relay = OutboxRelay(
            store.outbox,
            s.kafka_access,
            # One id per store: the relay of the next leader fences this one's at its start.
            transactional_id=f"evcharge-central-{await store.identity()}",
            headers=[("central", self.instance.encode())],
        )
        dispatcher = _Dispatcher(service, store, relay, metrics, check_proofs=self.auth and s.proofs_required)
        inbox = Inbox(
            bootstrap=s.kafka_access,
            group_id="central",
            subscriptions=[Subscription(Topic.DRIVER_REQUESTS), Subscription(Topic.CP_EVENTS)],
            codecs=CODECS,
            topics=TOPICS,
            handle=dispatcher.handle,
            dead_letter=dispatcher.dead_letter,
            partitions=s.partitions,
            name="central",
        )
        links.serve(relay, inbox)

        async def decide() -> None:
            # Nothing is decided before the Kafka claim holds and the monitors are back.
            await wait_first(claim.staked, ended)
            if ended.is_set():
                return
            await service.wait_for_monitors(s.startup_grace_s, ended)
            async with asyncio.TaskGroup() as deciding:
                deciding.create_task(relay.run(ended), name="outbox relay")
                deciding.create_task(inbox.run(ended), name="kafka inbox")
                deciding.create_task(service.run_deadlines(ended), name="start deadlines")

        try:
            async with asyncio.TaskGroup() as term:
                term.create_task(leadership.hold(ended), name="lease renewal")
                term.create_task(decide(), name="deciding")
                await wait_first(stop, leadership.lost)
                ended.set()
        except* Fenced as fenced:
            leadership.step_down(str(fenced.exceptions[0]))
        finally:
            links.serve(None, None)
            if isinstance(store, PostgresStore) and leadership.lost.is_set():
                store.epoch = NO_EPOCH


def _not_leader(leadership: Leadership) -> Refused | None:
    if leadership.leading:
        return None
    leader = leadership.known_leader
    where = f"; the leader is {leader.instance} at {leader.tcp}" if leader else "; no leader right now"
    return Refused("not_leader", f"this central is a standby{where}", leader=leader.tcp if leader else None)


class _Links:
    """What HTTP and /metrics read from the Kafka clients of the current term (none in standby)."""

    def __init__(self) -> None:
        self._relay: OutboxRelay | None = None
        self._inbox: Inbox | None = None

    def serve(self, relay: OutboxRelay | None, inbox: Inbox | None) -> None:
        self._relay, self._inbox = relay, inbox

    def wake_relay(self) -> None:
        if self._relay is not None:
            self._relay.wake()

    def kafka_up(self) -> bool:
        return (self._relay is None or self._relay.kafka_up) and (self._inbox is None or self._inbox.kafka_up)

    def store_state(self) -> str:
        error = self._inbox.store_error if self._inbox is not None else None
        return f"cannot record: {error}" if error else "ok"

    async def lags(self) -> dict[tuple[str, int], int]:
        return await _lags(self._inbox) if self._inbox is not None else {}


async def _lags(inbox: Inbox) -> dict[tuple[str, int], int]:
    return {(tp.topic, tp.partition): lag for tp, lag in (await inbox.lags()).items()}


class _Dispatcher:
    """Turns a batch of deliveries into service calls, in order; misfits become dead letters.

    With credentials on (`check_proofs`) nothing is decided on a record that does not
    prove who wrote it: a forged event is set aside as a dead letter (`forged`), a
    request without its driver's proof is denied with why.
    """

    def __init__(
        self,
        service: CentralService,
        store: CentralStore,
        relay: OutboxRelay,
        metrics: Metrics,
        *,
        check_proofs: bool = False,
    ) -> None:
        self._service = service
        self._store = store
        self._relay = relay
        self._metrics = metrics
        self._check_proofs = check_proofs

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
                await self._service.charge(message, waited_s=waited, unproven=self._unproven(delivery))
            elif isinstance(message, StopRequest):
                await self._flush(events)
                await self._service.stop_request(message, unproven=self._unproven(delivery))
            elif self._check_proofs and message.cp_id in self._service.state.cps:
                forged = provenance.event_forgery(
                    self._service.state, message.cp_id, delivery.record.value or b"", delivery.record.headers
                )
                if forged is None:
                    events.append(delivery)
                    continue
                await self._flush(events)
                log.warning("central refused a record of %s: %s", delivery.record.topic, forged)
                await self.dead_letter(delivery.record, forged, "forged", claimed=message.cp_id)
            else:
                events.append(delivery)
        await self._flush(events)

    def _unproven(self, delivery: Delivery[Any]) -> tuple[DenyCode, str] | None:
        if not self._check_proofs:
            return None
        record = delivery.record
        return provenance.request_unproven(
            self._service.state, delivery.message.driver_id, record.value or b"", record.headers
        )

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

    async def dead_letter(
        self, record: Any, reason: str, code: str = "undecodable", claimed: str = ""
    ) -> None:
        await self._store.dead_letter(
            *dead_letter(
                record.topic, record.partition, record.offset, record.key, record.value, "central", reason
            )
        )
        self._service.tell(DeadLettered(record.topic, reason, code, claimed))
        self._relay.wake()
