"""The benchmark's table: each figure beside its goal and the guide's promise. Pure: results in, rows out.

A measurement that failed has `error` in its results; its row says so (measured:
"failed", and why) instead of a figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table

from bench import fleet

GUIDE_DETECTION_S = 20.0  # the guide: failures seen within 15-20 s
GUIDE_RECOVERY_S = 30.0  # the guide: back in < 30 s
ERROR_CHARS = 160  # of a failure's reason, in the table (the JSON keeps all of it)


@dataclass(frozen=True)
class Row:
    section: str
    metric: str
    goal: str
    measured: str
    verdict: str


# Central alone, working off a backlog, on either store (each reading durable, dedup-checked, told).
DRAIN_GOAL_PER_S = 20_000
DRAIN_GOAL = f"≥ {DRAIN_GOAL_PER_S:,}/s on 2 cores"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _at_most(value: float | None, goal: float, guide: float | None = None) -> str:
    if value is None:
        return "not measured"
    if value <= goal:
        verdict = "meets goal"
    elif value < 1.5 * goal:
        verdict = f"misses goal by {(value - goal) * 1000:.0f} ms"
    else:
        verdict = f"misses goal ({value / goal:.1f}x)"
    if guide is not None and value > 0:
        verdict += f"; {guide / value:.0f}x inside the guide's {guide:g} s"
    return verdict


def _at_least(value: float | None, goal: float) -> str:
    if value is None:
        return "not measured"
    return "meets goal" if value >= goal else f"misses goal ({value / goal:.0%} of it)"


def _failed(section: str, metric: str, goal: str, figure: dict[str, Any]) -> Row:
    reason = str(figure.get("error"))
    if len(reason) > ERROR_CHARS:
        reason = reason[: ERROR_CHARS - 1] + "…"
    return Row(section, metric, goal, f"failed: {reason}", "not measured")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}/s"


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    chaos = results.get("chaos", {})
    if chaos.get("error"):
        out.append(
            _failed(
                "detection", "detection and recovery, every case", "≤ 1-3.5 s to see, ≤ 5 s to serve", chaos
            )
        )
    else:
        out += _chaos_rows(chaos)
    out += _latency_rows(results)
    out += _load_rows(results)
    out += _storage_rows(results)
    out += _failover_rows(results)
    out += _scale_rows(results)
    out += _heartbeat_rows(results)
    out += _fleet_rows(results)
    out += _reads_rows(results)
    out += _gateway_rows(results)
    out += _security_rows(results)
    footprint = results.get("footprint", {})
    if footprint.get("error"):
        out.append(_failed("footprint", "every role: start → ready, RSS at ready", "-", footprint))
        footprint = {}
    for role, figure in footprint.items():
        out.append(
            Row(
                "footprint",
                f"{role}: start → ready, RSS at ready",
                "-",
                f"{_s(figure.get('startup_median_s'))}, {figure.get('rss_median_mb') or 0:.0f} MB",
                "reported",
            )
        )
    return out


def _chaos_rows(chaos: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    detection = (
        ("engine_killed", "engine killed → BROKEN", 0.5),
        ("engine_hung", "engine hung (SIGSTOP) → BROKEN", 3.5),
        ("monitor_killed", "monitor killed → DISCONNECTED", 1.0),
        ("monitor_hung", "monitor hung (SIGSTOP) → DISCONNECTED", 3.5),
    )
    for key, label, goal in detection:
        figure = chaos.get(key, {}).get("detection_s", {})
        out.append(
            Row(
                "detection",
                f"{label} (median / max of {figure.get('count', 0)})",
                f"≤ {goal:g} s median (guide 15-20 s)",
                f"{_s(figure.get('median'))} / {_s(figure.get('max'))}" + _error(chaos.get(key)),
                _at_most(figure.get("median"), goal, GUIDE_DETECTION_S),
            )
        )
    for key, label in (
        ("engine_killed", "engine"),
        ("monitor_killed", "monitor"),
        ("driver_killed", "driver"),
        ("central_killed", "central"),
        ("kafka_killed", "Kafka"),
    ):
        figure = chaos.get(key, {}).get("recovery_s", {})
        out.append(
            Row(
                "recovery",
                f"{label} restarted → serving again (median / max of {figure.get('count', 0)})",
                "≤ 5 s median (guide < 30 s)",
                f"{_s(figure.get('median'))} / {_s(figure.get('max'))}" + _error(chaos.get(key)),
                _at_most(figure.get("median"), 5.0, GUIDE_RECOVERY_S),
            )
        )
    return out


def _error(case: dict[str, Any] | None) -> str:
    return f" (stopped: {case['error']})" if case and case.get("error") else ""


def _latency_rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    low = results.get("latency", {}).get("low_load", {})
    floor = results.get("latency", {}).get("floor_s", {})
    multiples = results.get("latency", {}).get("hop_multiples", {})
    accepted = low.get("accepted_s", {})
    if low.get("error"):
        out.append(
            _failed("latency", "request → accepted, supply started, first reading, low load", "-", low)
        )
    else:
        out += _low_load_rows(low, accepted, multiples)
    if floor.get("error"):
        out.append(_failed("latency", "bare aiokafka produce → consume, one hop", "the floor", floor))
    else:
        out.append(
            Row(
                "latency",
                f"bare aiokafka produce → consume, one hop (p50 / p99 of {floor.get('count', 0)})",
                "the floor",
                f"{_ms(floor.get('p50'))} / {_ms(floor.get('p99'))}",
                f"accepted p50 = {multiples.get('accepted_vs_2_hops', '-')}x (2 hops x floor)",
            )
        )
    sustained = results.get("latency", {}).get("sustained", {})
    if sustained.get("error"):
        out.append(_failed("latency", "request → accepted at a sustained rate (sim)", "-", sustained))
    elif sustained:
        figure = sustained.get("latency_s", {}).get("accepted", {})
        first = sustained.get("latency_s", {}).get("first_reading", {})
        out.append(
            Row(
                "latency",
                f"request → accepted at {sustained.get('request_rate_per_s')} requests/s "
                f"(sim, p50 / p95 / p99 of {figure.get('count', 0)})",
                "-",
                f"{_ms(figure.get('p50'))} / {_ms(figure.get('p95'))} / {_ms(figure.get('p99'))}",
                f"supply started p50 {_ms(first.get('p50'))}, p99 {_ms(first.get('p99'))}; "
                f"errors {sustained.get('errors', {}).get('total', '-')}",
            )
        )
    return out


def _low_load_rows(low: dict[str, Any], accepted: dict[str, Any], multiples: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    out.append(
        Row(
            "latency",
            f"request → accepted, low load (p50 / p95 / p99 of {accepted.get('count', 0)})",
            "p50 ≤ 20 ms, p99 ≤ 100 ms",
            f"{_ms(accepted.get('p50'))} / {_ms(accepted.get('p95'))} / {_ms(accepted.get('p99'))}",
            _both(accepted.get("p50"), 0.020, accepted.get("p99"), 0.100),
        )
    )
    for key, label, hops in (
        ("supply_started_s", "request → supply started (seq 0), low load", "supply_started_vs_4_hops"),
        (
            "first_reading_s",
            "request → first meter reading, low load",
            "first_reading_minus_interval_vs_4_hops",
        ),
    ):
        figure = low.get(key, {})
        note = f"{multiples.get(hops)}x 4 hops" if multiples.get(hops) is not None else "-"
        if key == "first_reading_s":
            note += f" after the {low.get('meter_interval_s', 1):g} s meter interval"
            if low.get("early_readings"):
                note += f"; {low['early_readings']} came before a full interval"
        out.append(
            Row(
                "latency",
                f"{label} (p50 / p95 / p99 of {figure.get('count', 0)})",
                "-",
                f"{_ms(figure.get('p50'))} / {_ms(figure.get('p95'))} / {_ms(figure.get('p99'))}",
                note,
            )
        )
    return out


def _both(p50: float | None, p50_goal: float, p99: float | None, p99_goal: float) -> str:
    if p50 is None or p99 is None:
        return "not measured"
    misses = [
        f"{name} {v / g:.1f}x goal"
        for name, v, g in (("p50", p50, p50_goal), ("p99", p99, p99_goal))
        if v > g
    ]
    return "meets goal" if not misses else "misses goal: " + ", ".join(misses)


def _drain_measured(drain: dict[str, Any]) -> str:
    return (
        f"{_rate(drain.get('applied_per_s'))} applied "
        f"({_rate(drain.get('applied_and_published_per_s'))} until the last update was "
        f"published); {drain.get('applied', 0):,} in {_s(drain.get('window_s'))}, "
        f"{drain.get('updates_published', 0):,} driver updates; "
        f"central {drain.get('central_cpu_percent', '-')} % of a core, "
        f"broker {drain.get('broker_cpu_percent', '-')} %"
        + (f", PostgreSQL {drain['postgres_cpu_percent']} %" if "postgres_cpu_percent" in drain else "")
    )


def _load_rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    tput = results.get("throughput", {})
    capacity = "meter readings central applies per second at most: working off a backlog alone"
    if tput.get("error"):
        out.append(_failed("throughput", capacity + ", and live beside the simulator", DRAIN_GOAL, tput))
        return out
    drain = tput.get("drain", {})
    label = (
        capacity + " on SQLite, an fsync per commit (its writes and each driver told, once a batch, included)"
    )
    if drain.get("error"):
        out.append(_failed("throughput", label, DRAIN_GOAL, drain))
    elif drain:
        out.append(
            Row(
                "throughput",
                label,
                DRAIN_GOAL,
                _drain_measured(drain),
                _at_least(drain.get("applied_per_s"), DRAIN_GOAL_PER_S),
            )
        )
    if tput.get("steps"):
        best = max(
            (s for s in tput["steps"] if s.get("keeping_up")),
            key=lambda s: s.get("applied_per_s", 0),
            default={},
        )
        sustained = tput.get("max_sustained_applied_per_s")
        out.append(
            Row(
                "throughput",
                "live, beside the simulator: highest rate applied with the backlog steady",
                "-",
                f"{sustained or 0:,.0f}/s; central {best.get('central_cpu_percent', '-')} %, "
                f"{best.get('central_rss_mb', '-')} MB; sim {best.get('sim_cpu_percent', '-')} %, "
                f"broker {best.get('broker_cpu_percent', '-')} %",
                f"limit: {tput.get('limited_by')}",
            )
        )
    if "steady_minute" in tput:
        out.append(_steady_row(tput["steady_minute"]))
    return out


def _steady_row(minute: dict[str, Any]) -> Row:
    """The best live step held for a minute: offered = applied, and the backlog not growing."""
    metric = "live, the best step held a minute: offered → applied, the backlog's start → end"
    goal = "offered = applied, backlog not growing"
    if minute.get("error"):
        return _failed("throughput", metric, goal, minute)
    offered, applied = minute.get("offered_per_s") or 0, minute.get("applied_per_s") or 0
    return Row(
        "throughput",
        metric,
        goal,
        f"{offered:,.0f}/s → {applied:,.0f}/s over {_s(minute.get('window_s'))}; backlog "
        f"{minute.get('lag_start')} → {minute.get('lag_end')} ({minute.get('lag_growth_per_s')}/s); "
        f"central {minute.get('central_cpu_percent', '-')} %, sim {minute.get('sim_cpu_percent', '-')} %",
        "meets goal" if minute.get("keeping_up") else "misses goal: the backlog grew",
    )


def _failover_rows(results: dict[str, Any]) -> list[Row]:
    """Two centrals on one PostgreSQL: the leader killed or frozen, and a rolling restart."""
    failover = results.get("failover", {})
    if failover.get("error"):
        return [_failed("failover", "a standby takes over; a rolling restart of the centrals", "-", failover)]
    out: list[Row] = []
    for key, how in (("leader_killed", "SIGKILL"), ("leader_frozen", "SIGSTOP")):
        case = failover.get(key)
        if not case:
            continue
        takeover, served = case.get("takeover_s", {}), case.get("served_s", {})
        label = f"leader {how}ed → the standby leads / a request accepted by it (median / max)"
        if case.get("error"):
            out.append(_failed("failover", label, "≤ 3 s", case))
            continue
        measured = (
            f"{_s(takeover.get('median'))} / {_s(takeover.get('max'))}; "
            f"{_s(served.get('median'))} / {_s(served.get('max'))}"
        )
        out.append(Row("failover", label, "≤ 3 s", measured, _at_most(takeover.get("max"), 3.0)))
        stepped = case.get("stepped_down_s", {})
        if stepped:
            out.append(
                Row(
                    "failover",
                    "the frozen leader thawed → it has stepped down by itself (median / max)",
                    "-",
                    f"{_s(stepped.get('median'))} / {_s(stepped.get('max'))}",
                    "reported",
                )
            )
    rolling = failover.get("rolling_restart")
    if rolling:
        bad = rolling.get("denied", 0) + rolling.get("unanswered", 0)
        out.append(
            Row(
                "failover",
                "rolling restart of both centrals: requests denied / unanswered of those asked",
                "0",
                f"{rolling.get('denied', 0)} / {rolling.get('unanswered', 0)} of "
                f"{rolling.get('accepted', 0) + bad} in {rolling.get('duration_s', 0):g} s",
                "meets goal" if bad == 0 else f"misses goal ({', '.join(rolling.get('denial_codes', []))})",
            )
        )
    return out


def _storage_rows(results: dict[str, Any]) -> list[Row]:
    """Central on PostgreSQL beside SQLite, and the bare commit rates each is measured against."""
    out: list[Row] = []
    storage = results.get("storage", {})
    if storage.get("error"):
        out.append(
            _failed("storage", "central on PostgreSQL; bare SQLite and PostgreSQL commits", "-", storage)
        )
        return out
    if not storage:
        return out
    sqlite_drain = results.get("throughput", {}).get("drain", {}).get("applied_per_s")
    pg_drain = storage.get("postgres_drain", {})
    label = "meter readings central applies per second at most: the same backlog, its store on PostgreSQL"
    if pg_drain.get("error"):
        out.append(_failed("storage", label, DRAIN_GOAL, pg_drain))
    else:
        pg_rate = pg_drain.get("applied_per_s")
        verdict = _at_least(pg_rate, DRAIN_GOAL_PER_S)
        if pg_rate and sqlite_drain:
            # Sections run alone (`--only`) keep their own run's machine and date beside them.
            same = results.get("storage_run") == results.get("throughput_run")
            when = "this run" if same else "in the throughput section's own run"
            verdict += f"; {pg_rate / sqlite_drain:.0%} of SQLite's {_rate(sqlite_drain)} {when}"
        out.append(Row("storage", label, DRAIN_GOAL, _drain_measured(pg_drain), verdict))
    sqlite = storage.get("sqlite_commit", {})
    label = "bare SQLite commit, one small row per transaction (WAL): synchronous=FULL / NORMAL"
    if sqlite.get("error"):
        out.append(_failed("storage", label, "-", sqlite))
    elif sqlite:
        full = sqlite.get("full", {}).get("commits_per_s")
        normal = sqlite.get("normal", {}).get("commits_per_s")
        verdict = "-"
        if full and normal:
            verdict = f"an fsync per commit costs {normal / full:.1f}x; central's SQLite figure is with FULL"
            if sqlite_drain:
                verdict += f" ({sqlite_drain / full:.1f} readings per bare FULL commit: it batches)"
        out.append(
            Row(
                "storage",
                label,
                "-",
                f"{_rate(full)} / {_rate(normal)} (on {sqlite.get('filesystem') or '?'})",
                verdict,
            )
        )
    pg = storage.get("postgres_commit", {})
    label = "bare PostgreSQL commit through asyncpg, one small row per transaction"
    if pg.get("error"):
        out.append(_failed("storage", label, "the reference for central on PostgreSQL", pg))
    elif pg:
        rate = pg.get("commits_per_s")
        settings = pg.get("settings", {})
        notes = []
        if rate and pg_drain.get("applied_per_s"):
            notes.append(
                f"central on PostgreSQL: {pg_drain['applied_per_s'] / rate:.1f} readings per bare commit"
            )
        full = sqlite.get("full", {}).get("commits_per_s")
        if rate and full:
            notes.append(f"SQLite FULL commits {full / rate:.1f}x as fast")
        verdict = "; ".join(notes) or "-"
        out.append(
            Row(
                "storage",
                label,
                "the reference for central on PostgreSQL",
                f"{_rate(rate)} (PostgreSQL {str(settings.get('server_version', '?')).split()[0]}, "
                f"fsync {settings.get('fsync', '?')}, "
                f"synchronous_commit {settings.get('synchronous_commit', '?')})",
                verdict,
            )
        )
    return out


def _scale_rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    scale = results.get("scale", {})
    if scale.get("error"):
        out.append(
            _failed("scale", "CPs join at once: all ON at central", "1,000 in ≤ 10 s, zero errors", scale)
        )
        return out
    for run in scale.get("runs", []):
        goal = "≤ 10 s, zero errors" if run["cps"] == 1000 else "zero errors"
        seconds = run.get("registration_s")
        verdict = "reported"
        if run["cps"] == 1000:
            verdict = (
                _at_most(seconds, 10.0)
                if run.get("errors") == 0
                else f"misses goal: {run.get('errors')} errors"
            )
        elif run.get("errors"):
            verdict = f"{run['errors']} errors"
        if run.get("errors") and run.get("sim_saturated"):
            verdict += (
                f": the simulator saturated ({run.get('sim_cpu_percent')} % CPU, "
                f"{run.get('started')} of {run['cps']:,} CPs started), not central"
            )
        out.append(
            Row(
                "scale",
                f"{run['cps']:,} CPs join at once: all ON at central",
                goal,
                _registered(run)
                + f", errors {run.get('errors')}, central {run.get('central_cpu_percent', '-')} % CPU, "
                f"sim {run.get('sim_cpu_percent', '-')} % CPU{_sim_processes(run)}",
                verdict,
            )
        )
    if scale.get("runs"):
        biggest = scale["runs"][-1]
        out.append(
            Row(
                "scale",
                "simulator memory per simulated CP (engine + monitor)",
                "-",
                f"{(scale.get('marginal_rss_per_cp_mb') or 0) * 1024:.0f} KB marginal; "
                f"{(biggest.get('rss_per_cp_mb') or 0) * 1024:.0f} KB each at "
                f"{biggest.get('started') or biggest['cps']:,} (RSS / CPs)",
                "reported",
            )
        )
    return out


def _sim_processes(run: dict[str, Any]) -> str:
    """How many processes the simulator's CPU figure is the sum of (older results: one)."""
    n = run.get("sim_processes", 1)
    busiest = run.get("sim_busiest_process_percent")
    if n == 1:
        return ""
    return f" in {n} processes" + (f" (busiest {busiest} %)" if busiest is not None else "")


