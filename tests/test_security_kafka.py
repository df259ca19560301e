"""The project's broker with security on (what `evcharge kafka start --secure` runs): SASL_SSL
only, a SCRAM user per role, ACLs. The whole system charges through it with TLS and signatures
on; real clients with no or wrong credentials, or the wrong role's, are refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from evcharge.devtools import certs
from evcharge.devtools.kafka import LocalBroker
from evcharge.devtools.kafka.secure import BrokerSecurity
from evcharge.devtools.kafka_users import KafkaUsers
from evcharge.devtools.supervisor import Child
from evcharge.protocol.messages import MeterReading, encode
from evcharge.protocol.topics import Topic
from evcharge.runtime.kafka import new_consumer, new_producer
from evcharge.runtime.kafka_access import KafkaAccess
from evcharge.runtime.ports import free_ports
from evcharge.runtime.tls import TlsFiles
from tests.harness import Credentials, System, scrape, value
from tests.test_gateway import (
    GatewayRun,
    assert_billed_as_metered,
    ended_sessions,
    running,
    tickets_from_kafka_events,
    until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.processes]

JOIN, OPERATOR = "join-token-for-tests", "operator-token-for-tests"


@dataclass(frozen=True)
class SecureKafka:
    bootstrap: str
    tls: Path
    users: KafkaUsers

    def as_(self, role: str, password: str | None = None) -> KafkaAccess:
        secret = password if password is not None else self.users.password(role)
        return KafkaAccess(self.bootstrap, role, secret, TlsFiles(ca=self.tls / "ca.pem"))


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    tls = tmp_path_factory.mktemp("tls")
    certs.init(tls)
    security = BrokerSecurity(tls)
    port, controller_port = free_ports(2)
    broker = LocalBroker(
        data_dir=tmp_path_factory.mktemp("secure-kafka"),
        port=port,
        controller_port=controller_port,
        die_with_parent=True,
        security=security,
    )
    try:
        broker.start(timeout_s=120)
        yield SecureKafka(broker.bootstrap, tls, security.users)
    finally:
        broker.stop()


def test_the_system_charges_through_the_secure_broker_with_tls_and_signatures(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    system = System(tmp_path, secure_kafka.bootstrap)
    try:
        system.secure(Credentials(JOIN, OPERATOR, tls_dir=secure_kafka.tls, kafka_users=secure_kafka.users))
        system.max_session_s = 2
        system.start_central()
        cp = system.add_cp(system.ident("CP-001"))
        alice = system.ident("driver-alice")
        system.start_driver(alice, [cp.cp_id], interval_s=0.2)
        system.wait_driver_done(alice, 90)
        (ticket,) = system.final_tickets(alice).values()
        assert ticket.wh > 0 and ticket.micro_eur > 0
        assert "as central" in (system.logs / "central.log").read_text()
    finally:
        system.stop_all()


async def test_an_ocpp_charger_is_billed_through_the_secure_broker_and_an_unsigned_event_for_it_dead_lettered(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    """The gateway as its chargers' engine: SCRAM as the engine user, TLS to central, and every
    event signed with the charger's key (central requires proofs with Kafka credentials). Another
    holder of the engine user (any CP's engine) writing an event for that charger's session
    without its key gets it dead-lettered, and the session keeps what the charger metered."""
    system = System(tmp_path, secure_kafka.bootstrap)
    gateway = GatewayRun(
        system,
        join_token=JOIN,
        overrides={
            "ca": secure_kafka.tls / "ca.pem",
            "kafka_user": "engine",
            "kafka_password": secure_kafka.users.password("engine"),
        },
    )
    try:
        system.secure(Credentials(JOIN, OPERATOR, tls_dir=secure_kafka.tls, kafka_users=secure_kafka.users))
        system.start_central()
        gateway.start()
        await gateway.ready()
        charger = gateway.charger("OCPP-SCRAM", "1.6", meter_interval_s=0.4)
        driver = system.ident("driver-alice")
        async with running(charger):
            await until(lambda: system.status(charger.cp_id) == "ON", 30, "the charger ON at central")
            system.start_driver(driver, [charger.cp_id], interval_s=0.2)
            await until(lambda: charger.traces and len(charger.traces[0].readings) >= 3, 30, "readings")
            status, _ = system.post(f"/cp/{charger.cp_id}/stop", token=OPERATOR)
            assert status == 200
            await until(lambda: charger.settled(), 20, "the charger to stop and be answered")
            [session] = await ended_sessions(system, charger.cp_id, 1)
            await until(lambda: tickets_from_kafka_events(system.events(driver)), 20, "the driver's ticket")
        [trace] = charger.traces
        assert trace.wh and trace.wh > 0
        assert_billed_as_metered(session, trace)
        assert "forged" not in (system.logs / "central.log").read_text()
        assert value(scrape(system), "evcharge_dead_letters_total", reason="forged") == 0

        forged = MeterReading(
            cp_id=charger.cp_id, session_id=session["session_id"], seq=10_000, power_w=7_400,
            wh=1_000_000_000, micro_eur=300_000_000_000,
        )  # fmt: skip
        producer = new_producer(secure_kafka.as_("engine"))
        await producer.start()
        try:
            async with asyncio.timeout(20):
                await producer.send_and_wait(Topic.CP_EVENTS, encode(forged), key=charger.cp_id.encode())
        finally:
            await producer.stop()

        def refusals() -> list[dict[str, Any]]:
            lines = (system.state_dir / "audit.log").read_text().splitlines()
            audits = [json.loads(line) for line in lines]
            return [
                a for a in audits if a["action"] == "cp_event" and a["result"].startswith("refused: forged")
            ]

        await until(lambda: refusals(), 20, "the unsigned event refused and audited")
        [refusal] = refusals()
        assert refusal["who"] == charger.cp_id and "unsigned" in refusal["result"]
        assert value(scrape(system), "evcharge_dead_letters_total", reason="forged") == 1
        [again] = [s for s in system.sessions() if s["session_id"] == session["session_id"]]
        assert (again["wh"], again["micro_eur"]) == (session["wh"], session["micro_eur"])
    finally:
        if gateway.process is not None:
            gateway.process.stop()
        system.stop_all()


def produce(access: KafkaAccess, topic: str) -> None:
    async def go() -> None:
        producer = new_producer(access)
        try:
            async with asyncio.timeout(20):
                await producer.start()
                await producer.send_and_wait(topic, b"{}", key=b"CP-002")
        finally:
            await producer.stop()

    asyncio.run(go())


def consume(access: KafkaAccess, topic: str) -> None:
    async def go() -> None:
        consumer = new_consumer(access, None)
        try:
            async with asyncio.timeout(20):
                await consumer.start()
                consumer.assign([TopicPartition(topic, 0)])
                await consumer.getmany(timeout_ms=5_000)
        finally:
            await consumer.stop()

    asyncio.run(go())


def test_no_credentials_wrong_ones_or_another_roles_topics_are_refused(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    # Topics as central creates them (it alone may).
    produce(secure_kafka.as_("central"), Topic.DRIVER_UPDATES)
    produce(secure_kafka.as_("central"), Topic.CP_COMMANDS)

    # An outsider on the network with no credentials gets no answer in plain Kafka at all.
    with pytest.raises((KafkaError, TimeoutError)):
        produce(KafkaAccess(secure_kafka.bootstrap), Topic.CP_EVENTS)

    # A driver with a wrong password: one line, and it stops.
    driver = Child(
        "driver-wrong-password",
        ["driver", "--id", "driver-mallory", "--kafka", secure_kafka.bootstrap,
         "--kafka-user", "driver", "--kafka-password", "guess", "--ca", str(secure_kafka.tls / "ca.pem"),
         "--state-dir", str(tmp_path / "state"), "--requests", str(tmp_path / "none.txt")],
        tmp_path / "driver.log",
    )  # fmt: skip
    (tmp_path / "none.txt").write_text("CP-001\n")
    driver.start()
    assert driver.wait(30) == 2, driver.output()
    refused = [line for line in driver.output().splitlines() if "refused the user" in line]
    assert len(refused) == 1 and "'driver'" in refused[0], driver.output()

    # Each role only its part: an engine cannot ask as a driver or read drivers' updates, and
    # a driver cannot write CP events or read CP commands.
    engine, as_driver = secure_kafka.as_("engine"), secure_kafka.as_("driver")
    for refusal in (
        lambda: produce(engine, Topic.DRIVER_REQUESTS),
        lambda: consume(engine, Topic.DRIVER_UPDATES),
        lambda: produce(as_driver, Topic.CP_EVENTS),
        lambda: consume(as_driver, Topic.CP_COMMANDS),
    ):
        with pytest.raises(TopicAuthorizationFailedError):
            refusal()
    produce(engine, Topic.CP_EVENTS)  # what it may do, it can


def test_the_broker_will_not_listen_beyond_loopback_without_security(tmp_path: Path) -> None:
    started = Child(
        "kafka-open",
        ["kafka", "start", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "k")],
        tmp_path / "kafka-open.log",
    ).start()
    assert started.wait(30) == 1
    assert "--secure" in started.output() and "--insecure" in started.output()
