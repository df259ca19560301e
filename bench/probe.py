"""The benchmark's own Kafka clients: a measuring driver, the bare one-hop floor, and central's lag.

`Prober` takes the driver's path minus its printing: it produces `ChargeRequest`s
to `evcharge.driver.requests` keyed by its driver id and reads only that id's
partition of `evcharge.driver.updates`, as `evcharge driver` does, timing each
update the moment it is decoded. Given its token (an enrolled driver), it proves
each request as `evcharge driver` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from evcharge.driver.conversation import DriverUpdate, Kind, hear
from evcharge.protocol.messages import (
    ChargeRequest,
    RequestAccepted,
    RequestDenied,
    StopRequest,
    Ticket,
    encode,
)
from evcharge.protocol.signing import PROOF_HEADER, driver_key, sign
from evcharge.protocol.topics import CODECS, TOPICS, Topic
from evcharge.runtime.inbox import Delivery, Inbox, Subscription
from evcharge.runtime.kafka import (
    REQUEST_TIMEOUT_MS,
    all_partitions,
    ensure_topics,
    new_admin,
    new_consumer,
    new_producer,
)
from evcharge.runtime.kafka_access import Kafka, access

SEND_TIMEOUT_S = 3.0
FLOOR_TOPIC = "evcharge.bench.floor"


class ProbeFailed(Exception):
    """A measured request did not get the answer it needed in time."""


@dataclass
class Charge:
    """One request's timeline, in seconds after it was handed to the producer."""

    cp_id: str
    accepted_s: float | None = None
    started_s: float | None = None  # the first ChargingProgress (seq 0): the supply began
    reading_s: float | None = None  # the first ChargingProgress with seq >= 1: a meter reading
    denied: str | None = None
    attempts: int = 1


@dataclass
class _Session:
    started: asyncio.Future[float]
    reading: asyncio.Future[float]
    ticket: asyncio.Future[float]


