"""Who wrote a record, with real processes on a real broker: an engine's events carry its CP's
signature and a driver's requests its enrolment's proof; a record that does not prove it is
refused, dead-lettered or denied, and audited."""

from __future__ import annotations

import asyncio
import json
import stat
from typing import Any

import pytest

from evcharge.devtools.supervisor import Child
from evcharge.protocol import signing
from evcharge.protocol.messages import MeterReading, StopRequest, encode
from evcharge.protocol.topics import Topic
from evcharge.runtime.kafka import new_producer
from tests.harness import Credentials, System, scrape, value, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]

JOIN, OPERATOR = "join-token-for-tests", "operator-token-for-tests"
FORGED_WH = 1_000_000_000


@pytest.fixture
def secured(system: System) -> System:
    system.secure(Credentials(JOIN, OPERATOR))
    system.start_central()
    return system


def publish(bootstrap: str, topic: str, key: str, payload: bytes, headers: list[tuple[str, bytes]]) -> None:
    """What anyone holding a Kafka credential can do: write any record to a topic it may write."""

    async def go() -> None:
        producer = new_producer(bootstrap)
        await producer.start()
        try:
            async with asyncio.timeout(20):
                await producer.send_and_wait(topic, payload, key=key.encode(), headers=headers or None)
        finally:
            await producer.stop()

    asyncio.run(go())


def audit_lines(system: System) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (system.state_dir / "audit.log").read_text().splitlines()]


def session_on(system: System, cp_id: str) -> dict[str, Any] | None:
    session: dict[str, Any] | None = system.get(f"/cp/{cp_id}")["session"]
    return session


def test_an_insider_with_cp_001s_key_cannot_get_an_event_accepted_for_cp_002(secured: System) -> None:
    system = secured
    system.max_session_s = 4
    one = system.add_cp(system.ident("CP-001"))
    two = system.add_cp(system.ident("CP-002"))
    key_file = system.state_dir / f"engine-{one.cp_id}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, "the engine's key is its CP's alone"
    insider_key = key_file.read_text().strip()
    alice = system.ident("driver-alice")
    system.start_driver(alice, [two.cp_id], interval_s=0.2)
    wait_until(lambda: session_on(system, two.cp_id), 30, f"a session on {two.cp_id}")
    session = session_on(system, two.cp_id)
    assert session is not None

    # A meter reading for CP-002's live session that would bill alice a fortune: signed with
    # CP-001's key (the insider's), then unsigned.
    forged = MeterReading(
        cp_id=two.cp_id,
        session_id=session["session_id"],
        seq=1_000,
        power_w=7_400,
        wh=FORGED_WH,
        micro_eur=FORGED_WH * 300,
    )
    payload = encode(forged)
    signed = [(signing.SIGNATURE_HEADER, signing.sign(insider_key, payload))]
    publish(system.kafka, Topic.CP_EVENTS, two.cp_id, payload, signed)
    publish(system.kafka, Topic.CP_EVENTS, two.cp_id, encode(forged), [])

    def refusals() -> list[dict[str, Any]]:
        return [
            a
            for a in audit_lines(system)
            if a["action"] == "cp_event" and a["result"].startswith("refused: forged")
        ]

    wait_until(lambda: len(refusals()) == 2, 20, "both forgeries audited")
    assert {a["who"] for a in refusals()} == {two.cp_id}
    assert any("not signed with" in a["result"] for a in refusals())
    assert any("unsigned" in a["result"] for a in refusals())
    assert value(scrape(system), "evcharge_dead_letters_total", reason="forged") == 2

    # CP-002's own signed events still count: the session ends with what its meter said.
    system.wait_driver_done(alice, 60)
    (ticket,) = system.final_tickets(alice).values()
    assert 0 < ticket.wh < FORGED_WH
    (billed,) = [s for s in system.sessions() if s["session_id"] == session["session_id"]]
    assert billed["wh"] == ticket.wh


