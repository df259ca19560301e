"""Every setting of `evcharge driver`, defined once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evcharge.config import (
    DEFAULT_CENTRAL_URL,
    KafkaLink,
    Logging,
    opt,
    partitions_setting,
    required,
    state_dir_setting,
)


@dataclass(frozen=True, kw_only=True)
class DriverSettings(KafkaLink, Logging):
    driver_id: str = required("This driver's id, e.g. driver-alice.", "EVCHARGE_DRIVER_ID", flag="--id")
    requests: Path | None = opt(
        None, "File with one CP id per line; without it the driver is interactive.", "EVCHARGE_REQUESTS"
    )
    interval_s: float = opt(4.0, "Seconds between two requests.", "EVCHARGE_INTERVAL_S", flag="--interval")
    answer_timeout_s: float = opt(
        90.0,
        "Seconds to wait for central to accept or deny a request; a request left unanswered makes the "
        "driver exit with code 3.",
        "EVCHARGE_ANSWER_TIMEOUT_S",
        flag="--answer-timeout",
    )
    settle_timeout_s: float = opt(
        30.0,
        "After the last request, seconds to wait for the CP's meter to confirm or correct a provisional "
        "ticket (one central issued when the CP's engine was gone).",
        "EVCHARGE_SETTLE_TIMEOUT_S",
        flag="--settle-timeout",
    )
    token: str | None = opt(
        None,
        "The token the operator enrolled this driver with (evcharge ctl driver add): every request "
        "carries its proof. Needed when central requires credentials.",
        "EVCHARGE_DRIVER_TOKEN",
    )
    central_url: str = opt(
        DEFAULT_CENTRAL_URL,
        "Central's HTTP API (for `list`); several, comma-separated.",
        "EVCHARGE_CENTRAL_URL",
    )
    state_dir: Path = state_dir_setting()
    partitions: int = partitions_setting()
    json: bool = opt(
        False, "Print one JSON event per line instead of the screen for people.", "EVCHARGE_DRIVER_JSON"
    )
    events: Path | None = opt(
        None, "Also append every event as one JSON line to this file.", "EVCHARGE_DRIVER_EVENTS"
    )

    def __post_init__(self) -> None:
        if min(self.interval_s, self.answer_timeout_s, self.settle_timeout_s) < 0:
            raise ValueError("--interval, --answer-timeout and --settle-timeout cannot be negative")
