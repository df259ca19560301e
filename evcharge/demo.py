"""`evcharge demo`: the whole system on this machine in one command."""

from __future__ import annotations

import typer


def demo() -> None:
    """Start Kafka, central, charging points and drivers together (not built yet)."""
    typer.secho("`evcharge demo` is not built yet.", fg="yellow", err=True)
    raise typer.Exit(64)
