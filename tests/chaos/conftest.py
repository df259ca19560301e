"""The chaos suite's report: per scenario, the measured times and what three independent sources
say of every session, written before anything is asserted, failed and skipped scenarios included;
and the mode it ran in (plain, or everything secure: `secure_mode.py`), said in its title, in a
column and in the JSON report.

Each scenario calls `scenario.finish(...)` once the system has settled: the row is
computed from each driver's event stream, central's records and each engine's own
record (`System.audit`), appended to the report, and only then asserted on. A
scenario that fails before it finishes still gets its row, with the failure.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from evcharge.devtools.kafka import LocalBroker
from evcharge.runtime.ports import free_ports
from tests.chaos import secure_mode
from tests.chaos.secure_mode import MODE, SECURE
from tests.harness import Credentials, System

REPORT: list[dict[str, Any]] = []


@dataclass
class Scenario:
    name: str
    system: System
    measured: dict[str, Any] = field(default_factory=dict)
    row: dict[str, Any] | None = None

    def mark(self, name: str, at: float | None = None) -> float:
        """Remember when something happened (monotonic): fault, detected, restarted, served."""
        self.measured[name] = time.monotonic() if at is None else at
        return self.measured[name]

    def _times(self) -> dict[str, float | None]:
        m = self.measured
        fault, detected, restart, served = (
            m.get(k) for k in ("fault_at", "detected_at", "restart_at", "served_at")
        )
        return {
            "detection_s": detected - fault if fault is not None and detected is not None else None,
            "recovery_s": served - (restart if restart is not None else fault)
            if served is not None and fault is not None
            else None,
            # The guide's "total downtime": from the fault until it serves again, the wait
            # before a restart included.
            "downtime_s": served - fault if served is not None and fault is not None else None,
        }

    def compute(self, failure: str | None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "scenario": self.name,
            "mode": MODE,
            **self._times(),
            "restarted": self.measured.get("restarted", []),
        }
        try:
            audit = self.system.audit()
            row.update(audit.row())
            findings = audit.findings
        except Exception as exc:  # the system is too broken to be asked: say so in the row
            findings = [f"could not audit: {exc!r}"]
        unexpected = self.system.unexpected_log_lines()
        problems = list(findings)
        if unexpected:
            problems.append(f"unexpected errors in the logs {self.system.logs}: {unexpected}")
        if not row.get("charged"):
            problems.append("no session delivered any energy: the scenario proved nothing")
        if row.get("unanswered"):
            problems.append(f"{row['unanswered']} requests got no answer")
        if failure is None and problems:
            failure = "; ".join(problems)[:2000]
        row["result"] = "ok" if failure is None else f"FAILED: {failure}"
        return row

    def finish(self, **measured: Any) -> dict[str, Any]:
        """Settle, write the row, then assert what it says."""
        self.measured.update(measured)
        self.system.settle()
        self.row = self.compute(None)
        REPORT.append(self.row)
        assert self.row["result"] == "ok", f"{self.name}: {self.row['result']}"
        return self.row


@pytest.fixture(scope="session")
def chaos_security(tmp_path_factory: pytest.TempPathFactory) -> Iterator[secure_mode.SecureBroker | None]:
    """In a secure run, the suite's secure broker (started) and its credentials; None otherwise."""
    if not SECURE:
        yield None
        return
    port, controller_port = free_ports(2)
    secured = secure_mode.secure_broker(
        tmp_path_factory.mktemp("chaos-tls"),
        tmp_path_factory.mktemp("chaos-secure-kafka"),
        port=port,
        controller_port=controller_port,
        die_with_parent=True,  # a test run killed outright takes its broker along
    )
    try:
        secured.broker.start(timeout_s=120)
        yield secured
    finally:
        secured.broker.stop()


@pytest.fixture(scope="session")
def kafka_broker(
    request: pytest.FixtureRequest, chaos_security: secure_mode.SecureBroker | None
) -> LocalBroker:
    """The broker the scenarios use, kill and restart: the secure one in a secure run (only
    that one is started), the session's plain one otherwise."""
    if chaos_security is not None:
        return chaos_security.broker
    broker: LocalBroker = request.getfixturevalue("kafka_broker")
    return broker


@pytest.fixture
def chaos_credentials(chaos_security: secure_mode.SecureBroker | None) -> Credentials | None:
    return chaos_security.credentials if chaos_security is not None else None


@pytest.fixture
def system(system: System, chaos_credentials: Credentials | None) -> System:
    """The system of real processes, every one of them with its credentials in a secure run."""
    if chaos_credentials is not None:
        system.secure(chaos_credentials)
    return system


@pytest.fixture
def scenario(system: System, request: pytest.FixtureRequest):
    """A scenario's measurements; its row reaches the report whatever happens."""
    recorded = Scenario(request.node.name, system)
    yield recorded
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.skipped:
        return  # its row says skipped, with the reason (pytest_runtest_logreport)
    failure = None
    if report is not None and report.failed:
        failure = str(
            report.longrepr.reprcrash.message if hasattr(report.longrepr, "reprcrash") else report.longrepr
        )
    if recorded.row is None:
        REPORT.append(recorded.compute(failure or "the scenario did not finish"))
    elif failure is not None:
        recorded.row["result"] = f"FAILED: {failure[:2000]}"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A scenario skipped (before it starts or from inside) is a row of the report, with why."""
    if not report.skipped or report.when == "teardown" or "tests/chaos/" not in report.nodeid:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    REPORT.append(
        {"scenario": report.nodeid.rsplit("::", 1)[-1], "mode": MODE, "result": f"skipped: {reason}"}
    )


COLUMNS = (
    ("scenario", "scenario"),
    ("mode", "mode"),
    ("detection s", "detection_s"),
    ("recovery s", "recovery_s"),
    ("downtime s", "downtime_s"),
    ("restarted", "restarted"),
    ("sessions", "sessions"),
    ("charged", "charged"),
    ("tickets lost", "tickets_lost"),
    ("duplicates", "duplicates"),
    ("mismatched", "mismatched"),
    ("unanswered", "unanswered"),
    ("result", "result"),
)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not REPORT:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Recovery metrics (measured; the guide promises detection 15-20 s, recovery < 30 s)\n"
        f"mode: {secure_mode.DESCRIPTION}"
    )
    for title, _ in COLUMNS:
        table.add_column(title, overflow="fold")
    for row in REPORT:
        table.add_row(*(_cell(row.get(key)) for _, key in COLUMNS))
    console = Console(file=terminalreporter._tw._file, width=200, force_terminal=False)
    console.print(table)
    path = Path(os.environ.get("EVCHARGE_CHAOS_REPORT", "chaos-report.json"))
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()}
    path.write_text(
        json.dumps(
            {
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "mode": MODE,
                "security": secure_mode.DESCRIPTION,
                "machine": machine,
                "scenarios": REPORT,
            },
            indent=2,
        )
    )
    terminalreporter.write_line(f"chaos report ({MODE} run) written to {path.resolve()}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    text = str(value)
    return text if len(text) < 120 else text[:117] + "..."
