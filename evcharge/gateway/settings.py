"""Every setting of `evcharge gateway`, defined once (flags and `EVCHARGE_GATEWAY_*` variables derive)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evcharge.config import (
    DEFAULT_CENTRAL,
    DEFAULT_CENTRAL_URL,
    DEFAULT_STATE_DIR,
    KafkaLink,
    Logging,
    host_ports,
    opt,
    show_host_ports,
)
from evcharge.protocol.units import kw_text, parse_power, parse_price, price_text


@dataclass(frozen=True, kw_only=True)
class GatewaySettings(KafkaLink, Logging):
    """`--ca`, `--cert`, `--key`, `--kafka`, `--kafka-user` are the shared ones (`KafkaLink`): with
    `--cert` the chargers' WebSockets are wss:// (OCPP security profile 2); with `--ca` the links to
    central (its monitor port, its HTTP API) and to Kafka speak TLS and check who answers."""

    host: str = opt("127.0.0.1", "Address the OCPP WebSocket server listens on.", "EVCHARGE_GATEWAY_HOST")
    port: int = opt(
        9000, "Port of the OCPP WebSocket server (ws://HOST:PORT/ocpp/<cp-id>).", "EVCHARGE_GATEWAY_PORT"
    )
    join_token: str | None = opt(
        None,
        "The operator's join token: a new charger's first HTTP Basic password, and what the gateway shows "
        "central to register a new charger. Without it chargers are not authenticated (loopback only).",
        "EVCHARGE_GATEWAY_JOIN_TOKEN",
    )
    sign_events: bool | None = opt(
        None,
        "Sign each charger's events with the key central issued to it at registration, and keep a "
        "charger's events in the outbox until its key is there (default: on with --join-token).",
        "EVCHARGE_GATEWAY_SIGN_EVENTS",
        flag="--sign-events/--no-sign-events",
    )
    central: tuple[tuple[str, int], ...] = opt(
        host_ports(DEFAULT_CENTRAL, "--central"),
        "Central's monitor port HOST:PORT (several, comma-separated: the gateway follows the leader).",
        "EVCHARGE_GATEWAY_CENTRAL",
        parse=lambda text: host_ports(text, "--central"),
        show=show_host_ports,
    )
    central_url: str = opt(
        DEFAULT_CENTRAL_URL,
        "Central's HTTP API, asked to authorise an RFID start at a charger; several, comma-separated.",
        "EVCHARGE_GATEWAY_CENTRAL_URL",
    )
    state_dir: Path = opt(
        DEFAULT_STATE_DIR, "Where the gateway keeps its SQLite store.", "EVCHARGE_GATEWAY_STATE_DIR"
    )
    gateway_id: str = opt(
        "gateway",
        "This gateway's name: its Kafka consumer group and its store file.",
        "EVCHARGE_GATEWAY_ID",
    )
    partitions: int = opt(
        8, "Partitions for each topic when the gateway creates it.", "EVCHARGE_GATEWAY_PARTITIONS"
    )
    price: int = opt(
        300000,
        "EUR/kWh the chargers of this gateway charge, registered at central.",
        "EVCHARGE_GATEWAY_PRICE",
        parse=parse_price,
        show=price_text,
    )
    max_w: int = opt(
        22000, "A charger's maximum power in kW, registered at central.", "EVCHARGE_GATEWAY_MAX_KW",
        flag="--max-kw", parse=parse_power, show=kw_text,
    )  # fmt: skip
    location: str = opt(
        "", "Where the chargers are, shown at central (default: the charger's vendor and model).",
        "EVCHARGE_GATEWAY_LOCATION",
    )  # fmt: skip
    heartbeat_interval_s: float = opt(
        1.0,
        "Seconds between two heartbeats to central for each charger.",
        "EVCHARGE_GATEWAY_HEARTBEAT_INTERVAL_S",
        flag="--heartbeat-interval",
    )
    ping_interval_s: float = opt(
        1.0,
        "Seconds between WebSocket pings to each charger.",
        "EVCHARGE_GATEWAY_PING_INTERVAL_S",
        flag="--ping-interval",
    )
    ping_timeout_s: float = opt(
        1.5,
        "A charger whose pong is later than this is dropped (DISCONNECTED at central).",
        "EVCHARGE_GATEWAY_PING_TIMEOUT_S",
        flag="--ping-timeout",
    )
    call_timeout_s: float = opt(
        10.0,
        "How long the gateway waits for a charger to answer one of its calls.",
        "EVCHARGE_GATEWAY_CALL_TIMEOUT_S",
        flag="--call-timeout",
    )
    answer_timeout_s: float = opt(
        25.0,
        "How long a transaction message waits for Kafka before it goes unanswered (the charger retries).",
        "EVCHARGE_GATEWAY_ANSWER_TIMEOUT_S",
        flag="--answer-timeout",
    )
    charger_heartbeat_s: int = opt(
        60,
        "The OCPP Heartbeat interval given to chargers at boot (liveness is the WebSocket ping).",
        "EVCHARGE_GATEWAY_CHARGER_HEARTBEAT_S",
        flag="--charger-heartbeat",
    )
    lenient: bool = opt(
        False,
        "Tolerate known vendor quirks: payload fields the schema does not know, no subprotocol offered "
        "(taken as ocpp1.6), timestamps without a time zone (taken as UTC).",
        "EVCHARGE_GATEWAY_LENIENT",
        flag="--lenient/--strict",
    )
    insecure: bool = opt(
        False,
        "Allow the gateway to listen beyond loopback without TLS (--cert, --key, --ca) and Kafka "
        "credentials (--kafka-user): only on a network you trust. The join token stays required.",
        "EVCHARGE_GATEWAY_INSECURE",
    )
    metrics_port: int = opt(
        9100, "Port of the Prometheus metrics endpoint (0: none).", "EVCHARGE_GATEWAY_METRICS_PORT"
    )
    metrics_host: str = opt(
        "127.0.0.1", "Address the metrics endpoint listens on.", "EVCHARGE_GATEWAY_METRICS_HOST"
    )

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together")
        for name in ("heartbeat_interval_s", "ping_interval_s", "ping_timeout_s", "call_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.removesuffix('_s').replace('_', '-')} must be above 0")
        if self.answer_timeout_s <= 0:
            raise ValueError("--answer-timeout must be above 0")

    @property
    def store_path(self) -> Path:
        return self.state_dir / f"{self.gateway_id}.sqlite"

    @property
    def serves_tls(self) -> bool:
        return self.cert is not None

    @property
    def signing(self) -> bool:
        """Whether a charger's events wait for its key. Central issues a key to every CP that
        registers with the join token, so a gateway holding the join token gets one for each of its
        chargers (waiting is never forever), while central may require proofs without Kafka
        credentials (--require-proofs), which the gateway cannot see: keyed on the join token, not
        on --kafka-user as the engine's default is. Without a join token central issues no keys."""
        return self.sign_events if self.sign_events is not None else self.join_token is not None
