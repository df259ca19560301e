"""Central's metrics from facts alone (no I/O), and the Grafana dashboard against the metrics that exist."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from evcharge.central import facts as f
from evcharge.central.ledger import Session, SessionState
from evcharge.central.metrics import Metrics
from evcharge.central.state import CentralState, CpRecord
from evcharge.protocol.messages import EndReason
from evcharge.runtime.outbox import OutboxStats

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"
SESSION = Session("s1", "r1", "CP-1", "alice", price=300_000, created_at=100.0)


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = asyncio.run(
        metrics.render(
            CentralState(cps={"CP-1": CpRecord("CP-1", "Here", 300_000, 22_000, False, 0.0)}),
            outbox=_outbox,
            lags=_lags,
            now=130.0,
            leader=False,
        )
    ).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _outbox() -> OutboxStats:
    return OutboxStats(rows=3, oldest_at=100.0)


async def _lags() -> dict[tuple[str, int], int]:
    return {("evcharge.cp.events", 2): 7}


def test_a_revised_ticket_is_billed_once_at_the_meters_figures() -> None:
    metrics = Metrics()
    closed = dataclasses.replace(
        SESSION, state=SessionState.ENDED, wh=1_000, micro_eur=300_000, end_reason=EndReason.ENGINE_FAILURE
    )
    revised = dataclasses.replace(closed, wh=1_200, micro_eur=360_000)
    metrics.observe([f.SessionClosed(closed, by_central=True)], CentralState())
    metrics.observe([f.TicketRevised(revised, before_wh=1_000, before_micro_eur=300_000)], CentralState())
    got = samples(metrics)
    assert got[("evcharge_billed_energy_wh_total", frozenset())] == 1_200
    assert got[("evcharge_billed_revenue_micro_eur_total", frozenset())] == 360_000
    assert got[("evcharge_sessions_ended_total", frozenset({("reason", "engine_failure")}))] == 1


def test_the_scrape_reads_the_gauges_afresh() -> None:
    got = samples(Metrics())
    assert got[("evcharge_charging_points", frozenset({("status", "DISCONNECTED")}))] == 1
    assert got[("evcharge_outbox_rows", frozenset())] == 3
    assert got[("evcharge_outbox_oldest_age_seconds", frozenset())] == 30.0
    lag = ("evcharge_kafka_consumer_lag", frozenset({("topic", "evcharge.cp.events"), ("partition", "2")}))
    assert got[lag] == 7
    assert got[("evcharge_central_leader", frozenset())] == 0


def test_every_metric_the_dashboard_graphs_is_one_central_exports() -> None:
    exported = set()
    for family in text_string_to_metric_families(samples_text()):
        exported |= {s.name for s in family.samples}
    graphed = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            graphed |= set(re.findall(r"evcharge_\w+", target["expr"]))
    central = {name for name in graphed if not name.startswith("evcharge_gateway_")}
    assert central and central <= exported, central - exported


def samples_text() -> str:
    metrics = Metrics()
    # One of each fact a labelled series needs before it shows.
    metrics.observe(
        [
            f.SessionClosed(dataclasses.replace(SESSION, end_reason=EndReason.COMPLETED), by_central=False),
            f.Authorised("alice", "CP-1", "s1", "r1", waited_s=0.01),
            f.Denied("bob", "CP-1", "r2", "busy", "CP-1 is busy", waited_s=0.02),
            f.DeadLettered("evcharge.cp.events", "not JSON"),
            f.RegistrationRefused("CP-1", "127.0.0.1", "duplicate_cp", "already connected"),
        ],
        CentralState(),
    )
    metrics.event_apply.observe(0.003)
    return asyncio.run(
        metrics.render(CentralState(), outbox=_outbox, lags=_lags, now=130.0, leader=True)
    ).decode()
