"""Only one central ever decides, and the system goes on when it fails: real centrals on a real
PostgreSQL and a real Kafka, killed, frozen and upgraded with real signals.

Several centrals share one PostgreSQL store: one leads (a lease with a fencing epoch),
the others are standbys that serve reads and forward writes, and take over when the
leader is gone. A central on another store never decides on the same Kafka.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from evcharge.cp.settings import engine_key_path
from evcharge.devtools.supervisor import Child
from evcharge.protocol.signing import SIGNATURE_HEADER, sign
from evcharge.protocol.topics import Topic
from evcharge.runtime.ports import free_ports
from tests.harness import Credentials, System, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]

OPERATOR = "operator-token-for-failover"
TAKEOVER_BOUND_S = 15.0  # generous for 2 noisy cores; the measured figure is printed and benched


@pytest.fixture
def shared(system: System, postgres_url: str) -> System:
    system.store = postgres_url
    system.central_overrides = {"startup_grace_s": 3.0}
    return system


def wait_charging(system: System, driver_id: str, readings: int = 0) -> None:
    wait_until(
        lambda: any(e["event"] == "progress" and e["seq"] > readings for e in system.events(driver_id)),
        20,
        f"{driver_id} charging",
    )


def refused(process: Child, timeout_s: float = 30) -> str:
    code = process.wait(timeout_s)
    assert code == 2, f"{process.name} exited with {code}, not refusing: {process.output()[-2000:]}"
    return process.output()


# ------------------------------------------------------------------ who may decide


def test_a_second_central_on_the_same_sqlite_file_refuses_to_start_naming_the_first(system: System) -> None:
    system.start_central()
    tcp_port, http_port = free_ports(2)
    again = system.central_child(name="again", tcp_port=tcp_port, http_port=http_port).start()
    said = refused(again)
    assert f"central pid {system.central.pid}" in said and "only one central" in said


@pytest.mark.parametrize("other", ["another SQLite file", "another PostgreSQL database"])
def test_a_central_on_another_store_refuses_to_start_on_the_same_kafka_naming_the_first(
    system: System, other: str, request: pytest.FixtureRequest
) -> None:
    system.start_central()
    first = system.get("/health")
    cp = system.add_cp(system.ident("CP-001"))
    store = (
        str(system.root / "elsewhere" / "central.sqlite")
        if other.startswith("another SQLite")
        else request.getfixturevalue("postgres_url")
    )
    tcp_port, http_port = free_ports(2)
    second = system.central_child(name="second", store=store, tcp_port=tcp_port, http_port=http_port).start()
    said = refused(second)
    assert first["instance"] in said and system.url in said and "with a different store" in said
    # It never decided: the first central still has the only say.
    status, body = system.post("/request/charge", {"driver_id": system.ident("d"), "cp_id": cp.cp_id})
    assert status == 201, body
    assert system.get("/health")["instance"] == first["instance"]


def test_the_standby_serves_reads_forwards_writes_with_the_token_and_sends_monitors_to_the_leader(
    shared: System,
) -> None:
    shared.central_overrides |= {"require_auth": True, "join_token": "join", "operator_token": OPERATOR}
    shared.monitor_overrides = {"join_token": "join"}
    leader, standby = shared.start_centrals(2)
    # The CP knows the standby first: it is sent on to the leader.
    shared.monitor_overrides["central"] = tuple(reversed(shared.monitor_overrides["central"]))
    cp = shared.add_cp(shared.ident("CP-001"))
    assert "not the leader" in cp.monitor.output() or "standby" in cp.monitor.output()
    health = standby.health()
    assert health is not None and health["role"] == "standby"
    assert health["leader"]["instance"] == leader.health()["instance"]  # type: ignore[index]

    shared.url = standby.url
    wait_until(lambda: shared.status(cp.cp_id) == "ON", 10, "the standby's view of the CP")
    status, body = shared.post(f"/cp/{cp.cp_id}/stop")
    assert status == 401, body  # the leader judged it: no token
    status, body = shared.post(f"/cp/{cp.cp_id}/stop", token=OPERATOR)
    assert status == 200 and body["status"] == "STOPPED", body
    wait_until(lambda: shared.status(cp.cp_id) == "STOPPED", 5, "the standby's view to follow")
    shared.post(f"/cp/{cp.cp_id}/resume", token=OPERATOR)
    alice = shared.ident("alice")
    # With auth on a charge over HTTP needs the driver's token, or the operator's on its behalf.
    status, body = shared.post("/request/charge", {"driver_id": alice, "cp_id": cp.cp_id}, token=OPERATOR)
    assert status == 201, body
    wait_until(
        lambda: [s["state"] for s in shared.sessions() if s["driver_id"] == alice] == ["ended"],
        30,
        "the forwarded charge to end, as the standby reads it from the store",
    )
    assert leader.role() == "leader" and standby.role() == "standby"
    assert shared.unexpected_log_lines() == {}


def test_the_standby_forwards_a_charge_a_cp_signs_and_the_leader_refuses_one_signed_with_another_key(
    shared: System,
) -> None:
    """What an OCPP gateway does for a card shown at its charger: the exact body signed with the
    charger's key, in the evcharge-sig header, sent to any central. A standby must pass the
    signature on: only the leader holds the keys' verdict, and it decides."""
    shared.secure(Credentials("join", OPERATOR))  # tokens and proofs required
    leader, standby = shared.start_centrals(2)
    cp1, cp2 = shared.add_cp(shared.ident("CP-001")), shared.add_cp(shared.ident("CP-002"))
    key1 = engine_key_path(cp1.state_dir, cp1.cp_id).read_text().strip()

    def vouched(cp_id: str, key: str) -> tuple[int, dict[str, Any]]:
        body = json.dumps({"driver_id": shared.ident("card-0042"), "cp_id": cp_id}).encode()
        request = urllib.request.Request(
            f"{standby.url}/request/charge",
            data=body,
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(key, body).decode()},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    status, body = vouched(cp1.cp_id, key1)
    assert status == 201, body
    wait_until(
        lambda: [s["state"] for s in shared.sessions() if s["session_id"] == body["session_id"]] == ["ended"],
        30,
        "the charge the CP vouched for to run and end",
    )
    status, refusal = vouched(cp2.cp_id, key1)  # CP-001's key cannot vouch for a charge at CP-002
    assert status == 401, refusal
    assert not [s for s in shared.sessions() if s["cp_id"] == cp2.cp_id], "nothing started at CP-002"
    assert leader.role() == "leader" and standby.role() == "standby"