def _heartbeat_rows(results: dict[str, Any]) -> list[Row]:
    section = results.get("heartbeats")
    if section is None:
        return []
    goal = f"≤ {section.get('goal_us', 30):g} µs"
    if section.get("error"):
        return [_failed("heartbeats", "central's CPU per heartbeat", goal, section)]
    out: list[Row] = []
    for run in section.get("runs", []):
        metric = f"central's CPU per heartbeat, {run['cps']:,} monitors, {run['loop']}"
        if run.get("error"):
            out.append(_failed("heartbeats", metric, goal, run))
            continue
        us, goal_us = run.get("us_per_heartbeat"), section.get("goal_us", 30)
        on = run.get("on_at_start")
        if us is None:
            verdict = "not measured"
        elif on is not None and on < run["cps"]:
            # Central's CPU then went to monitors registering and reconnecting, not to heartbeats.
            verdict = f"no figure: {on:,} of {run['cps']:,} ON, the fleet was not carried"
        elif us <= goal_us:
            verdict = "meets goal"
        else:
            verdict = f"misses goal ({us / goal_us:.1f}x)"
        estimated = " (estimated count)" if run.get("heartbeats_estimated") else ""
        out.append(
            Row(
                "heartbeats",
                metric,
                goal,
                f"{us} µs ({run.get('us_per_heartbeat_gross')} with idle, of which kernel "
                f"{run.get('us_per_heartbeat_kernel')}) at "
                f"{run.get('heartbeats_per_s', 0):,.0f}/s{estimated}: "
                f"central {run.get('central_cpu_percent')} % "
                f"(idle {run.get('central_idle_cpu_percent')} %); "
                f"simulator {run.get('sim_cpu_percent')} %{_sim_processes(run)} "
                f"(its monitors and engines: {run.get('sim_us_per_heartbeat')} µs per CP-second); "
                f"central's memory {_mb(run.get('central_rss_mb'))}; "
                f"ON at the window's start {run.get('on_at_start')}, at its end {run.get('on_at_end')} "
                f"of {run['cps']:,}",
                verdict,
            )
        )
        if run["cps"] >= 10_000:
            out.append(_fleet_carried(run))
        out += _profile_rows(run, "heartbeats", "after the window")
    return out


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MB"


