"""Every setting of `evcharge demo`, apart from the demo itself: every `evcharge` command builds
its options from these at start, and a role must not pay for importing the whole demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evcharge.config import DEFAULT_KAFKA, opt


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    cps: int = opt(4, "Charging points to run: CP-001, CP-002, ...", "EVCHARGE_DEMO_CPS")
    drivers: int = opt(
        2, "Drivers to run: driver-alice, driver-bob, driver-carol, ...", "EVCHARGE_DEMO_DRIVERS"
    )
    session_s: float = opt(
        8.0,
        "Each supply ends by itself after this many seconds.",
        "EVCHARGE_DEMO_SESSION_S",
        flag="--session-seconds",
    )
    interval_s: float = opt(
        4.0, "Seconds a driver waits between two requests.", "EVCHARGE_DEMO_INTERVAL_S", flag="--interval"
    )
    kafka: str = opt(DEFAULT_KAFKA, "Kafka to use; one is started there when none answers.", "EVCHARGE_KAFKA")
    kafka_dir: Path | None = opt(
        None,
        "Data dir of the Kafka the demo starts when none answers at --kafka [default: <run dir>/../kafka].",
        "EVCHARGE_KAFKA_DIR",
    )
    tcp_port: int = opt(7000, "Central's TCP port for monitors.", "EVCHARGE_CENTRAL_TCP_PORT")
    http_port: int = opt(8000, "Central's HTTP port (API and web page).", "EVCHARGE_CENTRAL_HTTP_PORT")
    run_dir: Path | None = opt(
        None,
        "Where logs, state and requests files go [default: ./evcharge-runs/<YYYYmmdd-HHMMSS>].",
        "EVCHARGE_DEMO_RUN_DIR",
    )
    panel: bool | None = opt(
        None,
        "Central's live panel in this terminal until you press q; without it, a status line every few "
        "seconds until the drivers are done [default: panel when stdout is a terminal].",
        None,
        flag="--panel/--no-panel",
    )
    duration_s: float | None = opt(
        None, "Stop everything after this many seconds.", "EVCHARGE_DEMO_DURATION_S", flag="--duration"
    )
    status_interval_s: float = opt(
        3.0,
        "Seconds between two status lines (without the panel).",
        "EVCHARGE_DEMO_STATUS_INTERVAL_S",
        flag="--status-interval",
    )
    requests_dir: Path | None = opt(
        None,
        "Driver driver-X reads DIR/driver-X.txt instead of the shipped examples.",
        "EVCHARGE_DEMO_REQUESTS_DIR",
        hidden=True,
    )
    secure: bool = opt(
        False,
        "TLS on central's ports, a SASL_SSL broker with a SCRAM user per role and ACLs, signed engine "
        "events and enrolled drivers: certificates in <run dir>/../tls (made once). Needs a broker of "
        "its own: the port of --kafka must be free or a secure broker's.",
        "EVCHARGE_DEMO_SECURE",
    )

    def __post_init__(self) -> None:
        if not 1 <= self.cps <= 999 or self.drivers < 0:
            raise ValueError("--cps must be 1 to 999 and --drivers at least 0")
        if self.session_s < 0 or self.interval_s < 0 or (self.duration_s is not None and self.duration_s < 0):
            raise ValueError("--session-seconds, --interval and --duration cannot be negative")
