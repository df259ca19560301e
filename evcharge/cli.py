"""The `evcharge` command. Commands stay thin: their options come from each role's settings
(`evcharge.config`); they set up logging and hand over to the role."""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer

from evcharge import __version__
from evcharge.central.settings import CentralSettings
from evcharge.config import command
from evcharge.cp.settings import EngineSettings, MonitorSettings
from evcharge.devtools.demo_settings import DemoSettings
from evcharge.devtools.sim.settings import SimSettings
from evcharge.driver.settings import DriverSettings
from evcharge.gateway.settings import GatewaySettings

app = typer.Typer(
    help="evcharge: a distributed EV-charging system on Apache Kafka.\n\n"
    "Start Kafka (evcharge kafka start), then central, one engine and one monitor per "
    "charging point, and drivers. Or run everything at once: evcharge demo.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"evcharge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    pass


def _start(role: Callable[[Any], Awaitable[int | None]], log_level: str, log_json: bool) -> None:
    """Run a role until it stops; configuration errors are one line, never a traceback."""
    from evcharge.errors import ConfigError, StoreUnavailable
    from evcharge.logs import setup_logging
    from evcharge.runtime.shutdown import run_role

    try:
        setup_logging(log_level, json_lines=log_json)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-level") from None
    try:
        code = run_role(role)
    except (ConfigError, StoreUnavailable) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.secho(f"error: {exc.strerror or exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _central(settings: CentralSettings) -> None:
    from evcharge.central.app import CentralApp

    panel = sys.stdout.isatty() if settings.panel is None else settings.panel
    exposed = not _is_loopback(settings.host)
    auth = exposed if settings.require_auth is None else settings.require_auth
    if auth and not (settings.join_token and settings.operator_token):
        typer.secho(
            "error: with auth on (--require-auth, or listening beyond loopback) central needs "
            "--join-token and --operator-token (or EVCHARGE_JOIN_TOKEN / EVCHARGE_OPERATOR_TOKEN)",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    if exposed and not settings.insecure and not (settings.tls.serving and settings.kafka_user):
        typer.secho(
            f"error: central listens beyond loopback ({settings.host}): it needs TLS (--cert, --key, --ca) "
            "and Kafka credentials (--kafka-user, --kafka-password); or say --insecure on a trusted network",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    import dataclasses

    settings = dataclasses.replace(settings, panel=panel)
    if panel:
        from evcharge.central.panel import panel_logging

        panel_logging(settings.log_level)
    _start(CentralApp(settings, auth=auth).run, settings.log_level, settings.log_json and not panel)


def _engine(settings: EngineSettings) -> None:
    from evcharge.cp.engine import Engine

    role = Engine(settings)
    use_keys = sys.stdin.isatty() if settings.keys is None else settings.keys
    if use_keys:
        from evcharge.cp.keys import with_engine_keys

        _start(with_engine_keys(role), settings.log_level, settings.log_json)
    _start(role.run, settings.log_level, settings.log_json)


def _monitor(settings: MonitorSettings) -> None:
    from evcharge.cp.monitor import Monitor

    _start(Monitor(settings).run, settings.log_level, settings.log_json)


def _driver(settings: DriverSettings) -> None:
    from evcharge.driver.app import Driver
    from evcharge.driver.requests_file import read_requests

    lines = None
    if settings.requests is not None:
        try:
            lines = read_requests(settings.requests)
        except OSError as exc:
            typer.secho(f"error: cannot read {settings.requests}: {exc.strerror}", fg="red", err=True)
            raise typer.Exit(2) from None
    role = Driver(settings)
    plan = str(settings.requests.resolve()) if settings.requests else "interactive"
    _start(lambda stop: role.run(stop, lines, plan), settings.log_level, settings.log_json)


def _sim(settings: SimSettings) -> None:
    from evcharge.devtools.sim.pool import pooled_or_single
    from evcharge.errors import ConfigError

    try:
        run = pooled_or_single(settings)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    _start(run, settings.log_level, settings.log_json)


def _gateway(settings: GatewaySettings) -> None:
    from evcharge.gateway.app import Gateway

    _start(Gateway(settings).run, settings.log_level, settings.log_json)


def _demo(settings: DemoSettings) -> None:
    from evcharge.devtools.demo import run_demo

    run_demo(settings)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


command(
    app,
    CentralSettings,
    _central,
    name="central",
    help="Run the control centre: registry, status, sessions, HTTP API and the panel.",
)
command(
    app,
    EngineSettings,
    _engine,
    name="engine",
    help="Run a charging point's engine: supplies energy, reports to central over Kafka.\n\n"
    "Faults and plug-in can be injected without a terminal: `evcharge ctl engine CP-005 fault`.",
)
command(
    app,
    MonitorSettings,
    _monitor,
    name="monitor",
    help="Run a charging point's monitor: checks the engine every second, keeps central told.",
)
command(
    app,
    DriverSettings,
    _driver,
    name="driver",
    help="Run a driver: request charges, watch them live, get a ticket for each.\n\n"
    "Exit code 0 when every request was answered, 3 when one got no answer, 2 for a setup error.",
)
command(
    app,
    SimSettings,
    _sim,
    name="sim",
    help="Fleet simulator: many CPs (real monitors) and drivers against a real central, in one "
    "process or split over several (--processes N).\n\n"
    "Exits 0 when the run saw no error, 1 otherwise; the report says what central did and what "
    "the simulator's own processes cost.",
)
command(
    app,
    GatewaySettings,
    _gateway,
    name="gateway",
    help="Run the OCPP gateway: chargers speaking OCPP 1.6 or 2.0.1 over WebSocket, each a charging "
    "point at central (ws://HOST:9000/ocpp/<cp-id>).",
)
command(
    app,
    DemoSettings,
    _demo,
    name="demo",
    help="Run the whole system on this machine: Kafka, central, CPs and drivers. Ctrl-C stops it.",
)


def _mount_subapps() -> None:
    from evcharge.ctl import app as ctl_app
    from evcharge.devtools.certs_cli import app as certs_app
    from evcharge.devtools.kafka.cli import app as kafka_app
    from evcharge.devtools.postgres_cli import app as postgres_app

    app.add_typer(kafka_app, name="kafka", help="Run a local Apache Kafka (KRaft) for development and tests.")
    app.add_typer(postgres_app, name="postgres", help="Run a local PostgreSQL for centrals to share.")
    app.add_typer(
        ctl_app, name="ctl", help="Operate a running system: CPs, drivers, sessions, engine faults."
    )
    app.add_typer(certs_app, name="certs", help="A local CA and certificates for TLS on every link.")


# The commands that run a role. A role is started many times over (a CP's engine and monitor each
# restart, a fleet has thousands), and the tools below (kafka, postgres, ctl, certs) are a fifth of
# its start-up time it never uses.
ROLE_COMMANDS = frozenset({"central", "engine", "monitor", "driver", "sim", "gateway", "demo"})


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ROLE_COMMANDS:
        _mount_subapps()
    app()
