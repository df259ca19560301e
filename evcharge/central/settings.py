"""Every setting of `evcharge central`, defined once (flags and environment variables derive from it)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from evcharge.config import DEFAULT_STATE_DIR, KafkaLink, Logging, opt, partitions_setting


@dataclass(frozen=True, kw_only=True)
class CentralSettings(KafkaLink, Logging):
    store: str = opt(
        str(DEFAULT_STATE_DIR / "central.sqlite"),
        "Where central keeps its registry and sessions: a SQLite file (a path, or sqlite:///path), "
        "or a shared PostgreSQL database (postgresql://USER:PASSWORD@HOST/DB) for several centrals.",
        "EVCHARGE_CENTRAL_STORE",
    )
    host: str = opt("127.0.0.1", "Address to listen on (monitors and HTTP).", "EVCHARGE_CENTRAL_HOST")
    advertise: str | None = opt(
        None,
        "Address other centrals, monitors and web pages reach this central at "
        "(default: --host, or this machine's name when listening on every address).",
        "EVCHARGE_CENTRAL_ADVERTISE",
    )
    tcp_port: int = opt(7000, "TCP port for monitors.", "EVCHARGE_CENTRAL_TCP_PORT")
    http_port: int = opt(8000, "HTTP port: the API, the web page and /metrics.", "EVCHARGE_CENTRAL_HTTP_PORT")
    partitions: int = partitions_setting()
    request_ttl_s: float = opt(
        60.0,
        "Seconds a driver's request may wait in Kafka before it is refused as expired "
        "(measured from when the broker received it, not from the driver's clock).",
        "EVCHARGE_REQUEST_TTL_S",
        flag="--request-ttl",
    )
    start_timeout_s: float = opt(
        10.0,
        "Seconds an engine has to start an authorised session.",
        "EVCHARGE_START_TIMEOUT_S",
        flag="--start-timeout",
    )
    heartbeat_timeout_s: float = opt(
        3.0,
        "Seconds of monitor silence before its CP shows DISCONNECTED.",
        "EVCHARGE_HEARTBEAT_TIMEOUT_S",
        flag="--heartbeat-timeout",
    )
    startup_grace_s: float = opt(
        5.0,
        "After a restart, seconds to wait for known CPs' monitors before judging queued requests.",
        "EVCHARGE_STARTUP_GRACE_S",
        flag="--startup-grace",
    )
    lease_s: float = opt(
        2.0,
        "With a PostgreSQL store shared by several centrals: seconds the leader's lease lasts "
        "unrenewed, i.e. how soon a standby takes over from a leader that died or froze.",
        "EVCHARGE_LEASE_S",
        flag="--lease",
    )
    panel: bool | None = opt(
        None,
        "Live panel in the terminal (default: when stdout is a terminal).",
        None,
        flag="--panel/--no-panel",
    )
    require_auth: bool | None = opt(
        None,
        "CPs register with the join token, then their own secret; CP changes over HTTP need the operator "
        "token (default: on when listening on a non-loopback address).",
        "EVCHARGE_REQUIRE_AUTH",
        flag="--require-auth/--no-require-auth",
    )
    join_token: str | None = opt(None, "Token a new CP shows to join.", "EVCHARGE_JOIN_TOKEN")
    operator_token: str | None = opt(
        None, "Bearer token for operator changes over HTTP (stop, resume, forget).", "EVCHARGE_OPERATOR_TOKEN"
    )
    require_proofs: bool | None = opt(
        None,
        "With --require-auth: decide only on engine events signed with their CP's key and on requests "
        "of enrolled drivers carrying their proof (default: on with Kafka credentials, --kafka-user).",
        "EVCHARGE_REQUIRE_PROOFS",
        flag="--require-proofs/--no-require-proofs",
    )
    insecure: bool = opt(
        False,
        "Allow central to listen beyond loopback without TLS (--cert/--key) and without Kafka credentials "
        "(--kafka-user): only on a network you trust.",
        "EVCHARGE_INSECURE",
    )
    audit_log: Path | None = opt(
        None,
        "Append-only audit log (default: audit.log beside a SQLite store, else in --state-dir).",
        "EVCHARGE_AUDIT_LOG",
    )
    state_dir: Path = opt(
        DEFAULT_STATE_DIR,
        "Where central keeps files beside its store (audit log, panel log).",
        "EVCHARGE_STATE_DIR",
    )

    def __post_init__(self) -> None:
        for name in ("request_ttl_s", "start_timeout_s", "heartbeat_timeout_s", "startup_grace_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.removesuffix('_s').replace('_', '-')} cannot be negative")
        if self.lease_s < 0.5:
            raise ValueError("--lease must be at least 0.5 s (four renewals fit in it)")

    @property
    def proofs_required(self) -> bool:
        """Signed events and enrolled drivers: asked for, or implied by an authenticated Kafka
        (where a credential is shared by a role, so only a proof tells one CP or driver from another)."""
        return self.require_proofs if self.require_proofs is not None else self.kafka_user is not None

    @property
    def advertised_host(self) -> str:
        if self.advertise:
            return self.advertise
        if self.host in ("0.0.0.0", "::", ""):
            return socket.getfqdn()
        return self.host
