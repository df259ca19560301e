"""The Kafka client's outage lines are said once per kind and held back; its other warnings pass."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import aiokafka
import pytest

from evcharge.logs import OUTAGE_MESSAGES, ClientGate


def record(name: str, msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_every_outage_line_is_one_the_kafka_client_really_logs() -> None:
    # The string constants of aiokafka's code, adjacent literals joined as Python joins them.
    strings = {
        node.value
        for path in Path(aiokafka.__file__).parent.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    missing = [template for template in OUTAGE_MESSAGES if template not in strings]
    assert missing == [], f"no longer in aiokafka's source: {missing}"


def test_an_outage_line_passes_once_then_its_repeats_are_held_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("evcharge.logs.time.monotonic", lambda: now[0])
    gate = ClientGate()
    template = "Attempt to fetch offsets for partition %s failed due to: %s"
    assert template in OUTAGE_MESSAGES
    passed = [
        gate.filter(record("aiokafka.consumer.fetcher", template, "tp", "LeaderNotAvailable"))
        for _ in range(30)
    ]
    assert passed == [True] + [False] * 29
    now[0] += 61  # past the quiet period: said again, with how many were held
    again = record("aiokafka.consumer.fetcher", template, "tp", "LeaderNotAvailable")
    assert gate.filter(again)
    assert "(and 29 more like it)" in again.getMessage()


def test_any_other_client_warning_passes_every_time_and_its_debug_does_not() -> None:
    gate = ClientGate()
    assert all(gate.filter(record("aiokafka.producer", "Unexpected %s", "thing")) for _ in range(3))
    assert not gate.filter(record("aiokafka.conn", "detail %s", "x", level=logging.DEBUG))
    assert gate.filter(record("evcharge.central", "our own line", level=logging.DEBUG))
