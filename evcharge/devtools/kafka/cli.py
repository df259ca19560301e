"""`evcharge kafka start|stop|status`: thin commands over evcharge.devtools.kafka.LocalBroker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from evcharge.devtools.kafka import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    KAFKA_VERSION,
    BrokerStatus,
    LocalBroker,
    default_data_dir,
)
from evcharge.errors import BrokerError

app = typer.Typer(
    help=f"Run a local single-node Apache Kafka {KAFKA_VERSION} broker (KRaft) on loopback.",
    no_args_is_help=True,
)

# Progress and errors go to stderr so stdout stays clean for scripts.
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

HostOpt = Annotated[str, typer.Option("--host", envvar="EVCHARGE_KAFKA_HOST", help="Address to listen on.")]
PortOpt = Annotated[
    int,
    typer.Option(
        "--port",
        envvar="EVCHARGE_KAFKA_PORT",
        min=1,
        max=65534,
        help="Kafka port; the KRaft controller uses the next one.",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="EVCHARGE_KAFKA_DIR",
        file_okay=False,
        help="Broker state, config and log [default: ./evcharge-state/kafka].",
        show_default=False,
    ),
]


def _broker(host: str, port: int, data_dir: Path | None) -> LocalBroker:
    return LocalBroker(data_dir=data_dir or default_data_dir(), host=host, port=port)


@contextmanager
def _errors_as_exit() -> Iterator[None]:
    try:
        yield
    except BrokerError as exc:
        first, _, rest = str(exc).partition("\n")
        err.print(f"error: {first}", style="red", markup=False)
        if rest:
            err.print(rest, style="dim", markup=False)
        raise typer.Exit(1) from None


def _describe(status: BrokerStatus) -> None:
    out.print(f"  bootstrap  {status.bootstrap}", markup=False)
    out.print(f"  data       {status.data_dir}", markup=False)
    out.print(f"  log        {status.log_path}", markup=False)


@app.command()
def start(
    host: HostOpt = DEFAULT_HOST,
    port: PortOpt = DEFAULT_PORT,
    data_dir: DataDirOpt = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for the broker to answer.")
    ] = 60,
) -> None:
    """Fetch Kafka if needed (first run only) and start the broker in the background."""
    broker = _broker(host, port, data_dir)
    with _errors_as_exit(), err.status("Starting Kafka…") as spinner:

        def progress(message: str) -> None:
            err.print(message, markup=False)
            spinner.update(message)

        result = broker.start(timeout_s=timeout, progress=progress)
    status = result.status
    if result.already_running:
        out.print(f"Kafka is already running at {status.bootstrap} (pid {status.pid})")
    else:
        out.print(f"Kafka is running at {status.bootstrap} (pid {status.pid})")
    _describe(status)


@app.command()
def stop(
    host: HostOpt = DEFAULT_HOST,
    port: PortOpt = DEFAULT_PORT,
    data_dir: DataDirOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait before SIGKILL.")] = 30,
) -> None:
    """Stop the broker of this data dir (SIGTERM, then SIGKILL after --timeout)."""
    broker = _broker(host, port, data_dir)
    with _errors_as_exit(), err.status("Stopping Kafka…"):
        pid = broker.status().pid
        stopped = broker.stop(timeout_s=timeout)
    if stopped:
        out.print(f"Kafka stopped (pid {pid})")
    else:
        out.print(f"Kafka was not running (data dir {broker.data_dir})", markup=False)


@app.command()
def status(
    host: HostOpt = DEFAULT_HOST,
    port: PortOpt = DEFAULT_PORT,
    data_dir: DataDirOpt = None,
) -> None:
    """Say whether the broker of this data dir runs; exit code 0 if it does, 3 if not."""
    broker = _broker(host, port, data_dir)
    with _errors_as_exit():
        st = broker.status()
    if st.running:
        out.print(f"Kafka is running (pid {st.pid})")
    else:
        out.print("Kafka is not running")
    _describe(st)
    if not st.running:
        raise typer.Exit(3)
