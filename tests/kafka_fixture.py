"""Pytest plugin: one real Kafka broker per test session, and free loopback ports.

Load it from tests/conftest.py with `pytest_plugins = ["tests.kafka_fixture"]`.

Set EVCHARGE_TEST_KAFKA=host:port to run the tests against a broker that is already
running instead of starting one (then `kill` skips the test that needs it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from evcharge.devtools.kafka import LocalBroker
from evcharge.runtime.ports import free_ports

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ExternalBroker:
    """A broker someone else runs (EVCHARGE_TEST_KAFKA); it can be used but not signalled."""

    bootstrap: str

    def kill(self, sig: int) -> int:
        pytest.skip(f"cannot send signal {sig} to the external broker at {self.bootstrap}")


def _terminal_progress(config: pytest.Config) -> Callable[[str], None]:
    """Progress lines shown even under output capture: a first fetch takes a while."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")

    def say(message: str) -> None:
        if reporter is None:
            return
        suspended = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
        with suspended:
            reporter.write_line(f"[kafka_broker] {message}")

    return say


@pytest.fixture(scope="session")
def kafka_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalBroker | ExternalBroker]:
    """A running Kafka broker for the whole session; use its `.bootstrap`."""
    external = os.environ.get("EVCHARGE_TEST_KAFKA")
    if external:
        yield ExternalBroker(bootstrap=external)
        return
    port, controller_port = free_ports(2)
    # The jar cache is left at its default so the fetch happens once per machine.
    broker = LocalBroker(
        data_dir=tmp_path_factory.mktemp("kafka"),
        port=port,
        controller_port=controller_port,
        die_with_parent=True,  # a test run killed outright takes its broker along
    )
    try:
        broker.start(timeout_s=120, progress=_terminal_progress(request.config))
        yield broker
    finally:
        broker.stop()
