"""`evcharge gateway`: OCPP chargers as charging points of evcharge, wired to the store, Kafka,
central and the metrics endpoint.

Start: open the store, start the outbox relay and the command inbox, and take
chargers only once commands can be read (as an engine opens its health port).
Stop, in this order: stop accepting, close every charger's connection (going
away; each charger's central link closes with it), end the owned tasks, let the
relay and the inbox finish, close the store. Nothing a charger was answered for
is only in memory at any point.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sqlite3
import uuid

import aiohttp
from aiokafka import ConsumerRecord

from evcharge.errors import ConfigError
from evcharge.gateway.authorisation import Authoriser
from evcharge.gateway.charger import Services
from evcharge.gateway.commands import CommandDesk
from evcharge.gateway.metrics import Metrics
from evcharge.gateway.recorder import TransactionRecorder
from evcharge.gateway.registry import Registry
from evcharge.gateway.server import OcppServer
from evcharge.gateway.settings import GatewaySettings
from evcharge.gateway.store import GatewayStore
from evcharge.gateway.tasks import OwnedTasks
from evcharge.protocol.topics import CODECS, TOPICS, Topic, dead_letter
from evcharge.runtime.inbox import Inbox, Subscription
from evcharge.runtime.retry import DEFAULT_POLICY, LinkWatch, RetryPolicy
from evcharge.runtime.tls import TlsFiles
from evcharge.runtime.waits import wait_first

log = logging.getLogger("evcharge.gateway")

AUTHORISE_TIMEOUT_S = 5.0


class Gateway:
    def __init__(self, settings: GatewaySettings, *, policy: RetryPolicy = DEFAULT_POLICY) -> None:
        self.settings = settings
        self.policy = policy
        self.instance = uuid.uuid4().hex
        self.port = 0
        self.metrics_port = 0
        self._store: GatewayStore | None = None
        self._recorder: TransactionRecorder | None = None

    async def run(self, stop: asyncio.Event) -> int:
        s = self.settings
        if not _is_loopback(s.host):
            # Beyond loopback a charger's password, its meter values and its key cross the network.
            # Even a trusted network does not make every charger on it known: no waiving the token.
            if s.join_token is None:
                raise ConfigError(
                    f"the gateway listens on {s.host}, beyond loopback: give --join-token so that "
                    "chargers must authenticate"
                )
            if not s.insecure and (missing := _unsecured(s)):
                raise ConfigError(
                    f"the gateway listens on {s.host}, beyond loopback: it needs {', '.join(missing)}; "
                    "or say --insecure on a trusted network"
                )
        consumer = f"gateway-{s.gateway_id}"
        kafka = s.kafka_access
        await kafka.check()  # a broker we must not trust: one line, no retries
        # Central is checked against --ca, but not shown --cert: that one is for the chargers (it
        # may come from a public CA that central, asking for client certificates of its own CA,
        # would refuse), and central knows each charger by the join token and its secret.
        central_tls = TlsFiles(s.tls.ca).client_context()
        store = self._store = await GatewayStore.open(s.store_path)
        # A charger's events wait for its key rather than go unsigned (see `signing`).
        store.hold_unsigned = s.signing
        recorder = self._recorder = TransactionRecorder(
            store, kafka, consumer=consumer, answer_timeout_s=s.answer_timeout_s, policy=self.policy
        )
        # With --ca, central's HTTP API (asked to authorise RFID cards) is https:// and checked.
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=central_tls) if central_tls is not None else None
        )
        tasks = OwnedTasks("gateway tasks")
        metrics = Metrics()
        registry = Registry()
        authoriser = Authoriser(store, http, s.central_url, price=s.price, timeout_s=AUTHORISE_TIMEOUT_S)
        services = Services(
            settings=s,
            store=store,
            recorder=recorder,
            authoriser=authoriser,
            registry=registry,
            metrics=metrics,
            tasks=tasks,
            instance=self.instance,
            central_watch=LinkWatch(log, "central", ",".join(f"{h}:{p}" for h, p in s.central)),
            kafka_watch=LinkWatch(
                log,
                "Kafka",
                s.kafka,
                (
                    "{what} does not acknowledge ({error}): chargers' transaction messages wait unanswered",
                    "{what} acknowledges again: chargers' transaction messages are answered",
                ),
            ),
            central_tls=central_tls,
            policy=self.policy,
            stop=stop,
        )
        desk = CommandDesk(store, registry, recorder, authoriser, tasks, instance=self.instance)
        inbox = Inbox(
            bootstrap=kafka,
            group_id=consumer,
            subscriptions=[Subscription(Topic.CP_COMMANDS)],
            codecs=CODECS,
            topics=TOPICS,
            handle=desk.handle,
            dead_letter=self._dead_letter,
            partitions=s.partitions,
            policy=self.policy,
            new_group_starts_at_end=True,
            name=consumer,
        )
        server = OcppServer(services)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(recorder.relay.run(stop), name="outbox relay")
                group.create_task(inbox.run(stop), name="command inbox")
                await wait_first(inbox.ready, stop)
                if not stop.is_set():
                    self.port = await server.start()
                    if s.metrics_port:
                        self.metrics_port = await metrics.serve(s.metrics_host, s.metrics_port)
                    scheme = "wss" if s.serves_tls else "ws"
                    log.info(
                        "gateway ready: %s://%s:%d/ocpp/<cp-id> (OCPP 2.0.1 and 1.6, %s), metrics on :%d",
                        scheme,
                        s.host,
                        self.port,
                        "HTTP Basic with the join token" if s.join_token else "no authentication",
                        self.metrics_port,
                    )
                await stop.wait()
                log.info("gateway stopping: %d chargers connected", len(registry))
                server.stop_accepting()
                await server.close()
                await tasks.close()
        finally:
            await server.close()
            await tasks.close()
            await registry.close()
            await metrics.close()
            await http.close()
            recorder.close()
            await store.close()
        return 0

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        assert self._store is not None and self._recorder is not None
        topic, key, payload = dead_letter(
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value,
            f"gateway-{self.settings.gateway_id}",
            reason,
        )

        def queue(db: sqlite3.Connection) -> None:
            GatewayStore.queue_raw(db, topic, key, payload)

        await self._store.write(queue)
        self._recorder.relay.wake()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _unsecured(s: GatewaySettings) -> list[str]:
    """What a gateway beyond loopback lacks to keep its chargers and their meter values its own."""
    needs = (
        ("TLS for the chargers (--cert, --key)", s.serves_tls),
        ("TLS to central and Kafka (--ca)", s.ca),
        ("Kafka credentials (--kafka-user, --kafka-password)", s.kafka_user),
    )
    return [need for need, given in needs if not given]