def test_drivers_are_enrolled_and_nobody_asks_or_stops_in_another_drivers_name(secured: System) -> None:
    system = secured
    system.max_session_s = 30
    cp = system.add_cp(system.ident("CP-001"))
    alice, bob = system.ident("driver-alice"), system.ident("driver-bob")

    def enrol(driver_id: str) -> str:
        ctl = Child(
            f"ctl-{driver_id}",
            ["ctl", "driver", "add", driver_id, "--central-url", system.url, "--token", OPERATOR],
            system.logs / f"ctl-{driver_id}.log",
        ).start()
        assert ctl.wait(20) == 0, ctl.output()
        return ctl.output().strip().splitlines()[-1]

    refused = Child(
        "ctl-no-token", ["ctl", "driver", "add", "driver-eve", "--central-url", system.url],
        system.logs / "ctl-no-token.log",
    ).start()  # fmt: skip
    assert refused.wait(20) != 0 and "operator token" in refused.output()
    alice_token, bob_token = enrol(alice), enrol(bob)
    assert alice_token != bob_token

    # A driver nobody enrolled, and one with another driver's token: denied, and told why.
    mallory = system.ident("driver-mallory")
    system.start_driver(mallory, [cp.cp_id], token=signing.new_token())
    impostor = system.ident("driver-carol")
    enrol(impostor)
    system.start_driver(impostor, [cp.cp_id], token=bob_token)
    for driver_id, why in ((mallory, "is not enrolled here"), (impostor, "does not carry")):
        system.wait_driver_done(driver_id, 60)
        assert why in system.drivers[driver_id].output(), driver_id
        (denied,) = [e for e in system.events(driver_id) if e["event"] == "denied"]
        assert denied["code"] in ("unknown_driver", "bad_proof")
    assert session_on(system, cp.cp_id) is None, "nothing started for them"

    # Over HTTP as well: alice's name needs alice's token.
    body = {"driver_id": alice, "cp_id": cp.cp_id}
    for token in (None, bob_token):
        status, answer = system.post("/request/charge", body, token=token)
        assert status == 401 and "needs its token" in answer["message"], (token, answer)

    # Alice charges with her own token; bob, enrolled too, cannot stop her session.
    system.start_driver(alice, [cp.cp_id], token=alice_token)
    wait_until(lambda: session_on(system, cp.cp_id), 30, "alice's session")
    session = session_on(system, cp.cp_id)
    assert session is not None and session["driver_id"] == alice
    as_bob = StopRequest(driver_id=bob, session_id=session["session_id"])
    payload = encode(as_bob)
    proof = [(signing.PROOF_HEADER, signing.sign(signing.driver_key(bob_token), payload))]
    publish(system.kafka, Topic.DRIVER_REQUESTS, bob, payload, proof)
    as_alice = StopRequest(driver_id=alice, session_id=session["session_id"])
    payload = encode(as_alice)
    proof = [(signing.PROOF_HEADER, signing.sign(signing.driver_key(bob_token), payload))]
    publish(system.kafka, Topic.DRIVER_REQUESTS, alice, payload, proof)

    def stop_refusals() -> list[dict[str, Any]]:
        return [a for a in audit_lines(system) if a["action"] == "stop_session" and a["result"] != "ok"]

    wait_until(lambda: len(stop_refusals()) == 2, 20, "both stops refused and audited")
    results = {a["who"]: a["result"] for a in stop_refusals()}
    assert "is not yours" in results[bob]
    assert "does not carry" in results[alice]
    current = session_on(system, cp.cp_id)
    assert current is not None and current["session_id"] == session["session_id"], "still charging"
    lines = audit_lines(system)
    assert [a["driver"] for a in lines if a["action"] == "enrol_driver"] == [alice, bob, impostor]
    assert any(
        a["who"] == mallory and "unknown_driver" in a["result"] for a in lines if a["action"] == "charge"
    )
