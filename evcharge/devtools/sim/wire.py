"""What a worker of `evcharge sim --processes N` and its parent say to each other. Pure: no I/O.

Worker → parent, one JSON object per line on the worker's stdout: `ready` (its
Kafka consumers read, it waits for the go), `progress` (its counters, every few
seconds) and `report` (everything it measured, samples included, once at the end).
Parent → worker, one word per line on the worker's stdin: `go` (start the
fleet: every worker starts together) and `stop` (wind down in order, report,
exit). The end of the worker's stdin, the parent gone, is a `stop` too.

Floats travel as JSON numbers, which Python writes and reads back exactly, so a
merged percentile is the one a single process would have computed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from evcharge.devtools.sim.report import SimStats
from evcharge.errors import ProtocolError

GO = "go"
STOP = "stop"
COMMANDS = (GO, STOP)

_COUNTERS = {
    f.name for f in fields(SimStats) if f.name in ("denied", "tickets", "errors", "warnings", "commands")
}
_SAMPLES = {"latencies", "loop_lag_s", "workers"}


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Progress:
    stats: SimStats  # counters only, no samples


@dataclass(frozen=True)
class Report:
    stats: SimStats
    started_at: dict[str, float] = field(default_factory=dict)  # monotonic, each CP's health port opened
    first_started: float | None = None  # monotonic, when the worker's first CP started
    crashed: bool = False  # a part of the worker failed and ended its run early


WorkerMessage = Ready | Progress | Report


def stats_to_wire(stats: SimStats, *, samples: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(SimStats):
        if f.name in _SAMPLES and not samples:
            continue
        value = getattr(stats, f.name)
        out[f.name] = dict(value) if f.name in _COUNTERS else value
    return out


def stats_from_wire(body: dict[str, Any]) -> SimStats:
    known = {f.name for f in fields(SimStats)}
    values: dict[str, Any] = {k: Counter(v) if k in _COUNTERS else v for k, v in body.items() if k in known}
    stats = SimStats(**values)
    for name in stats.latencies.keys() - set(body.get("latencies", {})):
        stats.latencies[name] = []
    return stats


def encode(message: WorkerMessage) -> bytes:
    if isinstance(message, Ready):
        body: dict[str, Any] = {"ready": {"pid": message.pid}}
    elif isinstance(message, Progress):
        body = {"progress": stats_to_wire(message.stats, samples=False)}
    else:
        body = {
            "report": {
                "stats": stats_to_wire(message.stats),
                "started_at": message.started_at,
                "first_started": message.first_started,
                "crashed": message.crashed,
            }
        }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> WorkerMessage:
    """One line of a worker's stdout; ProtocolError for anything else (a stray print, a cut line)."""
    try:
        body = json.loads(line)
        if not isinstance(body, dict) or len(body) != 1:
            raise ValueError("not one message")
        ((kind, value),) = body.items()
        if kind == "ready":
            return Ready(pid=int(value["pid"]))
        if kind == "progress":
            return Progress(stats_from_wire(value))
        if kind == "report":
            return Report(
                stats=stats_from_wire(value["stats"]),
                started_at={str(k): float(v) for k, v in value["started_at"].items()},
                first_started=value["first_started"],
                crashed=bool(value["crashed"]),
            )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"not a worker message: {line[:80]!r} ({exc})") from None
    raise ProtocolError(f"unknown worker message {kind!r}")


def command(line: bytes) -> str:
    """One line of a worker's stdin: `go` or `stop`; ProtocolError for anything else."""
    word = line.decode(errors="replace").strip()
    if word not in COMMANDS:
        raise ProtocolError(f"not a command for a worker: {word[:40]!r}")
    return word
