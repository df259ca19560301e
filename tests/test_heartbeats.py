"""Central's heartbeat fast path end to end: a real central, real monitors over TCP, real engines.

Heartbeats that change nothing are answered from the socket without a task or
a timer of their own (`evcharge.central.heartbeats`): the timeout is the watch's
alone. This proves the two things that must survive that: a monitor whose
heartbeats stop arriving loses its CP, and one beside it that goes on keeps its
CP ON on the very same connection.
"""

from __future__ import annotations

import pytest

from tests.harness import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]


def test_a_late_heartbeat_turns_the_cp_disconnected_and_the_monitor_beside_it_keeps_its_cp_on(system) -> None:
    system.start_central()
    late = system.add_cp(system.ident("CP-LATE"))
    steady = system.add_cp(system.ident("CP-STEADY"))
    peer = system.get(f"/cp/{steady.cp_id}")["monitor"]["peer"]
    heard_before = system.get("/health")["counters"]["heartbeats"]

    seen: list[tuple[str, str, str]] = []

    def late_is_disconnected() -> bool:
        listed = {c["cp_id"]: c for c in system.get("/cp")["charging_points"]}
        seen.append(
            (
                listed[late.cp_id]["status"],
                listed[steady.cp_id]["status"],
                (listed[steady.cp_id]["monitor"] or {}).get("peer", ""),
            )
        )
        return seen[-1][0] == "DISCONNECTED"

    late.monitor.freeze()  # its socket stays open: only the missing heartbeats can tell
    try:
        wait_until(late_is_disconnected, 20, f"{late.cp_id} to show DISCONNECTED")
    finally:
        late.monitor.thaw()
    # Every look at the steady CP, all through the other's silence, found it ON on its first connection.
    assert {(status, link) for _, status, link in seen} == {("ON", peer)}, seen
    assert system.get("/health")["counters"]["heartbeats"] > heard_before
    assert f"{late.cp_id} disconnected (no heartbeat)" in system.central.output()

    system.wait_status(late.cp_id, "ON", 15)
    assert system.status(steady.cp_id) == "ON"
    assert system.unexpected_log_lines() == {}
