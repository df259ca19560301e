"""Nothing lost, nothing billed twice, with real processes: the gateway SIGKILLed mid-transaction and
inside a StopTransaction, a charger that replays its offline queue twice, Kafka down while chargers
meter, the leading central killed while a charger supplies. Every session is checked against what
the simulated charger itself metered."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import pytest

from evcharge.gateway.sim import SimCharger
from tests.harness import UNEXPECTED
from tests.test_gateway import (
    JOIN,
    GatewayRun,
    assert_billed_as_metered,
    ended_sessions,
    running,
    tickets_from_kafka_events,
    until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.processes]

VERSIONS = ["1.6", "2.0.1"]


@pytest.fixture
def gateway(system) -> GatewayRun:
    system.start_central()
    run = GatewayRun(system, join_token=None)
    yield run
    if run.process is not None:
        run.process.stop()


async def driver_charges(gateway: GatewayRun, charger: SimCharger) -> str:
    """A driver process asks for a charge at the charger; its id once the charger supplies."""
    system = gateway.system
    await until(lambda: system.status(charger.cp_id) == "ON", 20, f"{charger.cp_id} ON")
    driver = f"drv-{charger.cp_id}"[:20]
    system.start_driver(driver, [charger.cp_id], interval_s=0.2)
    await until(lambda: system.status(charger.cp_id) == "SUPPLYING", 20, "SUPPLYING")
    return driver


async def one_exact_ticket(gateway: GatewayRun, charger: SimCharger, driver: str) -> None:
    """The driver saw one ticket; it, central's record and the charger's meter agree."""
    system = gateway.system
    [session] = await ended_sessions(system, charger.cp_id, 1, timeout_s=60)
    [trace] = charger.traces
    assert_billed_as_metered(session, trace)
    tickets = await until(lambda: tickets_from_kafka_events(system.events(driver)), 30, "the ticket")
    await asyncio.sleep(0.5)  # a second ticket would come right behind the first
    tickets = tickets_from_kafka_events(system.events(driver))
    assert len(tickets) == 1, tickets
    assert (tickets[0]["wh"], tickets[0]["micro_eur"]) == (session["wh"], session["micro_eur"])
    assert tickets[0]["session_id"] == session["session_id"]
    # And the harness's own audit of every driver's sessions: no ticket lost, none shown twice,
    # ticket = central's record (an OCPP charger has no engine record; its meter was compared above).
    system.assert_invariants()


@pytest.mark.parametrize("version", VERSIONS)
async def test_the_gateway_sigkilled_mid_transaction_loses_nothing(gateway: GatewayRun, version: str) -> None:
    gateway.start()
    await gateway.ready()
    charger = gateway.charger("OCPP-KILL", version, meter_interval_s=0.2, response_timeout_s=2)
    async with running(charger):
        driver = await driver_charges(gateway, charger)
        await until(lambda: len(charger.traces[0].readings) >= 5, 20, "readings")
        assert gateway.process is not None
        gateway.process.kill()
        await until(lambda: len(charger.queue) >= 3, 10, "readings queued while the gateway is gone")
        gateway.start()
        await until(lambda: not charger.queue, 30, "the queue drained into the restarted gateway")
        charger.end("Local")
        await until(lambda: charger.settled(), 20, "the stop answered")
        await one_exact_ticket(gateway, charger, driver)
    with contextlib.closing(gateway.store()) as db:
        keys = [
            r[0] for r in db.execute("SELECT message_key FROM messages WHERE cp_id = ?", (charger.cp_id,))
        ]
    # Once the transaction ended its readings' keys went: the table stays bounded.
    kinds = sorted(key.split(":")[0] for key in keys)
    assert kinds == (["start", "stop"] if version == "1.6" else ["tx"]), keys
    assert gateway.system.unexpected_log_lines() == {}


@pytest.mark.parametrize(
    ("version", "point"),
    [
        ("1.6", "gateway.StopTransaction.recorded"),
        ("1.6", "gateway.StopTransaction.acknowledged"),
        ("2.0.1", "gateway.TransactionEvent.Ended.recorded"),
        ("2.0.1", "gateway.TransactionEvent.Ended.acknowledged"),
    ],
)
async def test_the_gateway_killed_inside_a_stop_bills_it_once(
    gateway: GatewayRun, version: str, point: str
) -> None:
    gateway.start(env={"EVCHARGE_CRASH_AT": point})
    await gateway.ready()
    charger = gateway.charger("OCPP-STOP", version, meter_interval_s=0.3, response_timeout_s=2)
    async with running(charger):
        driver = await driver_charges(gateway, charger)
        await until(lambda: len(charger.traces[0].readings) >= 3, 20, "readings")
        charger.end("Local")
        process = gateway.process
        assert process is not None
        await until(lambda: not process.alive, 20, f"the gateway to die at {point}")
        assert f"crash point {point}" in process.output()
        assert charger.queue, "the stop was never answered"
        gateway.start(env={})
        await until(lambda: charger.settled(), 30, "the stop answered by the restarted gateway")
        await one_exact_ticket(gateway, charger, driver)


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_charger_back_from_offline_replaying_its_queue_twice_gets_one_ticket(
    gateway: GatewayRun, version: str
) -> None:
    gateway.start()
    await gateway.ready()
    charger = gateway.charger("OCPP-OFF", version, meter_interval_s=0.2)
    async with running(charger):
        driver = await driver_charges(gateway, charger)
        await until(lambda: len(charger.traces[0].readings) >= 3, 20, "readings")
        charger.go_offline()
        await until(lambda: len(charger.queue) >= 5, 20, "readings queued offline")
        charger.end("EVDisconnected")
        charger.replay_queue_twice()
        charger.go_online()
        await until(lambda: charger.settled(), 30, "the queue drained, twice")
        charger.replay_history()  # and everything it ever sent, once more
        await until(lambda: charger.settled(), 30, "the history replayed")
        await one_exact_ticket(gateway, charger, driver)
    assert charger.counters.call_errors == []
    assert gateway.system.unexpected_log_lines() == {}


async def test_kafka_down_while_chargers_meter_answers_wait_and_nothing_is_lost(
    gateway: GatewayRun, kafka_broker
) -> None:
    gateway.start()
    await gateway.ready()
    chargers = [
        gateway.charger(f"OCPP-K{version}", version, meter_interval_s=0.3, response_timeout_s=2)
        for version in VERSIONS
    ]
    async with running(*chargers):
        drivers = [await driver_charges(gateway, charger) for charger in chargers]
        await until(lambda: all(len(c.traces[0].readings) >= 3 for c in chargers), 20, "readings")
        assert gateway.process is not None
        logged_before = len(gateway.process.output())  # a fresh broker's start-up is not this outage
        kafka_broker.kill(signal.SIGKILL)
        try:
            await until(
                lambda: all(len(c.queue) >= 4 and c.counters.timeouts > 0 for c in chargers),
                30,
                "transaction messages unanswered while Kafka is down",
            )
            for charger in chargers:
                assert gateway.system.status(charger.cp_id) == "SUPPLYING", "the CP stays up meanwhile"
        finally:
            await kafka_broker.start_from_loop(timeout_s=120)
        await until(lambda: all(not c.queue for c in chargers), 60, "every queued message answered")
        for charger in chargers:
            charger.end("Local")
        await until(lambda: all(c.settled() for c in chargers), 30, "the stops answered")
        for charger, driver in zip(chargers, drivers, strict=True):
            await one_exact_ticket(gateway, charger, driver)
    log = gateway.process.output()[logged_before:]
    # One calm line per link and outage (the command inbox, the outbox relay, the answers
    # that wait when the outage outlasts them), and one when it is over; no traceback.
    for line in (
        "evcharge.runtime.inbox: cannot reach Kafka",
        "evcharge.runtime.outbox: cannot reach Kafka",
        "chargers' transaction messages wait unanswered",
    ):
        assert log.count(line) <= 1, line
    assert log.count("evcharge.runtime.inbox: Kafka at") == 1
    assert gateway.system.unexpected_log_lines() == {}


async def test_the_chargers_follow_the_leading_central_and_a_charge_outlives_the_leaders_death(
    system, postgres_url: str
) -> None:
    system.store = postgres_url
    system.central_overrides = {
        "require_auth": True,
        "join_token": JOIN,
        "operator_token": "op-token",
        "startup_grace_s": 3.0,
    }
    first, second = system.start_centrals(2)
    # The gateway knows only the standby: it must follow the standby's word to the leader, and ask
    # the standby to authorise a card (it forwards the request to the leader).
    gateway = GatewayRun(
        system,
        overrides={"central": ((second.address, second.tcp_port),), "central_url": second.url},
    )
    gateway.start()
    try:
        await gateway.ready()
        charger = gateway.charger("OCPP-HA", "1.6", meter_interval_s=0.3)
        card = system.ident("card")
        async with running(charger):
            await until(lambda: system.status(charger.cp_id) == "ON", 20, "ON at the leader")
            assert await charger.swipe(card) == "Accepted"
            await until(lambda: len(charger.traces[0].readings) >= 3, 20, "readings")
            first.child.kill()
            await asyncio.to_thread(system.wait_leader, 30, not_=first)
            seen = len(charger.traces[0].readings)
            await until(
                lambda: (
                    system.status(charger.cp_id) == "SUPPLYING"
                    and len(charger.traces[0].readings) >= seen + 3
                ),
                30,
                "the charger SUPPLYING at the new leader, still metering",
            )
            charger.end("Local")
            await until(lambda: charger.settled(), 20, "the stop answered")
            [session] = await ended_sessions(system, charger.cp_id, 1, timeout_s=30)
            await until(lambda: system.status(charger.cp_id) == "ON", 20, "ON again at the new leader")
        [trace] = charger.traces
        assert session["driver_id"] == card
        assert_billed_as_metered(session, trace)
        log = gateway.process.output() if gateway.process else ""
        assert not [line for line in log.splitlines() if UNEXPECTED.search(line)]
    finally:
        if gateway.process is not None:
            gateway.process.stop()
