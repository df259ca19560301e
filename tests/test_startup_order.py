"""Start-up with peers missing (B2): every role waits with one calm line per peer, and works
as soon as the peer appears, in whatever order things start."""

from __future__ import annotations

import re

import pytest

from evcharge.devtools.kafka import LocalBroker
from evcharge.runtime.ports import free_ports
from tests.harness import System, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]


def test_monitor_engine_and_central_started_before_kafka_and_each_other(tmp_path) -> None:
    kafka_port, controller_port = free_ports(2)
    broker = LocalBroker(data_dir=tmp_path / "kafka", port=kafka_port, controller_port=controller_port)
    system = System(tmp_path / "system", broker.bootstrap, max_session_s=2)
    try:
        # The CP first: its engine has no Kafka, its monitor has neither engine nor central.
        cp = system.add_cp(system.ident("CP-001"), wait=False)
        wait_until(
            lambda: "cannot reach central" in cp.monitor.output(), 20, "the monitor to say central is away"
        )
        central = system.central_child().start()
        system.central = central
        wait_until(lambda: system.get("/health")["kafka"] == "unreachable", 30, "central up, without Kafka")
        # The monitor registers once central is up; the engine cannot serve without Kafka: not ON.
        system.wait_status(cp.cp_id, "BROKEN", 15)

        broker.start()
        system.wait_status(cp.cp_id, "ON", 60)
        status, body = system.post("/request/charge", {"driver_id": system.ident("d"), "cp_id": cp.cp_id})
        assert status == 201, body
        wait_until(
            lambda: system.sessions() and system.sessions()[0]["state"] == "ended", 30, "the session to end"
        )
        assert system.sessions()[0]["end_reason"] == "completed"

        for child in (central, cp.engine, cp.monitor):
            text = child.output()
            assert "Traceback" not in text and not re.search(r"\bERROR\b", text), (
                f"{child.name}: {text[-2000:]}"
            )
            # One calm line when a peer goes missing, per link, not one per retry.
            for line in set(re.findall(r"cannot reach (\S+(?: of \S+)?) at", text)):
                count = len(re.findall(rf"cannot reach {re.escape(line)} at", text))
                assert count <= 2, f"{child.name} said 'cannot reach {line}' {count} times"
    finally:
        system.stop_all()
        broker.stop()
