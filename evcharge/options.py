"""Options shared by several subcommands, each with its EVCHARGE_* environment fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Kafka = Annotated[
    str, typer.Option("--kafka", envvar="EVCHARGE_KAFKA", help="Kafka bootstrap address HOST:PORT.")
]
StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        envvar="EVCHARGE_STATE_DIR",
        help="Where this process keeps its durable state (SQLite files, locks).",
    ),
]
LogLevel = Annotated[
    str,
    typer.Option("--log-level", envvar="EVCHARGE_LOG_LEVEL", help="debug, info, warning or error."),
]
LogJson = Annotated[
    bool,
    typer.Option("--log-json", envvar="EVCHARGE_LOG_JSON", help="Log one JSON object per line."),
]
Partitions = Annotated[
    int,
    typer.Option(
        "--partitions",
        envvar="EVCHARGE_PARTITIONS",
        min=1,
        help="Partitions for each topic when this process has to create it.",
    ),
]
CentralUrl = Annotated[
    str, typer.Option("--central-url", envvar="EVCHARGE_CENTRAL_URL", help="Central's HTTP API.")
]

DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_STATE_DIR = Path("evcharge-state")
DEFAULT_CENTRAL_URL = "http://127.0.0.1:8000"


def host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise typer.BadParameter(f"{what} must be HOST:PORT, not {value!r}")
    return host, int(port)
