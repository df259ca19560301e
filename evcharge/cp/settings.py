"""Every setting of `evcharge engine` and `evcharge monitor`, defined once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evcharge.config import (
    DEFAULT_CENTRAL,
    KafkaLink,
    Logging,
    Tls,
    host_port,
    host_ports,
    opt,
    partitions_setting,
    required,
    show_host_ports,
    state_dir_setting,
)
from evcharge.protocol.units import kw_text, parse_power, parse_price, price_text

ENGINE_BASE_PORT = 5000


def default_engine_port(cp_id: str) -> int:
    """5000 + the CP's number (CP-005 → 5005), so a row of CPs on one host needs no port flags."""
    digits = "".join(ch for ch in cp_id if ch.isdigit())
    return ENGINE_BASE_PORT + int(digits[-3:]) if digits else ENGINE_BASE_PORT


def engine_key_path(state_dir: Path, cp_id: str) -> Path:
    """Where the monitor keeps the engine's signing key (0600), and the engine reads it: the state
    dir the two share on the CP's host."""
    return state_dir / f"engine-{cp_id}.key"


def _cp_id() -> Any:
    return required("This charging point's id, e.g. CP-005.", "EVCHARGE_CP_ID", flag="--cp-id")


@dataclass(frozen=True, kw_only=True)
class EngineSettings(KafkaLink, Logging):
    cp_id: str = _cp_id()
    state_dir: Path = state_dir_setting()
    host: str = opt("127.0.0.1", "Address the health/control port listens on.", "EVCHARGE_ENGINE_HOST")
    port: int | None = opt(
        None, "Health/control port (default 5000 + the CP number).", "EVCHARGE_ENGINE_PORT"
    )
    power_w: int = opt(
        22000,
        "Power while supplying, in kW.",
        "EVCHARGE_ENGINE_POWER_KW",
        flag="--power-kw",
        parse=parse_power,
        show=kw_text,
    )
    price: int = opt(
        300000,
        "EUR/kWh for a supply started at the CP itself (plug-in); a driver's session is billed at the "
        "price central registered for the CP.",
        "EVCHARGE_ENGINE_LOCAL_PRICE",
        flag="--local-price",
        parse=parse_price,
        show=price_text,
    )
    meter_interval_s: float = opt(
        1.0, "Seconds between meter readings.", "EVCHARGE_METER_INTERVAL_S", flag="--meter-interval"
    )
    max_session_s: float = opt(
        30.0,
        "A supply ends by itself after this many seconds (0: never).",
        "EVCHARGE_MAX_SESSION_S",
        flag="--max-session",
    )
    partitions: int = partitions_setting()
    keys: bool | None = opt(
        None,
        "Keys in the terminal: p plug in, u unplug, f fault, c clear (default: when a terminal).",
        None,
        flag="--keys/--no-keys",
    )
    sign_events: bool | None = opt(
        None,
        "Sign every event with the key central issued to this CP at join (the monitor keeps it in the "
        "state dir); events wait in the outbox until the key is there. Needed when central requires "
        "credentials (default: on with --kafka-user).",
        "EVCHARGE_SIGN_EVENTS",
        flag="--sign-events/--no-sign-events",
    )

    def __post_init__(self) -> None:
        if self.meter_interval_s <= 0:
            raise ValueError("--meter-interval must be above 0")
        if self.max_session_s < 0:
            raise ValueError("--max-session cannot be negative")

    @property
    def health_port(self) -> int:
        return self.port if self.port is not None else default_engine_port(self.cp_id)

    @property
    def signing(self) -> bool:
        return self.sign_events if self.sign_events is not None else self.kafka_user is not None

    @property
    def key_path(self) -> Path:
        return engine_key_path(self.state_dir, self.cp_id)

    @property
    def meter_interval_ms(self) -> int:
        return max(1, round(self.meter_interval_s * 1000))


@dataclass(frozen=True, kw_only=True)
class MonitorSettings(Tls, Logging):
    cp_id: str = _cp_id()
    engine: str | None = opt(
        None,
        "The engine's health port HOST:PORT (default 127.0.0.1:5000 + the CP number).",
        "EVCHARGE_ENGINE",
    )
    central: tuple[tuple[str, int], ...] = opt(
        host_ports(DEFAULT_CENTRAL, "--central"),
        "Central's monitor port HOST:PORT; several, comma-separated, when centrals run redundantly "
        "(the monitor follows the one that leads).",
        "EVCHARGE_CENTRAL",
        parse=lambda text: host_ports(text, "--central"),
        show=show_host_ports,
    )
    location: str = opt("unknown", "Where the CP is, shown at central.", "EVCHARGE_CP_LOCATION")
    price: int = opt(
        300000,
        "EUR/kWh this CP charges, registered at central.",
        "EVCHARGE_CP_PRICE",
        parse=parse_price,
        show=price_text,
    )
    max_w: int = opt(
        22000, "The CP's maximum power in kW, registered at central.", "EVCHARGE_CP_MAX_KW", flag="--max-kw",
        parse=parse_power, show=kw_text,
    )  # fmt: skip
    check_interval_s: float = opt(
        1.0, "Seconds between engine health checks.", "EVCHARGE_CHECK_INTERVAL_S", flag="--check-interval"
    )
    failure_threshold: int = opt(
        3,
        "Failed checks in a row before the CP is reported BROKEN.",
        "EVCHARGE_FAILURE_THRESHOLD",
        flag="--failures",
    )
    heartbeat_interval_s: float = opt(
        1.0,
        "Seconds between two heartbeats to central.",
        "EVCHARGE_HEARTBEAT_INTERVAL_S",
        flag="--heartbeat-interval",
    )
    claim_timeout_s: float = opt(
        10.0,
        "How long to retry when central says this CP id already has a live monitor.",
        "EVCHARGE_CLAIM_TIMEOUT_S",
        flag="--claim-timeout",
    )
    join_token: str | None = opt(
        None, "The operator's join token, when central requires one.", "EVCHARGE_JOIN_TOKEN"
    )
    state_dir: Path = state_dir_setting()

    def __post_init__(self) -> None:
        if self.check_interval_s <= 0 or self.heartbeat_interval_s <= 0:
            raise ValueError("--check-interval and --heartbeat-interval must be above 0")
        if self.failure_threshold < 1:
            raise ValueError("--failures must be at least 1")
        if self.engine is not None:
            host_port(self.engine, "--engine")

    @property
    def engine_address(self) -> tuple[str, int]:
        if self.engine is not None:
            return host_port(self.engine, "--engine")
        return "127.0.0.1", default_engine_port(self.cp_id)

    @property
    def secret_path(self) -> Path:
        return self.state_dir / f"monitor-{self.cp_id}.secret"

    @property
    def key_path(self) -> Path:
        return engine_key_path(self.state_dir, self.cp_id)