def _profile_rows(run: dict[str, Any], section: str, when: str) -> list[Row]:
    """What a run's py-spy profiles say: where central's and the simulator's time went."""
    parts = []
    for who, label in (("central", "central"), ("sim", "the busiest simulator process")):
        p = run.get(f"profile_{who}")
        if not p:
            continue
        if p.get("error"):
            parts.append(f"{label}: not profiled ({p['error']})")
            continue
        parts.append(
            f"{label} ({p.get('samples', 0)} busy samples): "
            + ", ".join(f"{name} {pct} %" for name, pct in p.get("by_area_percent", [])[:4])
            + "; most self time: "
            + ", ".join(f"{name} {pct} %" for name, pct in p.get("self_percent", [])[:3])
        )
    if not parts:
        return []
    return [
        Row(
            section,
            f"… where the time goes at {run['cps']:,} CPs (py-spy, {when})",
            "-",
            "; ".join(parts),
            "the profile behind the figure",
        )
    ]


def _fleet_carried(run: dict[str, Any]) -> Row:
    """The goal's 10,000: every CP ON through the window, or how many the machine carried."""
    size, on = run["cps"], run.get("on_at_end") or 0
    carried = on == size and run.get("on_at_start") == size
    return Row(
        "heartbeats",
        f"{size:,} CPs registered and heartbeating every second",
        "all ON, none dropped",
        f"ON {run.get('on_at_start')} at the window's start, {on} at its end; the simulator at "
        f"{run.get('sim_cpu_percent')} % of a core{_sim_processes(run)}, central at "
        f"{run.get('central_cpu_percent')} %",
        "meets goal" if carried else f"misses goal ({on / size:.0%} ON)",
    )


