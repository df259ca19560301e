"""`evcharge certs init`: the local CA, each component's certificate and the Kafka users' passwords."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evcharge.devtools import certs
from evcharge.devtools.kafka_users import KafkaUsers

app = typer.Typer(
    help="A local CA and certificates for people without a PKI (TLS on every link).", no_args_is_help=True
)

DEFAULT_DIR = Path("evcharge-state") / "tls"


@app.command()
def init(
    folder: Annotated[
        Path, typer.Option("--dir", envvar="EVCHARGE_TLS_DIR", file_okay=False, help="Where to write them.")
    ] = DEFAULT_DIR,
    hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--host", help="A name or address the servers are reached at (repeat it); default loopback."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Make a new CA even if one exists.")] = False,
) -> None:
    """Create (or complete) the folder: CA, central's, the broker's and a client's certificates, and the
    passwords of the broker's SCRAM users (central, engine, driver, admin)."""
    written = certs.init(folder, tuple(hosts or certs.DEFAULT_HOSTS), force=force)
    users = KafkaUsers.load_or_create(folder / KafkaUsers.FILE)
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(f"Kafka SCRAM users {', '.join(users.passwords)}: passwords in {users.path} (0600)")
    typer.echo(
        f"central: --ca {folder}/ca.pem --cert {folder}/central.pem --key {folder}/central.key; "
        f"every other role: --ca {folder}/ca.pem"
    )
