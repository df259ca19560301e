"""`evcharge kafka start|stop|status`: thin commands over LocalBroker (one node) and LocalCluster."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    ClusterStatus,
    LocalBroker,
    LocalCluster,
    default_data_dir,
)
from evcharge.devtools.kafka.secure import BrokerSecurity
from evcharge.errors import BrokerError

app = typer.Typer(
    help=f"Run a local Apache Kafka {KAFKA_VERSION} (KRaft) on loopback: one broker, or a cluster.",
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
        help="Kafka port; the KRaft controller uses the next one. A cluster's node i uses port + 2(i-1).",
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


def _broker(
    host: str, port: int, data_dir: Path | None, security: BrokerSecurity | None = None
) -> LocalBroker:
    return LocalBroker(data_dir=data_dir or default_data_dir(), host=host, port=port, security=security)


def _existing_cluster(data_dir: Path | None) -> LocalCluster | None:
    """The cluster laid out in this data dir by an earlier `start --nodes N`, if any."""
    return LocalCluster.open(data_dir or default_data_dir())


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


def _describe_cluster(status: ClusterStatus) -> None:
    out.print(f"  {'node':<5} {'pid':<8} {'address':<22} state", markup=False)
    for node in status.nodes:
        pid = str(node.pid) if node.pid is not None else "-"
        out.print(f"  {node.node_id:<5} {pid:<8} {node.address:<22} {node.state}", markup=False)
    out.print(f"  bootstrap  {status.bootstrap}", markup=False)
    out.print(f"  data       {status.data_dir}", markup=False)


@app.command()
def start(
    host: HostOpt = DEFAULT_HOST,
    port: PortOpt = DEFAULT_PORT,
    data_dir: DataDirOpt = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for the broker to answer.")
    ] = 60,
    nodes: Annotated[
        int,
        typer.Option(
            "--nodes",
            envvar="EVCHARGE_KAFKA_NODES",
            min=1,
            max=9,
            help="1: a single broker. More: a cluster of combined broker+controller nodes.",
        ),
    ] = 1,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            envvar="EVCHARGE_KAFKA_SECURE",
            help="SASL_SSL only: TLS with the certificate in --tls-dir, SCRAM users central, engine, driver "
            "(passwords in --tls-dir/kafka-users.json), ACLs that let each do only its part.",
        ),
    ] = False,
    tls_dir: Annotated[
        Path,
        typer.Option("--tls-dir", envvar="EVCHARGE_TLS_DIR", help="What `evcharge certs init` wrote."),
    ] = Path("evcharge-state") / "tls",
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Allow a plaintext broker beyond loopback (a network you trust)."),
    ] = False,
) -> None:
    """Fetch Kafka if needed (first run only) and start the broker (or cluster) in the background."""
    with _errors_as_exit():
        existing = _existing_cluster(data_dir)
        if not secure and not insecure and not _is_loopback(host):
            raise BrokerError(
                f"Kafka would listen on {host} beyond loopback with no authentication: "
                "start it with --secure (after `evcharge certs init`), or say --insecure"
            )
        security = BrokerSecurity(tls_dir) if secure else None
        if security is not None and (nodes != 1 or existing is not None):
            raise BrokerError("--secure runs a single broker (--nodes 1)")
    if nodes == 1 and existing is None:
        _start_broker(_broker(host, port, data_dir, security), timeout)
        return
    with _errors_as_exit():
        if existing is not None and existing.nodes != nodes:
            raise BrokerError(
                f"{existing.data_dir} holds a cluster of {existing.nodes} nodes: "
                f"start it with --nodes {existing.nodes}"
            )
        cluster = LocalCluster(
            data_dir=data_dir or default_data_dir(), nodes=nodes, host=host, base_port=port
        )
    _start_cluster(cluster, timeout)


@contextmanager
def _progress_spinner() -> Iterator[Callable[[str], None]]:
    with err.status("Starting Kafka…") as spinner:

        def progress(message: str) -> None:
            err.print(message, markup=False)
            spinner.update(message)

        yield progress


def _start_broker(broker: LocalBroker, timeout_s: float) -> None:
    with _errors_as_exit(), _progress_spinner() as progress:
        result = broker.start(timeout_s=timeout_s, progress=progress)
    status = result.status
    if result.already_running:
        out.print(f"Kafka is already running at {status.bootstrap} (pid {status.pid})")
    else:
        out.print(f"Kafka is running at {status.bootstrap} (pid {status.pid})")
    _describe(status)


def _start_cluster(cluster: LocalCluster, timeout_s: float) -> None:
    with _errors_as_exit(), _progress_spinner() as progress:
        result = cluster.start(timeout_s=timeout_s, progress=progress)
    already = "already " if result.already_running else ""
    out.print(f"Kafka cluster of {cluster.nodes} nodes is {already}running at {result.status.bootstrap}")
    _describe_cluster(result.status)


@app.command()
def stop(
    host: HostOpt = DEFAULT_HOST,
    port: PortOpt = DEFAULT_PORT,
    data_dir: DataDirOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait before SIGKILL.")] = 30,
) -> None:
    """Stop the broker, or every node of the cluster, of this data dir.

    SIGTERM (a controlled shutdown), then SIGKILL after --timeout.
    """
    with _errors_as_exit(), err.status("Stopping Kafka…"):
        cluster = _existing_cluster(data_dir)
        if cluster is not None:
            pids = [str(node.pid) for node in cluster.status().nodes if node.pid is not None]
            if cluster.stop(timeout_s=timeout):
                out.print(f"Kafka cluster stopped (pids {', '.join(pids)})")
            else:
                out.print(f"Kafka cluster was not running (data dir {cluster.data_dir})", markup=False)
            return
        broker = _broker(host, port, data_dir)
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
    """Say whether the broker (or each node of the cluster) of this data dir runs.

    Exit code 0 if it runs (every node does), 3 if not (no node does), 4 if only some nodes do.
    """
    with _errors_as_exit():
        cluster = _existing_cluster(data_dir)
        if cluster is not None:
            cst = cluster.status()
        else:
            st = _broker(host, port, data_dir).status()
    if cluster is not None:
        running = cst.running_count
        out.print(f"Kafka cluster: {running} of {len(cst.nodes)} nodes running")
        _describe_cluster(cst)
        if running < len(cst.nodes):
            raise typer.Exit(3 if running == 0 else 4)
        return
    if st.running:
        out.print(f"Kafka is running (pid {st.pid})")
    else:
        out.print("Kafka is not running")
    _describe(st)
    if not st.running:
        raise typer.Exit(3)


def _is_loopback(host: str) -> bool:
    import ipaddress
    import socket

    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False
