"""Every role against what arrives on Kafka: stale requests, replays, undecodable records."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer

from evcharge.messages import (
    ChargeRequest,
    DeadLetter,
    DriverUpdate,
    MeterReading,
    RequestDenied,
    decode,
    encode,
)
from evcharge.runtime.kafka import TOPICS, ensure_topics, key_partition, new_producer
from evcharge.supervisor import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]


async def read_until(bootstrap: str, topic: str, key: str, predicate, timeout_s: float = 20):
    """Read `topic`'s partition for `key` from the start until a record satisfies `predicate`."""
    counts = await ensure_topics(bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = key_partition(counts, topic, key)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        async with asyncio.timeout(timeout_s):
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        found = predicate(record)
                        if found:
                            return found
    finally:
        await consumer.stop()


async def send(bootstrap: str, topic: str, key: str, payload: bytes) -> None:
    producer = new_producer(bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, payload, key=key.encode())
    finally:
        await producer.stop()


async def test_a_request_that_waited_too_long_is_refused_as_expired(system) -> None:
    system.central_args = ["--request-ttl", "5"]
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    driver = system.ident("driver-late")
    stale = ChargeRequest(driver_id=driver, cp_id=cp.cp_id, request_id="stale-1", ts=time.time() - 60)
    await send(system.kafka, TOPICS.driver_requests, driver, encode(stale))

    def denial(record):
        update = decode(record.value, DriverUpdate)
        return update if isinstance(update, RequestDenied) and update.request_id == "stale-1" else None

    found = await read_until(system.kafka, TOPICS.driver_updates, driver, denial)
    assert found.code.value == "expired" and "waited more than 5 s" in found.reason
    assert system.status(cp.cp_id) == "ON", "an expired request starts nothing"


async def test_a_replayed_request_is_decided_once(system) -> None:
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    driver = system.ident("driver-twice")
    request = ChargeRequest(driver_id=driver, cp_id=cp.cp_id, request_id="twice-1")
    for _ in range(3):
        await send(system.kafka, TOPICS.driver_requests, driver, encode(request))
    system.wait_status(cp.cp_id, "SUPPLYING", 15)
    system.wait_status(cp.cp_id, "ON", 30)
    mine = [s for s in system.sessions() if s["driver_id"] == driver]
    assert len(mine) == 1, f"one request id, one session: {mine}"


async def test_unusable_records_are_dead_lettered_with_the_reason_and_central_carries_on(system) -> None:
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    driver, ghost = system.ident("garbage"), system.ident("CP-ghost")
    future = encode(ChargeRequest(driver_id=driver, cp_id=cp.cp_id, request_id="future-1", v=2))
    negative = (
        b'{"type": "meter", "cp_id": "%s", "session_id": "s1", "seq": 1, "kw": 1, "kwh": -1, "eur": 0}'
        % cp.cp_id.encode()
    )
    unknown_cp = encode(MeterReading(cp_id=ghost, session_id="s2", seq=1, kw=1, kwh=1, eur=1))
    unknown_session = encode(MeterReading(cp_id=cp.cp_id, session_id="nobody", seq=1, kw=1, kwh=1, eur=1))
    cases = {
        (TOPICS.driver_requests, driver, b"\x00\xffnot json"): "JSON",
        (TOPICS.driver_requests, driver, b'{"type": "charge_request"}'): "missing required field",
        (TOPICS.driver_requests, driver, future): "schema version 2",
        (TOPICS.cp_events, cp.cp_id, negative): ">= 0",
        (TOPICS.cp_events, ghost, unknown_cp): "not a known charging point",
        (TOPICS.cp_events, cp.cp_id, unknown_session): "is not known here",
    }
    for topic, key, payload in cases:
        await send(system.kafka, topic, key, payload)

    for (topic, key, payload), reason in cases.items():

        def letter(record, payload=payload):
            message = decode(record.value, DeadLetter)
            return message if message.payload == payload else None

        found = await read_until(system.kafka, TOPICS.dead_letters, topic, letter)
        assert found.consumer == "central" and found.source_topic == topic and found.key == key
        assert reason in found.reason, (reason, found.reason)
    status, _ = system.post("/request/charge", {"driver_id": system.ident("d"), "cp_id": cp.cp_id})
    assert status == 201, "central carries on after bad records"
    assert system.get("/health")["counters"]["dead_letters"] == len(cases)


async def test_an_engine_and_a_driver_set_undecodable_records_aside_and_carry_on(system) -> None:
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    alice = system.ident("driver-alice")
    await send(system.kafka, TOPICS.cp_commands, cp.cp_id, b'{"type": "start_supply", "cp_id": 42}')
    system.start_driver(alice, [cp.cp_id, cp.cp_id], interval_s=0.2)
    wait_until(lambda: "accepted" in system.drivers[alice].output(), 30, "alice's first request accepted")
    await send(system.kafka, TOPICS.driver_updates, alice, b"\x01 not an update")

    def letter_from(consumer: str, payload: bytes):
        def match(record):
            message = decode(record.value, DeadLetter)
            return message if message.consumer == consumer and message.payload == payload else None

        return match

    engine_letter = await read_until(
        system.kafka,
        TOPICS.dead_letters,
        TOPICS.cp_commands,
        letter_from(f"engine-{cp.cp_id}", b'{"type": "start_supply", "cp_id": 42}'),
    )
    assert "cp_id" in engine_letter.reason
    driver_letter = await read_until(
        system.kafka,
        TOPICS.dead_letters,
        TOPICS.driver_updates,
        letter_from(f"driver-{alice}", b"\x01 not an update"),
    )
    assert driver_letter.key == alice
    system.wait_driver_done(alice, 60)
    assert [t.reason for t in system.tickets(alice)] == ["completed", "completed"]
    system.assert_invariants()