def _fleet_rows(results: dict[str, Any]) -> list[Row]:
    """The goal's whole load (heartbeats, a fifth supplying, drivers requesting), scaled to each size."""
    section = results.get("fleet")
    if section is None:
        return []
    metric = "the whole load for a minute: CPs heartbeating, a fifth supplying, 5 requests/s per 1,000 CPs"
    goal = "0 errors, none dropped, accepted p99 ≤ 100 ms"
    if section.get("error"):
        return [_failed("fleet", metric, goal, section)]
    out = []
    for run in section.get("runs", []):
        label = f"{metric}: {run['cps']:,} CPs"
        if run.get("error"):
            out.append(_failed("fleet", label, goal, run))
            continue
        requests = run.get("requests", {})
        kept = fleet.carried(run)
        out.append(
            Row(
                "fleet",
                label,
                goal,
                f"registered {run.get('registered')}; supplying at most {run.get('supplying_max')}; "
                f"requests {requests.get('sent')} sent, {requests.get('accepted')} accepted, "
                f"accepted p50 / p99 {_ms(run.get('accepted_p50_s'))} / {_ms(run.get('accepted_p99_s'))}; "
                f"{_decided(run.get('decision_s'))}"
                f"errors {run.get('errors')}; dropped for a late heartbeat {run.get('dropped')}; "
                f"central {run.get('central_cpu_percent')} %, simulator {run.get('sim_cpu_percent')} % "
                f"in {run.get('sim_processes')} processes (its loop lag p99 "
                f"{_ms(run.get('sim_loop_lag_p99_s'))})",
                "meets goal" if kept else "misses goal",
            )
        )
        out += _profile_rows(run, "fleet", "halfway through the load")
    return out