# ------------------------------------------------------------------ failures of the leader


def test_the_leader_killed_mid_session_a_standby_leads_and_every_request_is_decided_once(
    shared: System,
) -> None:
    shared.max_session_s = 8
    first, second = shared.start_centrals(2)
    cp1 = shared.add_cp(shared.ident("CP-001"))
    cp2 = shared.add_cp(shared.ident("CP-002"))
    alice, bob = shared.ident("driver-alice"), shared.ident("driver-bob")
    shared.start_driver(alice, [cp1.cp_id])
    wait_charging(shared, alice, readings=0)

    first.child.kill()
    killed = time.monotonic()
    shared.start_driver(bob, [cp2.cp_id])  # asked while no central leads
    leader = shared.wait_leader(TAKEOVER_BOUND_S, not_=first)
    took = time.monotonic() - killed
    print(f"\n[failover] leader SIGKILLed: {second.name} leads after {took:.2f} s")
    assert leader is second
    shared.wait_driver_done(alice, 60)
    shared.wait_driver_done(bob, 60)
    assert [t.reason for t in shared.tickets(alice)] == ["completed"]
    assert [t.reason for t in shared.tickets(bob)] == ["completed"], (
        "the request asked meanwhile, decided once"
    )
    shared.assert_invariants()


def test_a_frozen_leader_is_fenced_it_can_neither_commit_nor_publish_and_steps_down(
    shared: System, kafka_broker: Any, postgres_url: str
) -> None:
    shared.max_session_s = 12
    first, second = shared.start_centrals(2)
    old = first.health()
    assert old is not None and old["epoch"] is not None
    cp = shared.add_cp(shared.ident("CP-001"))
    alice = shared.ident("driver-alice")
    shared.start_driver(alice, [cp.cp_id])
    wait_charging(shared, alice, readings=1)

    first.child.freeze()
    bob = shared.ident("driver-bob")
    try:
        cp2 = shared.add_cp(shared.ident("CP-002"), wait=False)
        shared.start_driver(bob, [cp2.cp_id])  # a request only the new leader may decide
        leader = shared.wait_leader(TAKEOVER_BOUND_S, not_=first)
        assert leader is second
        new = second.health()
        assert new is not None and new["epoch"] > old["epoch"]
        wait_until(lambda: shared.status(cp.cp_id) == "SUPPLYING", 15, "the CP back with the new leader")
    finally:
        first.child.thaw()
    thawed_ms = int(time.time() * 1000)
    wait_until(lambda: first.role() == "standby", 15, "the thawed old leader to step down by itself")
    assert "steps down to standby" in first.child.output()
    shared.wait_driver_done(alice, 60)
    shared.wait_driver_done(bob, 60)
    shared.assert_invariants()

    # In the store: bob's request was decided under the new epoch, and nothing under the old
    # one after the old leader woke up.
    decided = asyncio.run(_decisions(postgres_url))
    assert {epoch for driver, epoch, _ in decided if driver == bob} == {new["epoch"]}
    late = [(d, e) for d, e, at in decided if e == old["epoch"] and at * 1000 >= thawed_ms]
    assert late == [], f"the fenced leader committed after waking: {late}"
    # In the topics: nothing the old leader published after it woke up is visible to anyone.
    published = asyncio.run(_published_by(kafka_broker.bootstrap, old["instance"], since_ms=thawed_ms))
    assert published == [], f"the fenced leader published after waking: {published[:5]}"
    assert shared.unexpected_log_lines() == {}


