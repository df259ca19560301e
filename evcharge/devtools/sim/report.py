"""What a simulator run saw: counters, latency samples, percentiles and the rendered report.

Pure: nothing here touches the network or the clock; the run feeds numbers in,
and the report comes out as a dict (for `--json`) or as rich renderables.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

LATENCIES = {
    "accepted": "request → accepted",
    "first_reading": "request → first reading",  # the first ChargingProgress: the supply began
    "ticket": "request → ticket",
    "denied": "request → denied",
    "cp_registered": "CP started → ON at central",  # seen in central's API, polled
}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest sample with at least `q` % of the samples at or below it.

    Nearest rank rather than interpolation: every figure printed is a latency
    that really happened, and p100 is the maximum.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencySummary:
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            p50=percentile(ordered, 50),
            p95=percentile(ordered, 95),
            p99=percentile(ordered, 99),
            max=ordered[-1] if ordered else None,
        )


@dataclass
class SimStats:
    """Every counter of a run; the one object the fleet, the drivers and the watchers write to."""

    cps: int
    drivers: int
    cps_started: int = 0
    cps_registered: int = 0  # seen ON (or SUPPLYING) at central's API at least once
    registration_s: float | None = None  # first CP started → central's API shows every one
    cps_listed: int | None = None  # our CPs in central's GET /cp at the end
    requests_sent: int = 0
    accepted: int = 0
    denied: Counter[str] = field(default_factory=Counter)  # by deny code
    tickets: Counter[str] = field(default_factory=Counter)  # by end reason
    errors: Counter[str] = field(default_factory=Counter)  # by kind
    warnings: Counter[str] = field(default_factory=Counter)  # expected log warnings (simulated faults)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in LATENCIES})
    commands: Counter[str] = field(default_factory=Counter)  # commands applied, by type
    events_published: int = 0
    late_updates: int = 0  # driver updates for a request the driver no longer waits for
    faults_injected: int = 0
    unplugged_at_end: int = 0
    loop_lag_s: list[float] = field(default_factory=list)
    loop_lag_worst_at_s: float | None = None  # seconds into the run
    load_s: float = 0.0  # the ramp-up and the duration: while drivers sent requests
    elapsed_s: float = 0.0  # the same, and the drivers' last answers and tickets
    interrupted: bool = False
    process: dict[str, float] = field(default_factory=dict)  # the sim's own CPU and memory, in all
    workers: list[dict[str, Any]] = field(default_factory=list)  # each worker's, with --processes N
    central_counters: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str, count: int = 1) -> None:
        self.errors[kind] += count

    def record(self, latency: str, seconds: float) -> None:
        self.latencies[latency].append(seconds)

    @property
    def total_errors(self) -> int:
        return sum(self.errors.values())

    @property
    def total_denied(self) -> int:
        return sum(self.denied.values())

    @property
    def total_tickets(self) -> int:
        return sum(self.tickets.values())

    @property
    def registrations_per_s(self) -> float | None:
        if not self.registration_s or not self.cps_registered:
            return None
        return self.cps_registered / self.registration_s

    def progress_line(self, elapsed_s: float) -> str:
        return (
            f"[{elapsed_s:5.0f} s] CPs registered {self.cps_registered}/{self.cps} "
            f"(started {self.cps_started}), requests {self.requests_sent}, "
            f"accepted {self.accepted}, denied {self.total_denied}, "
            f"tickets {self.total_tickets}, errors {self.total_errors}"
        )

    def to_json(self, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "settings": settings or {},
            "load_s": round(self.load_s, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "interrupted": self.interrupted,
            "cps": {
                "planned": self.cps,
                "started": self.cps_started,
                "registered": self.cps_registered,
                "registration_s": _round(self.registration_s),
                "registrations_per_s": _round(self.registrations_per_s),
                "listed_at_central": self.cps_listed,
            },
            "drivers": self.drivers,
            "requests": {
                "sent": self.requests_sent,
                "accepted": self.accepted,
                "denied": dict(self.denied),
                "denied_total": self.total_denied,
            },
            "tickets": {"total": self.total_tickets, "by_end_reason": dict(self.tickets)},
            "errors": {"total": self.total_errors, "by_kind": dict(self.errors)},
            "expected_warnings": dict(self.warnings),
            "latency_s": {
                name: {k: _round(v) for k, v in LatencySummary.of(values).__dict__.items()}
                for name, values in self.latencies.items()
            },
            "engines": {
                "commands": dict(self.commands),
                "events_published": self.events_published,
                "faults_injected": self.faults_injected,
                "unplugged_at_end": self.unplugged_at_end,
            },
            "late_updates": self.late_updates,
            "sim_loop_lag_s": {k: _round(v) for k, v in LatencySummary.of(self.loop_lag_s).__dict__.items()},
            "sim_process": self.process,
            "sim_workers": self.workers,
            "central_counters": self.central_counters,
        }


def _round(value: float | int | None, digits: int = 4) -> float | int | None:
    return round(value, digits) if isinstance(value, float) else value


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _counts(counter: Counter[str]) -> str:
    return escape(", ".join(f"{k} {v}" for k, v in counter.most_common()) or "none")


def render(stats: SimStats) -> RenderableType:
    """The end-of-run report: what central did for this fleet, and whether anything went wrong."""
    summary = Table(title="evcharge sim: report", show_header=False, title_justify="left")
    summary.add_column("what", style="bold")
    summary.add_column("value")
    per_s = stats.registrations_per_s
    registered = f"{stats.cps_registered} of {stats.cps} (started {stats.cps_started})"
    if stats.registration_s is not None:
        registered += f", all ON after {stats.registration_s:.2f} s"
    if per_s is not None:
        registered += f" ({per_s:.1f} CPs/s)"
    summary.add_row("CPs registered", registered)
    if stats.cps_listed is not None:
        summary.add_row("CPs listed at central", str(stats.cps_listed))
    summary.add_row("drivers", str(stats.drivers))
    rate = stats.requests_sent / stats.load_s if stats.load_s else 0.0
    summary.add_row(
        "requests sent", f"{stats.requests_sent} ({rate:.1f}/s over the {stats.load_s:.0f} s drivers ran)"
    )
    summary.add_row("accepted", str(stats.accepted))
    summary.add_row("denied", f"{stats.total_denied} ({_counts(stats.denied)})")
    summary.add_row("tickets", f"{stats.total_tickets} ({_counts(stats.tickets)})")
    summary.add_row(
        "engines",
        f"commands {_counts(stats.commands)}; events published {stats.events_published}; "
        f"faults injected {stats.faults_injected}; unplugged at the end {stats.unplugged_at_end}",
    )
    if stats.late_updates:
        summary.add_row("late updates", f"{stats.late_updates} (for requests no longer waited for)")
    if stats.warnings:
        summary.add_row("expected warnings", _counts(stats.warnings))
    errors = Table.grid() if not stats.errors else _error_table(stats.errors)
    summary.add_row("errors", f"[red]{stats.total_errors}[/]" if stats.total_errors else "[green]0[/]")
    lag = LatencySummary.of(stats.loop_lag_s)
    worst_at = f" at {stats.loop_lag_worst_at_s:.0f} s" if stats.loop_lag_worst_at_s is not None else ""
    summary.add_row(
        "sim event-loop lag", f"p50 {_ms(lag.p50)}, p99 {_ms(lag.p99)}, max {_ms(lag.max)}{worst_at}"
    )
    if stats.process:
        processes = int(stats.process.get("processes", 1))
        summary.add_row(
            "sim process" if processes == 1 else f"sim, {processes} worker processes and their parent",
            _cpu(stats.process),
        )
    if stats.interrupted:
        summary.add_row("run", "[yellow]interrupted before the end[/]")

    latency = Table(title="latencies", title_justify="left")
    for column in ("from → to", "count", "p50", "p95", "p99", "max"):
        latency.add_column(column, justify="left" if column == "from → to" else "right")
    for name, values in stats.latencies.items():
        s = LatencySummary.of(values)
        latency.add_row(
            LATENCIES.get(name, name), str(s.count), _ms(s.p50), _ms(s.p95), _ms(s.p99), _ms(s.max)
        )
    return Group(summary, latency, _worker_table(stats.workers), errors)


def _cpu(figures: dict[str, Any]) -> str:
    return (
        f"CPU {figures.get('cpu_s', 0):.1f} s (user {figures.get('user_s', 0):.1f} + "
        f"sys {figures.get('sys_s', 0):.1f}; {figures.get('cpu_percent', 0):.0f} % of one core), "
        f"max RSS {figures.get('max_rss_mb', 0):.0f} MB"
    )


def _worker_table(workers: list[dict[str, Any]]) -> RenderableType:
    """Each process of the simulator beside the others: a worker near 100 % is the limit, not central."""
    if not workers:
        return Table.grid()
    table = Table(title="sim processes", title_justify="left")
    for column in ("process", "CPs", "user", "sys", "% of one core", "max RSS"):
        table.add_column(column, justify="left" if column in ("process", "CPs") else "right")
    for w in workers:
        table.add_row(
            escape(str(w.get("name", "?"))),
            escape(str(w.get("cps", "-"))),
            f"{w.get('user_s', 0):.1f} s",
            f"{w.get('sys_s', 0):.1f} s",
            f"{w.get('cpu_percent', 0):.0f} %",
            f"{w.get('max_rss_mb', 0):.0f} MB",
        )
    return table


def _error_table(errors: Counter[str]) -> Table:
    table = Table(title="errors", title_justify="left", title_style="bold red")
    table.add_column("count", justify="right")
    table.add_column("kind")
    for kind, count in errors.most_common():
        table.add_row(str(count), escape(kind))
    return table