def _decided(decision: dict[str, Any] | None) -> str:
    """Of request → accepted, the part up to central's decision (its histogram's buckets)."""
    if not decision or not decision.get("count"):
        return ""
    return (
        f"of which broker → central's decision p50 ≤ {_ms(decision.get('p50_at_most'))}, "
        f"p99 ≤ {_ms(decision.get('p99_at_most'))} (mean {_ms(decision.get('mean'))}); "
    )


def _reads_rows(results: dict[str, Any]) -> list[Row]:
    out = _reads(results.get("reads"), "")
    out += _reads(results.get("reads_baseline"), f" (baseline {results.get('baseline', '?')})")
    return out


def _reads(r: dict[str, Any] | None, label: str) -> list[Row]:
    if r is None:
        return []
    metric = "GET /cp for 1,000 CPs, 50 clients polling: answers/s, p50 / p99" + label
    goal = "≥ 1,000/s, p99 ≤ 50 ms, ≤ 1 ms of central's CPU each"
    if r.get("error"):
        return [_failed("reads", metric, goal, r)]
    poll, quiet, loaded = r["poll"], r["quiet"], r["loaded"]
    lat = poll.get("latency_s", {})
    rate, p99, cpu = poll.get("answers_per_s"), lat.get("p99"), r.get("central_ms_per_answer")
    misses = []
    if rate is None or rate < 1000:
        misses.append("answers/s")
    if p99 is None or p99 > 0.050:
        misses.append("p99")
    if cpu is None or cpu > 1.0:
        misses.append("CPU per answer")
    verdict = "meets goal" if not misses else f"misses goal: {', '.join(misses)}"
    q, w = quiet.get("accepted_s", {}), loaded.get("accepted_s", {})
    return [
        Row(
            "reads",
            metric.replace("1,000", f"{r['cps']:,}").replace("50", str(r["clients"]), 1),
            goal,
            f"{rate or 0:,.0f}/s, {_ms(lat.get('p50'))} / {_ms(p99)}, {cpu} ms of central each "
            f"({poll.get('body_bytes', 0) / 1024:.0f} KB; "
            f"the pollers' own CPU {poll.get('poller_cpu_percent')} %)",
            verdict,
        ),
        Row(
            "reads",
            "… meanwhile: request → accepted p50 / p99; heartbeats/s; CPs ON" + label,
            "unaffected",
            f"{_ms(w.get('p50'))} / {_ms(w.get('p99'))} (no dashboard: {_ms(q.get('p50'))} / "
            f"{_ms(q.get('p99'))}); {loaded.get('heartbeats_per_s')}/s (no dashboard: "
            f"{quiet.get('heartbeats_per_s')}/s); {loaded.get('cps_on')} of {r['cps']:,}",
            "reported",
        ),
    ]


