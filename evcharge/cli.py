"""The `evcharge` command. Commands stay thin: parse, set up logging, hand over to a role."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from evcharge import __version__
from evcharge.options import (
    DEFAULT_CENTRAL_URL,
    DEFAULT_KAFKA,
    DEFAULT_STATE_DIR,
    CentralUrl,
    Kafka,
    LogJson,
    LogLevel,
    Partitions,
    StateDir,
    host_port,
)

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


def _start(role, log_level: str, log_json: bool) -> None:
    """Run a role until it stops; configuration errors are one line, never a traceback."""
    from evcharge.errors import ConfigError
    from evcharge.logs import setup_logging
    from evcharge.runtime.shutdown import run_role

    setup_logging(log_level, json_lines=log_json)
    try:
        code = run_role(role)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.secho(f"error: {exc.strerror or exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def central(
    kafka: Kafka = DEFAULT_KAFKA,
    host: Annotated[
        str, typer.Option(envvar="EVCHARGE_CENTRAL_HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    tcp_port: Annotated[
        int, typer.Option(envvar="EVCHARGE_CENTRAL_TCP_PORT", help="TCP port for monitors.")
    ] = 7000,
    http_port: Annotated[
        int, typer.Option(envvar="EVCHARGE_CENTRAL_HTTP_PORT", help="HTTP API port.")
    ] = 8000,
    db: Annotated[
        Path,
        typer.Option(envvar="EVCHARGE_CENTRAL_DB", help="SQLite file with the registry and sessions."),
    ] = DEFAULT_STATE_DIR / "central.sqlite",
    panel: Annotated[
        bool | None,
        typer.Option(
            "--panel/--no-panel",
            help="Live panel in the terminal (default: when stdout is a terminal).",
        ),
    ] = None,
    request_ttl: Annotated[
        float,
        typer.Option(
            envvar="EVCHARGE_REQUEST_TTL_S",
            help="Seconds a driver's request may wait before it is refused as expired.",
        ),
    ] = 60.0,
    start_timeout: Annotated[
        float,
        typer.Option(
            envvar="EVCHARGE_START_TIMEOUT_S",
            help="Seconds an engine has to start an authorised session.",
        ),
    ] = 10.0,
    heartbeat_timeout: Annotated[
        float,
        typer.Option(
            envvar="EVCHARGE_HEARTBEAT_TIMEOUT_S",
            help="Seconds of monitor silence before its CP shows DISCONNECTED.",
        ),
    ] = 3.0,
    startup_grace: Annotated[
        float,
        typer.Option(
            envvar="EVCHARGE_STARTUP_GRACE_S",
            help="After a restart, seconds to wait for known CPs' monitors before judging queued requests.",
        ),
    ] = 5.0,
    require_auth: Annotated[
        bool | None,
        typer.Option(
            "--require-auth/--no-require-auth",
            envvar="EVCHARGE_REQUIRE_AUTH",
            help="CPs register with the join token, then their own secret; CP changes over HTTP need the "
            "operator token (default: on when listening on a non-loopback address).",
        ),
    ] = None,
    join_token: Annotated[
        str | None, typer.Option(envvar="EVCHARGE_JOIN_TOKEN", help="Token a new CP shows to join.")
    ] = None,
    operator_token: Annotated[
        str | None,
        typer.Option(envvar="EVCHARGE_OPERATOR_TOKEN", help="Bearer token for stop/resume/forget over HTTP."),
    ] = None,
    audit_log: Annotated[
        Path | None,
        typer.Option(
            envvar="EVCHARGE_AUDIT_LOG", help="Append-only audit log (default: audit.log beside --db)."
        ),
    ] = None,
    partitions: Partitions = 8,
    log_level: LogLevel = "info",
    log_json: LogJson = False,
) -> None:
    """Run the control centre: registry, status, sessions, HTTP API and the panel."""
    from evcharge.central.app import CentralApp, CentralSettings

    show_panel = sys.stdout.isatty() if panel is None else panel
    auth = not ipaddress.ip_address(_resolve(host)).is_loopback if require_auth is None else require_auth
    if auth and not (join_token and operator_token):
        typer.secho(
            "error: with auth on (--require-auth, or listening beyond loopback) central needs "
            "--join-token and --operator-token (or EVCHARGE_JOIN_TOKEN / EVCHARGE_OPERATOR_TOKEN)",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    settings = CentralSettings(
        kafka=kafka,
        db_path=db,
        host=host,
        tcp_port=tcp_port,
        http_port=http_port,
        partitions=partitions,
        request_ttl_s=request_ttl,
        start_timeout_s=start_timeout,
        heartbeat_timeout_s=heartbeat_timeout,
        startup_grace_s=startup_grace,
        panel=show_panel,
        require_auth=auth,
        join_token=join_token,
        operator_token=operator_token,
        audit_path=audit_log or db.parent / "audit.log",
    )
    if show_panel:
        from evcharge.central.panel import panel_logging

        panel_logging(log_level)
    _start(CentralApp(settings).run, log_level, log_json if not show_panel else False)


@app.command()
def engine(
    cp_id: Annotated[
        str,
        typer.Option("--cp-id", envvar="EVCHARGE_CP_ID", help="This charging point's id, e.g. CP-005."),
    ],
    port: Annotated[
        int | None,
        typer.Option(
            envvar="EVCHARGE_ENGINE_PORT",
            help="Health/control port (default 5000 + the CP number).",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(envvar="EVCHARGE_ENGINE_HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    kafka: Kafka = DEFAULT_KAFKA,
    power_kw: Annotated[
        float, typer.Option(envvar="EVCHARGE_POWER_KW", help="Power while supplying.")
    ] = 22.0,
    price: Annotated[
        float, typer.Option(envvar="EVCHARGE_PRICE", help="EUR/kWh for local (plug-in) supplies.")
    ] = 0.30,
    meter_interval: Annotated[
        float,
        typer.Option(envvar="EVCHARGE_METER_INTERVAL_S", help="Seconds between meter readings."),
    ] = 1.0,
    max_session: Annotated[
        float,
        typer.Option(
            envvar="EVCHARGE_MAX_SESSION_S",
            help="A supply ends by itself after this many seconds (0: never).",
        ),
    ] = 30.0,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    keys: Annotated[
        bool | None,
        typer.Option(
            "--keys/--no-keys",
            help="Keys in the terminal: p plug in, u unplug, f fault, c clear (default: when a terminal).",
        ),
    ] = None,
    partitions: Partitions = 8,
    log_level: LogLevel = "info",
    log_json: LogJson = False,
) -> None:
    """Run a charging point's engine: supplies energy, reports to central over Kafka.

    Faults and plug-in can be injected without a terminal: `evcharge ctl engine CP-005 fault`.
    """
    from evcharge.cp.engine import Engine, EngineSettings, default_engine_port

    settings = EngineSettings(
        cp_id=cp_id,
        kafka=kafka,
        state_dir=state_dir,
        host=host,
        port=port if port is not None else default_engine_port(cp_id),
        power_kw=power_kw,
        price_eur_kwh=price,
        meter_interval_s=meter_interval,
        max_session_s=max_session,
        partitions=partitions,
    )
    role = Engine(settings)
    use_keys = sys.stdin.isatty() if keys is None else keys
    if use_keys:
        from evcharge.cp.keys import with_engine_keys

        _start(with_engine_keys(role), log_level, log_json)
    _start(role.run, log_level, log_json)


@app.command()
def monitor(
    cp_id: Annotated[
        str, typer.Option("--cp-id", envvar="EVCHARGE_CP_ID", help="The charging point to watch.")
    ],
    engine: Annotated[
        str | None,
        typer.Option(
            envvar="EVCHARGE_ENGINE",
            help="The engine's HOST:PORT (default 127.0.0.1:5000 + CP number).",
        ),
    ] = None,
    central: Annotated[
        str, typer.Option(envvar="EVCHARGE_CENTRAL", help="Central's monitor port HOST:PORT.")
    ] = "127.0.0.1:7000",
    location: Annotated[
        str, typer.Option(envvar="EVCHARGE_LOCATION", help="Where the CP is, shown at central.")
    ] = "unknown",
    price: Annotated[
        float, typer.Option(envvar="EVCHARGE_PRICE", help="EUR/kWh registered at central.")
    ] = 0.30,
    max_kw: Annotated[float, typer.Option(envvar="EVCHARGE_POWER_KW", help="The CP's maximum power.")] = 22.0,
    check_interval: Annotated[
        float,
        typer.Option(envvar="EVCHARGE_CHECK_INTERVAL_S", help="Seconds between engine health checks."),
    ] = 1.0,
    failures: Annotated[
        int,
        typer.Option(
            envvar="EVCHARGE_FAILURE_THRESHOLD",
            help="Failed checks in a row before the CP is reported BROKEN.",
        ),
    ] = 3,
    claim_timeout: Annotated[
        float,
        typer.Option(
            envvar="EVCHARGE_CLAIM_TIMEOUT_S",
            help="How long to retry when central says this CP id already has a live monitor.",
        ),
    ] = 10.0,
    join_token: Annotated[
        str | None,
        typer.Option(
            envvar="EVCHARGE_JOIN_TOKEN", help="The operator's join token, when central requires one."
        ),
    ] = None,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    log_level: LogLevel = "info",
    log_json: LogJson = False,
) -> None:
    """Run a charging point's monitor: checks the engine every second, keeps central told."""
    from evcharge.cp.engine import default_engine_port
    from evcharge.cp.monitor import Monitor, MonitorSettings

    engine_host, engine_port = (
        host_port(engine, "--engine") if engine else ("127.0.0.1", default_engine_port(cp_id))
    )
    central_host, central_port = host_port(central, "--central")
    settings = MonitorSettings(
        cp_id=cp_id,
        engine_host=engine_host,
        engine_port=engine_port,
        central_host=central_host,
        central_port=central_port,
        location=location,
        price_eur_kwh=price,
        max_kw=max_kw,
        check_interval_s=check_interval,
        failure_threshold=failures,
        claim_timeout_s=claim_timeout,
        join_token=join_token,
        secret_path=state_dir / f"monitor-{cp_id}.secret",
    )
    _start(Monitor(settings).run, log_level, log_json)


