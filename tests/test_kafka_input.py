"""Every role against what arrives on Kafka: stale requests, replays, undecodable records."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer

from evcharge.protocol.messages import (
    DEAD_LETTERS,
    DRIVER_UPDATES,
    ChargeRequest,
    MeterReading,
    RequestAccepted,
    RequestDenied,
    encode,
)
from evcharge.protocol.topics import TOPICS, Topic
from evcharge.runtime.kafka import ensure_topics, key_partition, new_producer
from tests.harness import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]


async def read_until(bootstrap: str, topic: str, key: str, predicate, timeout_s: float = 20):
    """Read `topic`'s partition for `key` from the start until a record satisfies `predicate`."""
    counts = await ensure_topics(bootstrap, TOPICS)
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


def answer_to(request_id: str):
    def match(record):
        update = DRIVER_UPDATES.decode(record.value)
        if isinstance(update, (RequestAccepted, RequestDenied)) and update.request_id == request_id:
            return update
        return None

    return match


async def test_a_request_that_waited_in_kafka_past_its_ttl_is_refused_as_expired(system) -> None:
    system.central_overrides = {"request_ttl_s": 2.0, "startup_grace_s": 0.0}
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    driver = system.ident("driver-late")
    system.central.stop()
    await send(
        system.kafka,
        Topic.DRIVER_REQUESTS,
        driver,
        encode(ChargeRequest(driver_id=driver, cp_id=cp.cp_id, request_id="stale-1")),
    )
    await asyncio.sleep(3)  # the request waits in Kafka, longer than its TTL, while central is down
    system.start_central()
    found = await read_until(system.kafka, Topic.DRIVER_UPDATES, driver, answer_to("stale-1"))
    assert isinstance(found, RequestDenied)
    assert found.code.value == "expired" and "waited more than 2 s" in found.reason
    assert system.status(cp.cp_id) in ("ON", "DISCONNECTED"), "an expired request starts nothing"
    assert not system.sessions()


async def test_the_age_of_a_request_is_the_broker_s_to_tell_not_the_driver_s_clock(system) -> None:
    system.central_overrides = {"request_ttl_s": 5.0}
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    driver = system.ident("driver-skewed")
    # A driver whose clock runs 90 s behind stamps its request 90 s "old": it has waited none.
    skewed = ChargeRequest(driver_id=driver, cp_id=cp.cp_id, request_id="skew-1", ts=time.time() - 90)
    await send(system.kafka, Topic.DRIVER_REQUESTS, driver, encode(skewed))
    found = await read_until(system.kafka, Topic.DRIVER_UPDATES, driver, answer_to("skew-1"))
    assert isinstance(found, RequestAccepted)


async def test_a_replayed_request_is_decided_once(system) -> None:
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    driver = system.ident("driver-twice")
    request = ChargeRequest(driver_id=driver, cp_id=cp.cp_id, request_id="twice-1")
    for _ in range(3):
        await send(system.kafka, Topic.DRIVER_REQUESTS, driver, encode(request))
    system.wait_status(cp.cp_id, "SUPPLYING", 15)
    system.wait_status(cp.cp_id, "ON", 30)
    mine = [s for s in system.sessions() if s["driver_id"] == driver]
    assert len(mine) == 1, f"one request id, one session: {mine}"


