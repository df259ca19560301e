"""How central grows: its CPU and memory against the CPs heartbeating, and the readings it applies
against those offered. Pure of the system: results in, a small table and a PNG out.

The heartbeat section's runs (one fresh central per fleet size, uvloop) give the first curve; the
throughput section's steps (1, 2, 4 and 8 thousand readings a second offered) the second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT = Path("docs/bench-growth.png")


def fleet_points(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per fleet size: central's CPU (% of a core) and memory, the simulator's CPU, the CPs ON."""
    runs = results.get("heartbeats", {}).get("runs", [])
    return [
        {
            "cps": r["cps"],
            "central_cpu_percent": r["central_cpu_percent"],
            "central_rss_mb": r.get("central_rss_mb"),
            "sim_cpu_percent": r["sim_cpu_percent"],
            "on": r.get("on_at_start", r.get("on_at_end")),
        }
        for r in sorted(runs, key=lambda r: r["cps"])
        if r.get("loop") == "uvloop" and not r.get("error")
    ]


def readings_points(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per throughput step: readings offered and applied a second, central's CPU and memory."""
    steps = results.get("throughput", {}).get("steps", [])
    return [
        {
            "offered_per_s": s["offered_per_s"],
            "applied_per_s": s["applied_per_s"],
            "central_cpu_percent": s.get("central_cpu_percent"),
            "central_rss_mb": s.get("central_rss_mb"),
            "keeping_up": s.get("keeping_up"),
        }
        for s in sorted(steps, key=lambda s: s["offered_per_s"])
        if "applied_per_s" in s
    ]


def markdown(results: dict[str, Any]) -> str:
    """The two curves as the README's tables."""
    lines = [
        "| CPs heartbeating | central CPU | central memory | simulator CPU | CPs ON |",
        "|---|---|---|---|---|",
    ]
    for p in fleet_points(results):
        lines.append(
            f"| {p['cps']:,} | {p['central_cpu_percent']} % | {_mb(p['central_rss_mb'])} | "
            f"{p['sim_cpu_percent']} % | {p['on']:,} |"
        )
    lines += [
        "",
        "| readings/s offered | applied | central CPU | central memory | keeping up |",
        "|---|---|---|---|---|",
    ]
    for p in readings_points(results):
        lines.append(
            f"| {p['offered_per_s']:,.0f} | {p['applied_per_s']:,.0f} | {p['central_cpu_percent']} % | "
            f"{_mb(p['central_rss_mb'])} | {'yes' if p['keeping_up'] else 'no'} |"
        )
    return "\n".join(lines)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MB"


def plot(results: dict[str, Any], path: Path = PLOT) -> Path | None:
    """Write the two curves to `path` (PNG); None when the results hold neither."""
    fleet, readings = fleet_points(results), readings_points(results)
    if not fleet and not readings:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: a file
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    if fleet:
        cps = [p["cps"] for p in fleet]
        left.plot(cps, [p["central_cpu_percent"] for p in fleet], "o-", label="central CPU")
        left.plot(cps, [p["sim_cpu_percent"] for p in fleet], "s--", label="simulator CPU (all workers)")
        for p in fleet:
            if p["on"] is not None and p["on"] < p["cps"]:  # the fleet was not carried: say so on it
                left.annotate(
                    f"only {p['on']:,} ON", (p["cps"], p["central_cpu_percent"]), textcoords="offset points",
                    xytext=(-60, 12), fontsize=8, color="tab:red",
                )  # fmt: skip
        left.set_xlabel("CPs heartbeating every second")
        left.set_ylabel("% of one core")
        measured = [p for p in fleet if p["central_rss_mb"] is not None]
        if measured:
            memory = left.twinx()
            memory.plot(
                [p["cps"] for p in measured], [p["central_rss_mb"] for p in measured], "^:", color="tab:green"
            )
            memory.set_ylabel("central memory, MB (green)")
            memory.set_ylim(bottom=0)
        left.set_ylim(bottom=0)
        left.legend(loc="upper left", fontsize=8)
        left.set_title("central against the fleet")
    if readings:
        offered = [p["offered_per_s"] for p in readings]
        right.plot(offered, offered, ":", color="grey", label="offered")
        right.plot(offered, [p["applied_per_s"] for p in readings], "o-", label="applied")
        right.set_xlabel("readings/s offered")
        right.set_ylabel("readings/s")
        cpu = right.twinx()
        cpu.plot(offered, [p["central_cpu_percent"] for p in readings], "s--", color="tab:red")
        cpu.set_ylabel("central CPU, % of one core (red)")
        cpu.set_ylim(bottom=0)
        right.legend(loc="upper left", fontsize=8)
        right.set_title("readings central applies")
    # Merged sections (`--only`) carry their own run's machine, date and commit.
    machine = results.get("heartbeats_run", results).get("machine", {})
    figure.suptitle(
        f"make bench, {machine.get('date', '?')[:16]}, commit {machine.get('commit', '?')}, "
        f"{machine.get('cpus', '?')} CPUs",
        fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)
    return path