@dataclass
class Prober:
    bootstrap: Kafka
    driver_id: str
    partitions: int = 8
    token: str | None = None  # the driver's, when central requires enrolled drivers
    _producer: AIOKafkaProducer | None = field(default=None, init=False)
    _answers: dict[str, asyncio.Future[tuple[DriverUpdate, float]]] = field(default_factory=dict, init=False)
    _sessions: dict[str, _Session] = field(default_factory=dict, init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)  # sessions being closed
    _consumer_task: asyncio.Task[None] | None = field(default=None, init=False)
    _stop: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def start(self, timeout_s: float = 60) -> None:
        consumer = Inbox(
            bootstrap=self.bootstrap,
            # `driver-`: the groups the project's secure broker lets the driver user read with.
            group_id=f"driver-bench-{self.driver_id}",
            subscriptions=[Subscription(Topic.DRIVER_UPDATES, key=self.driver_id)],
            codecs=CODECS,
            topics=TOPICS,
            handle=self._on_updates,
            dead_letter=_ignore,
            partitions=self.partitions,
            new_group_starts_at_end=True,
            name="bench probe",
        )
        self._consumer_task = asyncio.get_running_loop().create_task(consumer.run(self._stop))
        async with asyncio.timeout(timeout_s):
            await self._new_producer()
            await consumer.ready.wait()

    async def close(self) -> None:
        self._stop.set()  # the consumer loop ends by itself, committing what it handled
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._consumer_task is not None:
            await asyncio.gather(self._consumer_task, return_exceptions=True)
        if self._producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._producer.stop()

    def _own(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _new_producer(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._producer.stop()
            self._producer = None
        producer = new_producer(self.bootstrap)
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._producer = producer

    async def _send(self, message: ChargeRequest | StopRequest) -> None:
        if self._producer is None:
            await self._new_producer()
        assert self._producer is not None
        payload = encode(message)
        proof = [(PROOF_HEADER, sign(driver_key(self.token), payload))] if self.token else None
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await self._producer.send_and_wait(
                Topic.DRIVER_REQUESTS, payload, key=self.driver_id.encode(), headers=proof
            )

    async def _on_updates(self, deliveries: list[Delivery[DriverUpdate]]) -> None:
        for delivery in deliveries:
            at = time.monotonic()
            update = delivery.message
            kind = hear(None, update).kind
            if kind in (Kind.ACCEPTED, Kind.DENIED):
                if isinstance(update, RequestAccepted):
                    # Before any progress of the same batch is looked at.
                    self._sessions.setdefault(update.session_id, self._new_session())
                waiter = self._answers.pop(update.request_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result((update, at))
                elif isinstance(update, RequestAccepted):
                    # An answer nobody waits for any more (a retried request): free the CP again.
                    self._own(self._stop_session(update.session_id))
            elif kind is Kind.PROGRESS:
                session = self._sessions.get(update.session_id)
                if session is not None:
                    _settle(session.started, at)
                    if update.seq >= 1:
                        _settle(session.reading, at)
            elif isinstance(update, Ticket):  # a first ticket or its revision: the session is over
                session = self._sessions.pop(update.session_id, None)
                if session is not None:
                    _settle(session.ticket, at)

    def _new_session(self) -> _Session:
        loop = asyncio.get_running_loop()
        return _Session(loop.create_future(), loop.create_future(), loop.create_future())

    async def _stop_session(self, session_id: str, timeout_s: float = 15.0) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            return  # already ended
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                await self._send(StopRequest(driver_id=self.driver_id, session_id=session_id))
                async with asyncio.timeout(min(3.0, max(0.1, deadline - time.monotonic()))):
                    await asyncio.shield(session.ticket)
                return
            except Exception:
                if session.ticket.done():
                    return
                await asyncio.sleep(0.1)
        raise ProbeFailed(f"session {session_id[:8]} was not closed within {timeout_s:g} s")

    # ------------------------------------------------------------ measurements

    async def charge(self, cp_id: str, *, reading: bool = False, timeout_s: float = 15.0) -> Charge:
        """One request at low load: accepted, supply started (and a meter reading), then stopped."""
        request_id = uuid.uuid4().hex
        waiter = self._answers[request_id] = asyncio.get_running_loop().create_future()
        sent = time.monotonic()
        await self._send(ChargeRequest(driver_id=self.driver_id, cp_id=cp_id, request_id=request_id))
        try:
            async with asyncio.timeout(timeout_s):
                update, at = await waiter
        except TimeoutError:
            self._answers.pop(request_id, None)
            raise ProbeFailed(f"no answer from central for {cp_id} within {timeout_s:g} s") from None
        result = Charge(cp_id)
        if isinstance(update, RequestDenied):
            result.denied = update.code.value
            return result
        assert isinstance(update, RequestAccepted)
        result.accepted_s = at - sent
        session = self._sessions[update.session_id]
        try:
            async with asyncio.timeout(timeout_s):
                result.started_s = await asyncio.shield(session.started) - sent
                if reading:
                    result.reading_s = await asyncio.shield(session.reading) - sent
        except TimeoutError:
            raise ProbeFailed(f"{cp_id}: accepted, but no progress within {timeout_s:g} s") from None
        finally:
            await self._stop_session(update.session_id)
        return result

    async def serve(self, cp_id: str, since: float, timeout_s: float) -> Charge:
        """Retry requests until one is accepted and its supply starts; times are after `since`.

        For recovery: while a component restarts a request may go unanswered or be
        denied (CP not back yet); each retry is a fresh request, and any answer
        that comes late is closed at once.
        """
        deadline = time.monotonic() + timeout_s
        result = Charge(cp_id, attempts=0)
        pending: dict[str, asyncio.Future[tuple[DriverUpdate, float]]] = {}
        try:
            while time.monotonic() < deadline:
                request_id = uuid.uuid4().hex
                waiter = self._answers[request_id] = asyncio.get_running_loop().create_future()
                result.attempts += 1
                try:
                    await self._send(
                        ChargeRequest(driver_id=self.driver_id, cp_id=cp_id, request_id=request_id)
                    )
                except Exception:
                    # The producer's metadata may be stale after a broker restart: a fresh one.
                    self._answers.pop(request_id, None)
                    with contextlib.suppress(Exception):
                        await self._new_producer()
                    await asyncio.sleep(0.05)
                    continue
                pending[request_id] = waiter
                answer = await self._first_answer(pending, min(3.0, max(0.05, deadline - time.monotonic())))
                if answer is None:
                    continue
                update, at = answer
                if isinstance(update, RequestDenied):
                    result.denied = update.code.value
                    await asyncio.sleep(0.05)
                    continue
                assert isinstance(update, RequestAccepted)
                result.accepted_s = at - since
                session = self._sessions[update.session_id]
                try:
                    async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                        result.started_s = await asyncio.shield(session.started) - since
                finally:
                    await self._stop_session(update.session_id)
                return result
        finally:
            for request_id in pending:
                self._answers.pop(request_id, None)  # a late accept is then closed by _on_updates
        raise ProbeFailed(f"{cp_id}: no request served within {timeout_s:g} s ({result.attempts} tries)")

    async def _first_answer(
        self, pending: dict[str, asyncio.Future[tuple[DriverUpdate, float]]], timeout_s: float
    ) -> tuple[DriverUpdate, float] | None:
        await asyncio.wait(
            [asyncio.shield(f) for f in pending.values()],
            timeout=timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        answered = [rid for rid, f in pending.items() if f.done()]
        results = [pending.pop(rid).result() for rid in answered]
        accepted = [r for r in results if isinstance(r[0], RequestAccepted)]
        for extra in accepted[1:]:
            self._own(self._stop_session(extra[0].session_id))  # type: ignore[union-attr]
        if accepted:
            return accepted[0]
        return results[0] if results else None


async def _ignore(record: ConsumerRecord[bytes, bytes], reason: str) -> None:
    """The probe measures; what it cannot read is central's to explain, not a figure."""


def _settle(future: asyncio.Future[float], at: float) -> None:
    if not future.done():
        future.set_result(at)


async def floor_round_trips(bootstrap: str, samples: int, warmup: int = 20) -> list[float]:
    """Bare aiokafka produce → consume on one partition, with the same client settings as evcharge."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=REQUEST_TIMEOUT_MS)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(FLOOR_TOPIC, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    tp = TopicPartition(FLOOR_TOPIC, 0)
    producer = new_producer(bootstrap)
    consumer = new_consumer(bootstrap, f"bench-floor-{uuid.uuid4().hex[:6]}")
    received: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()

    async def read() -> None:
        while True:
            record = await consumer.getone()
            received.put_nowait((record.value, time.monotonic()))

    await producer.start()
    await consumer.start()
    reader: asyncio.Task[None] | None = None
    try:
        for _ in range(50):  # the topic's leader may take a moment to be known
            try:
                consumer.assign([tp])
                await consumer.seek_to_end(tp)
                break
            except Exception:
                await asyncio.sleep(0.1)
        reader = asyncio.get_running_loop().create_task(read())
        times: list[float] = []
        for n in range(warmup + samples):
            payload = f"{n}".encode()
            sent = time.monotonic()
            await producer.send_and_wait(FLOOR_TOPIC, payload, key=b"floor", partition=0)
            while True:
                async with asyncio.timeout(10):
                    value, at = await received.get()
                if value == payload:
                    break
            if n >= warmup:
                times.append(at - sent)
        return times
    finally:
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await consumer.stop()
        await producer.stop()


class LagProbe:
    """How far central's consumer group is behind the end of `evcharge.cp.events`, and what it published.

    On the project's secure broker it needs a user that may read every group's offsets: `admin`.
    """

    def __init__(self, bootstrap: Kafka, partitions: int = 8) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        self._updates: list[TopicPartition] = []

    async def start(self, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    counts = await ensure_topics(self.bootstrap, TOPICS, self.partitions)
                    break
                except LookupError:  # on a fresh broker: just created, their leaders not elected yet
                    await asyncio.sleep(0.2)
        self._tps = all_partitions(counts, [Topic.CP_EVENTS])
        self._updates = all_partitions(counts, [Topic.DRIVER_UPDATES])
        self._admin = new_admin(self.bootstrap)
        await self._admin.start()
        self._consumer = AIOKafkaConsumer(
            **access(self.bootstrap).client_options(), request_timeout_ms=REQUEST_TIMEOUT_MS
        )
        await self._consumer.start()

    async def sample(self, group: str = "central") -> dict[str, int]:
        """Records ever written to cp events, those central has committed as handled, and
        records ever written to driver updates (what central's outbox relay published)."""
        assert self._admin is not None and self._consumer is not None
        ends = await self._consumer.end_offsets([*self._tps, *self._updates])
        committed = await self._admin.list_consumer_group_offsets(group, partitions=self._tps)
        return {
            "written": sum(ends[tp] for tp in self._tps),
            "committed": sum(max(0, meta.offset) for meta in committed.values() if meta is not None),
            "updates": sum(ends[tp] for tp in self._updates),
        }

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()
