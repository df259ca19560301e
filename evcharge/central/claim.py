"""Centrals on one Kafka share one store, or the later one does not start.

Two centrals that consume the same requests but keep different records (another
SQLite file, another database, another host) would contradict each other: one
authorises a charge the other denies. The store's lease cannot see that (each has
its own store); Kafka can. Every central announces itself on a one-partition topic
once a second: its instance, its store's identity and where it answers. Kafka puts
those claims in one order, so each central decides the same way:

- when it starts, a central writes its first claim and reads back up to it; a live
  claim (one within `LIVE_S` before its own) of a central on another store that
  claimed before its first claim means that one was there first: this one refuses
  to start, naming it (a central that first claimed after it refuses by itself);
- afterwards it keeps reading: a claim of another store's central can come after
  its own only if this one fell silent for longer than `LIVE_S` (frozen, cut off),
  so the other one rightly started: this one gives way and stops.

Centrals on the same store (a leader and its standbys) ignore each other here: the
store's lease decides among them. The broker's own timestamps (LogAppendTime) judge
liveness, so no two clocks need agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from aiokafka import TopicPartition

from evcharge.central.leadership import Holder
from evcharge.errors import ConfigError, ProtocolError
from evcharge.protocol.messages import CENTRAL_CLAIMS, CentralClaim, encode
from evcharge.protocol.topics import CLAIMS_TOPIC, Topic
from evcharge.runtime.kafka import ensure_topics, new_consumer, new_producer
from evcharge.runtime.kafka_access import Kafka
from evcharge.runtime.retry import DEFAULT_POLICY, Attempts, LinkWatch, keep_trying
from evcharge.runtime.waits import sleep_unless

log = logging.getLogger("evcharge.central.claim")

EVERY_S = 1.0
LIVE_S = 3.0  # three missed claims: that central is gone (or was frozen)
LOOK_BACK = 1000  # claims read before our own: minutes of history even for several centrals
PARTITION = TopicPartition(Topic.CENTRAL_CLAIMS, 0)
REFUSE_AFTER_S = 2 * LIVE_S  # a rival that keeps claiming this long runs: refuse, naming it
STOPPED = "stopped"  # the last claim of a central that stops in order
TIMEOUT_S = 30.0


class AnotherStoreLeads(ConfigError):
    """A central on another store runs on this Kafka: this one must not decide."""


@dataclass(frozen=True)
class Seen:
    claim: CentralClaim
    offset: int
    at_ms: int  # the broker's append time
    first_offset: int = -1  # the offset of the first claim read from that instance


def refusal(other: CentralClaim, store: str, *, we_were_silent: bool = False) -> AnotherStoreLeads:
    start = (
        "this central fell silent long enough for another to start"
        if we_were_silent
        else "another central already runs on this Kafka"
    )
    return AnotherStoreLeads(
        f"{start} with a different store: instance {other.instance} ({other.role}, pid {other.pid} on "
        f"{other.host}, HTTP {other.http}, monitors {other.tcp}, store {other.store}); this one's store "
        f"is {store}. Centrals on one Kafka must share one store: stop that central, or give this one "
        "the same PostgreSQL store (--store) to be its standby."
    )


class KafkaClaim:
    def __init__(self, bootstrap: Kafka, me: Holder, store_id: str, store: str, role: Any) -> None:
        self._bootstrap = bootstrap
        self._me = me
        self._store_id = store_id
        self._store = store
        self._role = role  # a callable: this central's role now, written in each claim
        self.staked = asyncio.Event()
        self._watch = LinkWatch(log, "Kafka", str(bootstrap))
        self._last_own_ms: int | None = None
        self._first_own_offset: int | None = None
        self._position = 0  # the next claim to read
        self._stopping = False

    @property
    def kafka_up(self) -> bool:
        return self._watch.up is not False

    def _claim(self) -> bytes:
        me = self._me
        return encode(
            CentralClaim(
                instance=me.instance,
                store_id=self._store_id,
                store=self._store,
                role=STOPPED if self._stopping else self._role(),
                http=me.http,
                tcp=me.tcp,
                pid=me.pid,
                host=me.host,
            )
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Stake the claim, then keep it: raises AnotherStoreLeads when this central must give way."""
        await keep_trying(
            lambda attempts: self._session(attempts, stop),
            watch=self._watch,
            stop=stop,
            policy=DEFAULT_POLICY,
        )

    async def _session(self, attempts: Attempts, stop: asyncio.Event) -> None:
        await ensure_topics(self._bootstrap, [CLAIMS_TOPIC], partitions=1)
        producer = new_producer(self._bootstrap)
        consumer = new_consumer(self._bootstrap, group_id=None)
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await producer.start()
                await consumer.start()
                consumer.assign([PARTITION])
                sent = await producer.send_and_wait(Topic.CENTRAL_CLAIMS, self._claim(), key=b"claim")
                if self._first_own_offset is None:
                    await self._stake(producer, consumer, sent.offset)
                else:  # back after an outage: judge every claim written meanwhile
                    consumer.seek(PARTITION, self._position)
            attempts.succeeded()
            await self._keep(producer, consumer, stop)
        finally:
            for client in (producer, consumer):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5.0):
                        await client.stop()

    async def _stake(self, producer: Any, consumer: Any, own_offset: int) -> None:
        """Read back to our claim; wait out a rival that may have just died, refuse one that runs."""
        consumer.seek(PARTITION, max(0, own_offset - LOOK_BACK))
        first_offset = own_offset
        latest: dict[str, Seen] = {}  # each other instance's last claim before ours
        first_live: dict[str, float] = {}  # when each rival was first seen live
        while True:
            own = await self._read_to(consumer, own_offset, latest)
            # Only a central that claimed before our first claim was here first. One that first
            # claimed after it is as new as we are, sees our claims before its own and refuses by
            # itself: counting it too, two centrals starting together would both refuse.
            rivals = [
                seen
                for seen in latest.values()
                if seen.claim.store_id != self._store_id
                and seen.claim.role != STOPPED
                and seen.first_offset < first_offset
                and own.at_ms - seen.at_ms <= LIVE_S * 1000
            ]
            if not rivals:
                break
            now = time.monotonic()
            for seen in rivals:
                first_live.setdefault(seen.claim.instance, now)
            rival = rivals[-1]
            if now - first_live[rival.claim.instance] >= REFUSE_AFTER_S:
                raise refusal(rival.claim, self._store)
            if len(first_live) == 1 and now == first_live[rival.claim.instance]:
                log.warning(
                    "another central with a different store claimed this Kafka %.1f s ago (%s at %s): "
                    "deciding nothing while making sure it is gone",
                    (own.at_ms - rival.at_ms) / 1000,
                    rival.claim.instance,
                    rival.claim.http,
                )
            await asyncio.sleep(EVERY_S)
            sent = await producer.send_and_wait(Topic.CENTRAL_CLAIMS, self._claim(), key=b"claim")
            own_offset = sent.offset
        self._first_own_offset = own_offset
        self._last_own_ms = own.at_ms
        self.staked.set()
        log.info("central's claim on this Kafka holds: no central of another store is live on it")

    async def _read_to(self, consumer: Any, own_offset: int, latest: dict[str, Seen]) -> Seen:
        """Read the claims up to and including ours (returned), keeping the others' latest."""
        while True:
            for seen in await self._read(consumer):
                if seen.offset == own_offset:
                    return seen
                if seen.claim.instance != self._me.instance:
                    before = latest.get(seen.claim.instance)
                    first = before.first_offset if before is not None else seen.offset
                    latest[seen.claim.instance] = replace(seen, first_offset=first)

    async def _keep(self, producer: Any, consumer: Any, stop: asyncio.Event) -> None:
        while True:
            for seen in await self._read(consumer, timeout_ms=100):
                self._judge(seen)
            if await sleep_unless(stop, EVERY_S / 2):
                # Said on the way out, so a central started next on another store need not wait.
                self._stopping = True
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await producer.send_and_wait(Topic.CENTRAL_CLAIMS, self._claim(), key=b"claim")
                return
            await producer.send_and_wait(Topic.CENTRAL_CLAIMS, self._claim(), key=b"claim")

    def _judge(self, seen: Seen) -> None:
        claim = seen.claim
        if claim.instance == self._me.instance:
            self._last_own_ms = seen.at_ms
            return
        if claim.store_id == self._store_id or claim.role == STOPPED or self._first_own_offset is None:
            return
        if seen.offset < self._first_own_offset:
            return
        silent = self._last_own_ms is None or seen.at_ms - self._last_own_ms > LIVE_S * 1000
        if silent:
            raise refusal(claim, self._store, we_were_silent=True)
        # Otherwise that central saw our claim before its own and refuses by itself.

    async def _read(self, consumer: Any, timeout_ms: int = 1000) -> list[Seen]:
        batches = await consumer.getmany(PARTITION, timeout_ms=timeout_ms)
        seen = []
        for record in batches.get(PARTITION, []):
            try:
                claim = CENTRAL_CLAIMS.decode(record.value or b"")
            except ProtocolError:
                continue  # not a claim: nothing to judge by
            seen.append(Seen(claim, record.offset, int(record.timestamp)))
        if batches.get(PARTITION):
            self._position = batches[PARTITION][-1].offset + 1
        return seen