async def _decisions(url: str) -> list[tuple[str, int, float]]:
    """Every request central decided: (its driver, the epoch it was decided under, when)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT driver_id, epoch, decided_at FROM requests")
    finally:
        await conn.close()
    return [(r["driver_id"], int(r["epoch"]), float(r["decided_at"])) for r in rows]


async def _published_by(bootstrap: str, instance: str, since_ms: int) -> list[tuple[str, int]]:
    """Committed records (read_committed, as every role reads) a central published since `since_ms`."""
    consumer = AIOKafkaConsumer(
        Topic.DRIVER_UPDATES,
        Topic.CP_COMMANDS,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    found = []
    try:
        deadline = time.monotonic() + 10
        idle = 0
        while time.monotonic() < deadline and idle < 3:
            batches = await consumer.getmany(timeout_ms=500)
            idle = 0 if batches else idle + 1
            for records in batches.values():
                for record in records:
                    headers = dict(record.headers or ())
                    if headers.get("central") == instance.encode() and record.timestamp >= since_ms:
                        found.append((record.topic, record.offset))
    finally:
        await consumer.stop()
    return found


def test_a_rolling_upgrade_of_the_centrals_denies_no_request(shared: System) -> None:
    shared.max_session_s = 2
    first, second = shared.start_centrals(2)
    cps = [shared.add_cp(shared.ident(f"CP-00{n}")) for n in (1, 2)]
    drivers = [shared.ident(f"driver-{n}") for n in (1, 2)]
    for driver, cp in zip(drivers, cps, strict=True):
        shared.start_driver(driver, [cp.cp_id] * 4, interval_s=0.5)

    for old in (first, second):  # each central in turn, leader first
        leader = shared.wait_leader(TAKEOVER_BOUND_S)
        assert leader is old
        old.child.stop()  # SIGTERM: it hands the lead over on its way out
        shared.wait_leader(TAKEOVER_BOUND_S, not_=old)
        old.child.restart()
        wait_until(lambda old=old: old.role() == "standby", 30, f"{old.name} back as a standby")
    for driver in drivers:
        shared.wait_driver_done(driver, 120)
        outcomes = [e for e in shared.events(driver) if e["event"] in ("accepted", "denied")]
        assert [e["event"] for e in outcomes] == ["accepted"] * 4, outcomes
    shared.assert_invariants()
    assert shared.unexpected_log_lines() == {}


def test_central_waits_out_a_postgresql_restart_and_loses_nothing(
    shared: System, postgres_server: Any
) -> None:
    shared.max_session_s = 10
    shared.start_central()
    cp = shared.add_cp(shared.ident("CP-001"))
    alice = shared.ident("driver-alice")
    shared.start_driver(alice, [cp.cp_id, cp.cp_id])
    wait_charging(shared, alice, readings=1)
    before = shared.identities()
    postgres_server.stop("fast")
    try:
        wait_until(
            lambda: "PostgreSQL unavailable" in shared.central.output(),
            30,
            "central to say the store is away",
        )
    finally:
        postgres_server.start()
    shared.wait_driver_done(alice, 90)
    assert [t.reason for t in shared.tickets(alice)] == ["completed", "completed"]
    shared.assert_only_restarted(before, set())
    shared.assert_invariants()
    assert "Traceback" not in shared.central.output()
