"""Every setting of `evcharge sim`, defined once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from evcharge.config import (
    DEFAULT_CENTRAL,
    DEFAULT_CENTRAL_URL,
    KafkaLink,
    Logging,
    host_ports,
    opt,
    partitions_setting,
    show_host_ports,
    state_dir_setting,
)
from evcharge.devtools.sim import split
from evcharge.devtools.sim.split import Share
from evcharge.errors import ConfigError

ID_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,50}\Z")


@dataclass(frozen=True, kw_only=True)
class SimSettings(KafkaLink, Logging):
    cps: int = opt(100, "Simulated charging points (engine + real monitor each).", "EVCHARGE_SIM_CPS")
    drivers: int = opt(100, "Simulated drivers.", "EVCHARGE_SIM_DRIVERS")
    central: tuple[tuple[str, int], ...] = opt(
        host_ports(DEFAULT_CENTRAL, "--central"),
        "Central's monitor port HOST:PORT (several, comma-separated).",
        "EVCHARGE_CENTRAL",
        parse=lambda text: host_ports(text, "--central"),
        show=show_host_ports,
    )
    central_url: str = opt(
        DEFAULT_CENTRAL_URL, "Central's HTTP API, polled to see the CPs registered.", "EVCHARGE_CENTRAL_URL"
    )
    duration_s: float = opt(
        30.0, "Seconds of load after the ramp-up.", "EVCHARGE_SIM_DURATION_S", flag="--duration"
    )
    ramp_up_s: float = opt(
        10.0,
        "Seconds over which CPs and drivers start (0: all at once, to measure registration).",
        "EVCHARGE_SIM_RAMP_UP_S",
        flag="--ramp-up",
    )
    drivers_after_s: float = opt(
        0.0,
        "Seconds the drivers wait before they start over the ramp-up: the CPs register first, and "
        "requests are timed against a fleet already in place.",
        "EVCHARGE_SIM_DRIVERS_AFTER_S",
        flag="--drivers-after",
    )
    request_rate: float = opt(5.0, "Charge requests per second, whole fleet.", "EVCHARGE_SIM_REQUEST_RATE")
    session_s: float = opt(
        5.0,
        "A simulated supply ends after this many seconds.",
        "EVCHARGE_SIM_SESSION_S",
        flag="--session-seconds",
    )
    meter_interval_s: float = opt(
        1.0, "Seconds between meter readings.", "EVCHARGE_SIM_METER_INTERVAL_S", flag="--meter-interval"
    )
    fault_rate_per_min: float = opt(
        0.0,
        "Chance per CP per minute of a simulated engine fault (KO for 4-8 s).",
        "EVCHARGE_SIM_FAULT_RATE",
        flag="--fault-rate",
    )
    cp_prefix: str = opt(
        "SIM", "CP ids are PREFIX-0001...; distinct per simulator.", "EVCHARGE_SIM_CP_PREFIX"
    )
    driver_prefix: str = opt("sim-driver", "Driver ids are PREFIX-0001...", "EVCHARGE_SIM_DRIVER_PREFIX")
    seed: int | None = opt(None, "Seed for prices, CP choice and think times.", "EVCHARGE_SIM_SEED")
    json_path: Path | None = opt(
        None, "Also write the report as JSON to this file.", "EVCHARGE_SIM_JSON", flag="--json"
    )
    processes: int = opt(
        1,
        "Worker processes the fleet is split over, each with its own event loop and its own range "
        "of CP and driver ids; this process then only watches central and merges their reports "
        "(1: this process runs the whole fleet).",
        "EVCHARGE_SIM_PROCESSES",
    )
    # Set by the parent of `--processes N` for each worker it starts: which share it runs.
    worker: int = opt(0, "Run as worker K of --processes (started by the simulator itself).", hidden=True)
    partitions: int = partitions_setting()
    # Security on (what a central beyond loopback requires): the monitors join with the token over
    # TLS (--ca), the engines sign their events with the keys central issues at join, the drivers
    # are enrolled with the operator's token and prove their requests. One Kafka user
    # (--kafka-user) carries both the engines' and the drivers' traffic, so on the project's broker
    # it is `admin`, the one principal whose ACLs allow both.
    join_token: str | None = opt(
        None, "The join token the simulated monitors register with.", "EVCHARGE_JOIN_TOKEN"
    )
    operator_token: str | None = opt(
        None,
        "The operator's token: with it every simulated driver is enrolled (POST /drivers) and proves "
        "its requests.",
        "EVCHARGE_OPERATOR_TOKEN",
    )
    sign_events: bool | None = opt(
        None,
        "Sign every engine event with its CP's key from the join (default: on with --kafka-user).",
        "EVCHARGE_SIGN_EVENTS",
        flag="--sign-events/--no-sign-events",
    )
    state_dir: Path = state_dir_setting()

    @property
    def share(self) -> Share:
        """The part of the fleet this process runs: all of it, or worker K's share."""
        if not self.worker:
            return split.whole(self.cps, self.drivers, self.request_rate, self.seed)
        shares = split.split(self.cps, self.drivers, self.request_rate, self.seed, self.processes)
        return shares[self.worker - 1]

    @property
    def signing(self) -> bool:
        return self.sign_events if self.sign_events is not None else self.kafka_user is not None

    def check(self) -> None:
        for name, prefix in (("--cp-prefix", self.cp_prefix), ("--driver-prefix", self.driver_prefix)):
            if not ID_PREFIX.match(prefix):
                raise ConfigError(f"{name} {prefix!r}: letters, digits, '.', '_' and '-' only")
        if self.cps < 1 or self.drivers < 0 or self.request_rate <= 0 or self.meter_interval_s <= 0:
            raise ConfigError("--cps must be at least 1, --request-rate and --meter-interval above 0")
        if not 1 <= self.processes <= self.cps:
            raise ConfigError("--processes must be at least 1 and at most --cps (a CP or more each)")
        if not 0 <= self.worker <= self.processes:
            raise ConfigError("--worker must be within 1..--processes")
        if (
            min(
                self.duration_s, self.ramp_up_s, self.drivers_after_s, self.session_s, self.fault_rate_per_min
            )
            < 0
        ):
            raise ConfigError("durations and rates cannot be negative")
