"""`evcharge ctl`: a thin client for operators and scripts.

CPs and sessions through central's HTTP API; faults and plug-in through an
engine's local control port.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from evcharge.config import DEFAULT_CENTRAL_URL
from evcharge.protocol.units import kwh_text, price_text

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
cp_app = typer.Typer(no_args_is_help=True, help="List, stop, resume or forget charging points.")
app.add_typer(cp_app, name="cp")
driver_app = typer.Typer(no_args_is_help=True, help="Enrol drivers (central requires it with auth on).")
app.add_typer(driver_app, name="driver")


CentralUrl = Annotated[
    str, typer.Option("--central-url", envvar="EVCHARGE_CENTRAL_URL", help="Central's HTTP API.")
]
CaFile = Annotated[
    Path | None,
    typer.Option(
        "--ca", envvar="EVCHARGE_TLS_CA", help="The CA central's certificate is checked against (https)."
    ),
]
OperatorToken = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="EVCHARGE_OPERATOR_TOKEN", help="Operator token, when central requires one."
    ),
]


def _call(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    token: str | None = None,
    ca: Path | None = None,
) -> Any:
    import ssl

    import aiohttp

    async def go() -> tuple[int, Any]:
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(ca))) if ca else None
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), connector=connector) as http,
            http.request(method, url, json=body, headers=_bearer(token)) as response,
        ):
            return response.status, await response.json(content_type=None)

    try:
        status, data = asyncio.run(go())
    except aiohttp.ClientConnectorCertificateError as exc:
        typer.secho(
            f"error: central's certificate at {url} is not trusted: {exc.certificate_error}",
            fg="red",
            err=True,
        )
        raise typer.Exit(1) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        typer.secho(f"error: cannot reach central at {url}: {exc.__class__.__name__}", fg="red", err=True)
        raise typer.Exit(1) from None
    if status >= 400:
        message = data.get("message", data) if isinstance(data, dict) else data
        typer.secho(f"error {status}: {message}", fg="red", err=True)
        raise typer.Exit(1)
    return data


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _show(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@driver_app.command("add")
def driver_add(
    driver_id: str,
    central_url: CentralUrl = DEFAULT_CENTRAL_URL,
    token: OperatorToken = None,
    ca: CaFile = None,
) -> None:
    """Enrol a driver and print its token (once): give it to the driver as --token."""
    answer = _call("POST", f"{central_url}/drivers", {"driver_id": driver_id}, token=token, ca=ca)
    typer.echo(answer["token"])


@cp_app.command("list")
def cp_list(central_url: CentralUrl = DEFAULT_CENTRAL_URL, ca: CaFile = None) -> None:
    """Every CP with its status."""
    for cp in _call("GET", f"{central_url}/cp", ca=ca)["charging_points"]:
        session = cp["session"]
        extra = f"  {session['driver_id']} {kwh_text(session['wh'])} kWh" if session else ""
        price = price_text(cp["price"])
        typer.echo(f"{cp['cp_id']:<10} {cp['status']:<13} {cp['location']:<20} {price} EUR/kWh{extra}")


@cp_app.command("show")
def cp_show(cp_id: str, central_url: CentralUrl = DEFAULT_CENTRAL_URL, ca: CaFile = None) -> None:
    _show(_call("GET", f"{central_url}/cp/{cp_id}", ca=ca))


@cp_app.command("stop")
def cp_stop(
    cp_id: Annotated[str, typer.Argument(help="A CP id, or 'all'.")],
    central_url: CentralUrl = DEFAULT_CENTRAL_URL,
    token: OperatorToken = None,
    ca: CaFile = None,
) -> None:
    """Stop a CP (ends its supply with a ticket; it shows 'Out of order')."""
    path = "/cp/stop-all" if cp_id == "all" else f"/cp/{cp_id}/stop"
    _call("POST", central_url + path, token=token, ca=ca)
    typer.echo(f"stopped {cp_id}")


@cp_app.command("resume")
def cp_resume(
    cp_id: Annotated[str, typer.Argument(help="A CP id, or 'all'.")],
    central_url: CentralUrl = DEFAULT_CENTRAL_URL,
    token: OperatorToken = None,
    ca: CaFile = None,
) -> None:
    """Put a stopped CP back in service."""
    path = "/cp/resume-all" if cp_id == "all" else f"/cp/{cp_id}/resume"
    _call("POST", central_url + path, token=token, ca=ca)
    typer.echo(f"resumed {cp_id}")


@cp_app.command("forget")
def cp_forget(
    cp_id: str, central_url: CentralUrl = DEFAULT_CENTRAL_URL, token: OperatorToken = None, ca: CaFile = None
) -> None:
    """Remove a disconnected CP from the registry."""
    _call("DELETE", f"{central_url}/cp/{cp_id}", token=token, ca=ca)
    typer.echo(f"forgot {cp_id}")


@app.command()
def charge(
    driver_id: str,
    cp_id: str,
    central_url: CentralUrl = DEFAULT_CENTRAL_URL,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="EVCHARGE_DRIVER_TOKEN", help="The driver's token (or the operator's)."
        ),
    ] = None,
    ca: CaFile = None,
) -> None:
    """Ask central for a charge over HTTP (the same decision as a driver's Kafka request)."""
    body = {"driver_id": driver_id, "cp_id": cp_id}
    _show(_call("POST", f"{central_url}/request/charge", body, token=token, ca=ca))


@app.command()
def sessions(
    driver_id: Annotated[str | None, typer.Option("--driver")] = None,
    cp_id: Annotated[str | None, typer.Option("--cp")] = None,
    central_url: CentralUrl = DEFAULT_CENTRAL_URL,
    ca: CaFile = None,
) -> None:
    """Recent sessions, newest first."""
    query = "&".join(f"{k}={v}" for k, v in (("driver_id", driver_id), ("cp_id", cp_id)) if v)
    _show(_call("GET", f"{central_url}/sessions?{query}", ca=ca))


@app.command()
def engine(
    cp_id: str,
    action: Annotated[str, typer.Argument(help="plug, unplug, fault, clear or status.")],
    host: Annotated[
        str,
        typer.Option(
            envvar="EVCHARGE_ENGINE_HOST", help="The engine's host (its controls answer on loopback)."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(envvar="EVCHARGE_ENGINE_PORT", help="The engine's port (default 5000 + CP number)."),
    ] = None,
) -> None:
    """Act at a CP's engine: plug in, unplug, raise a fault (KO) or clear it."""
    from evcharge.cp.settings import default_engine_port
    from evcharge.errors import EvchargeError
    from evcharge.protocol.messages import ControlResult, EngineAction, EngineControl
    from evcharge.runtime.tcp import FramedConnection

    try:
        chosen = EngineAction(action)
    except ValueError:
        raise typer.BadParameter("action must be plug, unplug, fault, clear or status") from None
    target_port = port if port is not None else default_engine_port(cp_id)

    async def go() -> str:
        conn = await FramedConnection.open(host, target_port, timeout_s=5)
        try:
            reply = await conn.request(EngineControl(action=chosen), timeout_s=5)
        finally:
            await conn.close()
        assert isinstance(reply, ControlResult)
        return reply.detail

    try:
        typer.echo(f"{cp_id}: {asyncio.run(go())}")
    except (EvchargeError, OSError, TimeoutError) as exc:
        typer.secho(
            f"error: engine {cp_id} at {host}:{target_port}: {exc or exc.__class__.__name__}",
            fg="red",
            err=True,
        )
        raise typer.Exit(1) from None