def _p50_p99(figure: dict[str, Any]) -> str:
    return f"{_ms(figure.get('p50'))} / {_ms(figure.get('p99'))} of {figure.get('count', 0)}"


def _gateway_rows(results: dict[str, Any]) -> list[Row]:
    """OCPP chargers through one gateway process: held, answered per second, latency, a storm."""
    gateway = results.get("gateway", {})
    if gateway.get("error"):
        return [_failed("gateway", "OCPP chargers on one gateway process", "-", gateway)]
    if not gateway:
        return []
    count = gateway.get("chargers", 0)
    storm = gateway.get("storm_errors", {})
    storm_errors = sum(storm.values())
    billing = gateway.get("billing", {})
    exact = billing.get("billed_as_metered")
    return [
        Row(
            "gateway",
            "OCPP chargers connected to one gateway process, all ON at central after joining at once",
            "-",
            f"{gateway.get('connected', 0):,} of {count:,} in {_s(gateway.get('join_all_on_s'))}; "
            f"gateway {gateway.get('gateway_rss_mb') or 0:.0f} MB, "
            f"{gateway.get('gateway_idle_cpu_percent', '-')} % of a core idle",
            f"errors {sum(gateway.get('join_errors', {}).values())}",
        ),
        Row(
            "gateway",
            f"transaction messages answered per second ({gateway.get('metering_chargers')} chargers "
            "metering as fast as answered, each answered after Kafka acknowledged)",
            "-",
            f"{_rate(gateway.get('transaction_messages_per_s'))}; "
            f"gateway {gateway.get('throughput_gateway_cpu_percent', '-')} % of a core",
            f"{exact} of {billing.get('sessions')} sessions billed as metered to the Wh",
        ),
        Row(
            "gateway",
            "call → result p50 / p99: BootNotification, low load / while all join",
            "-",
            f"{_p50_p99(gateway.get('low_load_boot_s', {}))}; {_p50_p99(gateway.get('join_boot_s', {}))}",
            "reported",
        ),
        Row(
            "gateway",
            "call → result p50 / p99: MeterValues / TransactionEvent, low load / under the throughput load",
            "-",
            f"{_p50_p99(gateway.get('low_load_meter_s', {}))}; {_p50_p99(gateway.get('loaded_meter_s', {}))}",
            "reported",
        ),
        Row(
            "gateway",
            f"reconnect storm: the gateway SIGKILLed with {count:,} chargers connected and restarted → "
            "all ON at central; errors",
            "zero errors",
            f"{_s(gateway.get('storm_all_on_s'))}; errors {storm_errors}"
            + (f" ({', '.join(f'{k} {v}' for k, v in storm.items() if v)})" if storm_errors else ""),
            "meets goal" if storm_errors == 0 and "storm_all_on_s" in gateway else "misses goal",
        ),
    ]


