"""The chaos suite's report: measured detection and recovery per scenario, as a table and JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import pytest

REPORT: list[dict] = []


@pytest.fixture
def chaos_report():
    """Append one scenario's measurements; they are printed and saved at the end of the run."""
    return REPORT.append


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not REPORT:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Recovery metrics (measured; the guide promises detection 15-20 s, recovery < 30 s)")
    for column in (
        "scenario",
        "detection s",
        "recovery s",
        "downtime s",
        "restarted",
        "sessions",
        "tickets lost",
        "duplicates",
    ):
        table.add_column(column)
    for row in REPORT:
        table.add_row(
            row["scenario"],
            _fmt(row.get("detection_s")),
            _fmt(row.get("recovery_s")),
            _fmt(row.get("downtime_s")),
            ", ".join(row.get("restarted", [])),
            str(row.get("sessions", "")),
            str(row.get("tickets_lost", "")),
            str(row.get("duplicates", "")),
        )
    console = Console(file=terminalreporter._tw._file, width=160, force_terminal=False)
    console.print(table)
    path = Path(os.environ.get("EVCHARGE_CHAOS_REPORT", "chaos-report.json"))
    path.write_text(
        json.dumps(
            {
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "system": platform.platform(),
                },
                "scenarios": REPORT,
            },
            indent=2,
        )
    )
    terminalreporter.write_line(f"chaos report written to {path.resolve()}")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