@app.command()
def driver(
    driver_id: Annotated[
        str,
        typer.Option("--id", envvar="EVCHARGE_DRIVER_ID", help="This driver's id, e.g. driver-alice."),
    ],
    requests: Annotated[
        Path | None,
        typer.Option(
            envvar="EVCHARGE_REQUESTS",
            help="File with one CP id per line; without it the driver is interactive.",
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option(envvar="EVCHARGE_INTERVAL_S", help="Seconds between two requests.")
    ] = 4.0,
    answer_timeout: Annotated[
        float,
        typer.Option(
            envvar="EVCHARGE_ANSWER_TIMEOUT_S",
            help="Seconds to wait for central to accept or deny a request.",
        ),
    ] = 90.0,
    kafka: Kafka = DEFAULT_KAFKA,
    central_url: CentralUrl = DEFAULT_CENTRAL_URL,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    partitions: Partitions = 8,
    log_level: LogLevel = "info",
    log_json: LogJson = False,
) -> None:
    """Run a driver: request charges, watch them live, get a ticket for each."""
    from evcharge.driver.app import Driver, DriverSettings
    from evcharge.driver.requests_file import read_requests

    lines = None
    if requests is not None:
        try:
            lines = read_requests(requests)
        except OSError as exc:
            typer.secho(f"error: cannot read {requests}: {exc.strerror}", fg="red", err=True)
            raise typer.Exit(2) from None
    settings = DriverSettings(
        driver_id=driver_id,
        kafka=kafka,
        state_dir=state_dir,
        interval_s=interval,
        answer_timeout_s=answer_timeout,
        partitions=partitions,
        central_url=central_url,
    )
    role = Driver(settings)
    plan = str(requests.resolve()) if requests else "interactive"
    _start(lambda stop: role.run(stop, lines, plan), log_level, log_json)


def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host if host.replace(".", "").isdigit() else "0.0.0.0"


def _not_built(name: str) -> None:
    typer.secho(f"`evcharge {name}` is not built yet.", fg="yellow", err=True)
    raise typer.Exit(64)


@app.command()
def sim(
    cps: Annotated[
        int,
        typer.Option(
            envvar="EVCHARGE_SIM_CPS", min=1, help="Simulated charging points (engine + real monitor each)."
        ),
    ] = 100,
    drivers: Annotated[
        int, typer.Option(envvar="EVCHARGE_SIM_DRIVERS", min=0, help="Simulated drivers.")
    ] = 100,
    duration: Annotated[
        float,
        typer.Option(envvar="EVCHARGE_SIM_DURATION_S", min=0, help="Seconds of load after the ramp-up."),
    ] = 30.0,
    ramp_up: Annotated[
        float,
        typer.Option(
            envvar="EVCHARGE_SIM_RAMP_UP_S",
            min=0,
            help="Seconds over which CPs and drivers start (0: all at once, to measure registration).",
        ),
    ] = 10.0,
    request_rate: Annotated[
        float,
        typer.Option(
            envvar="EVCHARGE_SIM_REQUEST_RATE", min=0.001, help="Charge requests per second, whole fleet."
        ),
    ] = 5.0,
    session_seconds: Annotated[
        float,
        typer.Option(
            envvar="EVCHARGE_SIM_SESSION_S", min=0.1, help="A simulated supply ends after this many seconds."
        ),
    ] = 5.0,
    meter_interval: Annotated[
        float,
        typer.Option(
            envvar="EVCHARGE_SIM_METER_INTERVAL_S", min=0.05, help="Seconds between meter readings."
        ),
    ] = 1.0,
    fault_rate: Annotated[
        float,
        typer.Option(
            envvar="EVCHARGE_SIM_FAULT_RATE",
            min=0,
            help="Chance per CP per minute of a simulated engine fault (KO for 4-8 s).",
        ),
    ] = 0.0,
    kafka: Annotated[
        str,
        typer.Option(
            "--kafka",
            envvar=["EVCHARGE_SIM_KAFKA", "EVCHARGE_KAFKA"],
            help="Kafka bootstrap address HOST:PORT.",
        ),
    ] = DEFAULT_KAFKA,
    central: Annotated[
        str,
        typer.Option(
            envvar=["EVCHARGE_SIM_CENTRAL", "EVCHARGE_CENTRAL"], help="Central's monitor port HOST:PORT."
        ),
    ] = "127.0.0.1:7000",
    central_url: Annotated[
        str,
        typer.Option(
            "--central-url",
            envvar=["EVCHARGE_SIM_CENTRAL_URL", "EVCHARGE_CENTRAL_URL"],
            help="Central's HTTP API, polled to see the CPs registered.",
        ),
    ] = DEFAULT_CENTRAL_URL,
    cp_prefix: Annotated[
        str,
        typer.Option(
            envvar="EVCHARGE_SIM_CP_PREFIX", help="CP ids are PREFIX-0001...; distinct per simulator."
        ),
    ] = "SIM",
    driver_prefix: Annotated[
        str,
        typer.Option(envvar="EVCHARGE_SIM_DRIVER_PREFIX", help="Driver ids are PREFIX-0001..."),
    ] = "sim-driver",
    seed: Annotated[
        int | None,
        typer.Option(envvar="EVCHARGE_SIM_SEED", help="Seed for prices, CP choice and think times."),
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json", envvar="EVCHARGE_SIM_JSON", help="Also write the report as JSON to this file."
        ),
    ] = None,
    partitions: Partitions = 8,
    log_level: LogLevel = "info",
    log_json: LogJson = False,
) -> None:
    """Fleet simulator: many CPs (real monitors) and drivers in one process against a real central.

    Exits 0 when the run saw no error, 1 otherwise; the report says what central did.
    """
    from evcharge.errors import ConfigError
    from evcharge.sim.app import SimSettings, Simulation

    central_host, central_port = host_port(central, "--central")
    settings = SimSettings(
        cps=cps,
        drivers=drivers,
        kafka=kafka,
        central_host=central_host,
        central_port=central_port,
        central_url=central_url,
        duration_s=duration,
        ramp_up_s=ramp_up,
        request_rate=request_rate,
        session_s=session_seconds,
        meter_interval_s=meter_interval,
        fault_rate_per_min=fault_rate,
        cp_prefix=cp_prefix,
        driver_prefix=driver_prefix,
        seed=seed,
        json_path=json_path,
        partitions=partitions,
        log_level=log_level,
    )
    try:
        simulation = Simulation(settings)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    _start(simulation.run, log_level, log_json)


def _mount_subapps() -> None:
    from evcharge.broker_cli import app as kafka_app
    from evcharge.ctl import app as ctl_app
    from evcharge.demo import demo

    app.add_typer(kafka_app, name="kafka", help="Run a local single-node Apache Kafka (KRaft).")
    app.add_typer(ctl_app, name="ctl", help="Operate a running system: CPs, sessions, engine faults.")
    app.command()(demo)


_mount_subapps()


def main() -> None:
    app()