def _security_rows(results: dict[str, Any]) -> list[Row]:
    """Central plain and with everything secure (TLS, SCRAM, signatures, enrolled drivers), same run."""
    section = results.get("security")
    if section is None:
        return []
    label = "central plain / all secure (TLS, SCRAM, signed events, enrolled drivers)"
    if section.get("error") and not section.get("trials"):
        return [_failed("security", label + ": readings/s, request → accepted", "-", section)]
    rows, ratio = section.get("trials", []), section.get("ratio", {})
    stopped = f" (stopped: {section['error']})" if section.get("error") else ""

    def median(key: str) -> float | None:
        return section.get(key, {}).get("median")

    def times(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    plain_us, secure_us = median("plain_central_us_per_reading"), median("secure_central_us_per_reading")
    cpu = f"; central {plain_us} / {secure_us} µs of CPU per reading" if plain_us and secure_us else ""
    plain, secure = section.get("plain_accepted_s", {}), section.get("secure_accepted_s", {})
    return [
        Row(
            "security",
            f"{label}: readings/s central applies working off a backlog alone (median of {len(rows)})",
            "-",
            f"{_rate(median('plain_readings_per_s'))} / {_rate(median('secure_readings_per_s'))}{cpu}"
            + stopped,
            f"secure = {times(ratio.get('readings_per_s'))} plain (median of the trials' pairs)",
        ),
        Row(
            "security",
            f"{label}: request → accepted, low load, p50 / p99 (all {plain.get('count', 0)} / "
            f"{secure.get('count', 0)} samples)",
            "-",
            f"{_ms(plain.get('p50'))} / {_ms(plain.get('p99'))}; {_ms(secure.get('p50'))} / "
            f"{_ms(secure.get('p99'))}",
            f"secure = {times(ratio.get('accepted_p50'))} plain at p50, {times(ratio.get('accepted_p99'))} "
            "at p99",
        ),
    ]


def _registered(run: dict[str, Any]) -> str:
    seconds = run.get("registration_s")
    if seconds is None:
        return f"{run.get('registered')} of {run['cps']:,} ever ON"
    return f"{run.get('registered')} in {_s(seconds)} ({run.get('registrations_per_s') or 0:.0f} CPs/s)"


def table(results: dict[str, Any]) -> Table:
    machine = results.get("machine", {})
    out = Table(
        title=f"evcharge bench — {machine.get('cpus')} x {machine.get('cpu_model')}, "
        f"Python {machine.get('python')}, {machine.get('date')}",
        title_justify="left",
    )
    for column in ("", "measure", "goal", "measured", "vs goal / guide"):
        out.add_column(column, overflow="fold")
    previous = None
    for row in rows(results):
        out.add_row(
            row.section if row.section != previous else "", row.metric, row.goal, row.measured, row.verdict
        )
        previous = row.section
    return out


def markdown(results: dict[str, Any]) -> str:
    """The same rows as `table`, as the README's Markdown table."""
    machine = results.get("machine", {})
    lines = [
        f"{machine.get('cpus')} x {machine.get('cpu_model')}, Python {machine.get('python')}, "
        f"Kafka {results.get('kafka_version')}, {results.get('mode')} run of {machine.get('date')}, "
        f"commit {machine.get('commit')}:",
        "",
        "| | measure | goal | measured | vs goal / guide |",
        "|---|---|---|---|---|",
    ]
    previous = None
    for row in rows(results):
        section = row.section if row.section != previous else ""
        cells = [section, row.metric, row.goal, row.measured, row.verdict]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        previous = row.section
    return "\n".join(lines)


if __name__ == "__main__":  # python -m bench.report [results.json]: the table for the README
    import json
    import sys
    from pathlib import Path

    print(markdown(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json").read_text())))