async def test_unusable_records_are_dead_lettered_with_the_reason_and_central_carries_on(system) -> None:
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    driver, ghost = system.ident("garbage"), system.ident("CP-ghost")
    future = encode(ChargeRequest(driver_id=driver, cp_id=cp.cp_id, request_id="future-1", v=3))
    negative = (
        b'{"type": "meter", "cp_id": "%s", "session_id": "s1", "seq": 1, '
        b'"power_w": 1, "wh": -1, "micro_eur": 0}' % cp.cp_id.encode()
    )
    unknown_cp = encode(MeterReading(cp_id=ghost, session_id="s2", seq=1, power_w=1, wh=1, micro_eur=1))
    unknown_session = encode(
        MeterReading(cp_id=cp.cp_id, session_id="nobody", seq=1, power_w=1, wh=1, micro_eur=1)
    )
    cases = {
        (Topic.DRIVER_REQUESTS, driver, b"\x00\xffnot json"): "JSON",
        (Topic.DRIVER_REQUESTS, driver, b'{"type": "charge_request"}'): "missing required field",
        (Topic.DRIVER_REQUESTS, driver, future): "schema version 3",
        (Topic.CP_EVENTS, cp.cp_id, negative): ">= 0",
        (Topic.CP_EVENTS, ghost, unknown_cp): "not a known charging point",
        (Topic.CP_EVENTS, cp.cp_id, unknown_session): "is not known here",
    }
    for topic, key, payload in cases:
        await send(system.kafka, topic, key, payload)

    for (topic, key, payload), reason in cases.items():

        def letter(record, payload=payload):
            message = DEAD_LETTERS.decode(record.value)
            return message if message.payload == payload else None

        found = await read_until(system.kafka, Topic.DEAD_LETTERS, topic, letter)
        assert found.consumer == "central" and found.source_topic == topic and found.key == key
        assert reason in found.reason, (reason, found.reason)
    status, _ = system.post("/request/charge", {"driver_id": system.ident("d"), "cp_id": cp.cp_id})
    assert status == 201, "central carries on after bad records"
    assert system.get("/health")["counters"]["dead_letters"] == len(cases)


async def test_an_engine_and_a_driver_set_undecodable_records_aside_and_carry_on(system) -> None:
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    alice = system.ident("driver-alice")
    await send(system.kafka, Topic.CP_COMMANDS, cp.cp_id, b'{"type": "start_supply", "cp_id": 42}')
    system.start_driver(alice, [cp.cp_id, cp.cp_id], interval_s=0.2)
    wait_until(
        lambda: any(e["event"] == "accepted" for e in system.events(alice)),
        30,
        "alice's first request accepted",
    )
    await send(system.kafka, Topic.DRIVER_UPDATES, alice, b"\x01 not an update")

    def letter_from(consumer: str, payload: bytes):
        def match(record):
            message = DEAD_LETTERS.decode(record.value)
            return message if message.consumer == consumer and message.payload == payload else None

        return match

    engine_letter = await read_until(
        system.kafka,
        Topic.DEAD_LETTERS,
        Topic.CP_COMMANDS,
        letter_from(f"engine-{cp.cp_id}", b'{"type": "start_supply", "cp_id": 42}'),
    )
    assert "cp_id" in engine_letter.reason
    driver_letter = await read_until(
        system.kafka,
        Topic.DEAD_LETTERS,
        Topic.DRIVER_UPDATES,
        letter_from(f"driver-{alice}", b"\x01 not an update"),
    )
    assert driver_letter.key == alice
    system.wait_driver_done(alice, 60)
    assert [t.reason for t in system.tickets(alice)] == ["completed", "completed"]
    system.assert_invariants()


async def test_a_replayed_request_id_is_decided_once_even_when_the_cp_is_free_again(system) -> None:
    system.max_session_s = 2
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    driver = system.ident("driver-again")
    request = encode(ChargeRequest(driver_id=driver, cp_id=cp.cp_id, request_id="again-1"))
    await send(system.kafka, Topic.DRIVER_REQUESTS, driver, request)
    wait_until(
        lambda: [s for s in system.sessions() if s["state"] == "ended"], 30, "the first session to end"
    )
    assert system.status(cp.cp_id) == "ON", "the CP is free again"
    await send(system.kafka, Topic.DRIVER_REQUESTS, driver, request)  # the same request id, later
    await send(
        system.kafka,
        Topic.DRIVER_REQUESTS,
        driver,
        encode(ChargeRequest(driver_id=driver, cp_id=cp.cp_id, request_id="fresh-2")),
    )
    wait_until(lambda: len(system.sessions()) == 2, 30, "the fresh request's session")
    by_request = {s["request_id"] for s in system.sessions()}
    assert by_request == {"again-1", "fresh-2"}, "the replay started nothing"
