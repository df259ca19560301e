"""`evcharge postgres start|stop|status`: a local PostgreSQL for a store several centrals share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evcharge.devtools.postgres import LocalPostgres
from evcharge.errors import BrokerError

app = typer.Typer(
    help="Run a local PostgreSQL (the machine's own server binaries) for centrals to share.",
    no_args_is_help=True,
)

DEFAULT_DIR = Path("evcharge-state") / "postgres"
PortOpt = Annotated[int, typer.Option("--port", envvar="EVCHARGE_PG_PORT", min=1, max=65535, help="Port.")]
HostOpt = Annotated[str, typer.Option("--host", envvar="EVCHARGE_PG_HOST", help="Address to listen on.")]
DirOpt = Annotated[
    Path,
    typer.Option("--data-dir", envvar="EVCHARGE_PG_DIR", file_okay=False, help="Its data, socket and log."),
]


def _server(data_dir: Path, host: str, port: int) -> LocalPostgres:
    return LocalPostgres(data_dir, port, host, detached=True)


@app.command()
def start(data_dir: DirOpt = DEFAULT_DIR, host: HostOpt = "127.0.0.1", port: PortOpt = 5432) -> None:
    """Create the database once, start the server in the background, print central's --store URL."""
    server = _server(data_dir, host, port)
    if server.running():
        typer.echo(f"PostgreSQL already runs: {server.url}")
        return
    try:
        server.start()
    except BrokerError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"PostgreSQL runs (pid {server.pid}, log {server.log_path})")
    typer.echo(f"  evcharge central --store {server.url}")


@app.command()
def stop(data_dir: DirOpt = DEFAULT_DIR, host: HostOpt = "127.0.0.1", port: PortOpt = 5432) -> None:
    """Shut the server down (fast: sessions are cut, committed data is kept)."""
    server = _server(data_dir, host, port)
    was = server.running()
    server.stop()
    typer.echo("PostgreSQL stopped" if was else "PostgreSQL was not running")


@app.command()
def status(data_dir: DirOpt = DEFAULT_DIR, host: HostOpt = "127.0.0.1", port: PortOpt = 5432) -> None:
    """Say whether it runs, and where."""
    server = _server(data_dir, host, port)
    if not server.running():
        typer.echo(f"PostgreSQL is not running (data {server.folder})")
        raise typer.Exit(1)
    typer.echo(f"PostgreSQL runs: pid {server.pid}, {server.url}, data {server.folder}")
