"""Central's Prometheus metrics at `GET /metrics`, named by Prometheus' conventions.

Counters move with the facts central's decisions produce (an observer like the
audit log); gauges are read from central's state, its store's outbox and its
Kafka inbox when Prometheus scrapes. Each central has a registry of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from evcharge.central import facts as f
from evcharge.central.state import CentralState
from evcharge.central.status import CpStatus
from evcharge.runtime.outbox import OutboxStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A `_created` series per counter doubles the scrape and says only when central started.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.charging_points = Gauge(
            "evcharge_charging_points", "CPs by the status central shows", ["status"], registry=r
        )
        self.monitors = Gauge("evcharge_monitors_connected", "Monitors connected to this central", registry=r)
        self.sessions_active = Gauge("evcharge_sessions_active", "Sessions in progress", registry=r)
        self.sessions_ended = Counter(
            "evcharge_sessions_ended", "Sessions ended, by how they ended", ["reason"], registry=r
        )
        self.energy = Counter(
            "evcharge_billed_energy_wh", "Energy billed on final tickets, in Wh", registry=r
        )
        # Micro-euros, not euros: a float counts whole micro-euros exactly, so the sum stays exact.
        self.revenue = Counter(
            "evcharge_billed_revenue_micro_eur", "Money billed on final tickets, in micro-euros", registry=r
        )
        self.requests = Counter(
            "evcharge_requests",
            "Charge requests decided, by outcome and denial code",
            ["outcome", "code"],
            registry=r,
        )
        self.event_apply = Histogram(
            "evcharge_event_apply_seconds",
            "Time to apply one batch of CP events (decide, commit, swap)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_decision = Histogram(
            "evcharge_request_decision_seconds",
            "Time from a request's arrival at the broker to central's decision on it",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "evcharge_kafka_consumer_lag",
            "Records the broker holds that central has not read",
            ["topic", "partition"],
            registry=r,
        )
        self.outbox_rows = Gauge(
            "evcharge_outbox_rows", "Messages decided but not yet acknowledged by Kafka", registry=r
        )
        self.outbox_age = Gauge(
            "evcharge_outbox_oldest_age_seconds",
            "Age of the oldest message waiting in the outbox",
            registry=r,
        )
        self.dead_letters = Counter(
            "evcharge_dead_letters", "Records set aside, by why", ["reason"], registry=r
        )
        self.refused = Counter(
            "evcharge_registrations_refused", "Registrations refused, by code", ["code"], registry=r
        )
        self.leader = Gauge(
            "evcharge_central_leader", "1 while this central decides, 0 as a standby", registry=r
        )
        self.leader.set(1)

    def observe(self, facts: Sequence[f.Fact], state: CentralState) -> None:
        for fact in facts:
            match fact:
                case f.SessionClosed(session=s):
                    self.sessions_ended.labels(s.end_reason.value if s.end_reason else "unknown").inc()
                    self.energy.inc(s.wh)
                    self.revenue.inc(s.micro_eur)
                case f.TicketRevised(session=s, before_wh=wh, before_micro_eur=micro):
                    # The final ticket replaces the first: bill the difference.
                    self.energy.inc(max(0, s.wh - wh))
                    self.revenue.inc(max(0, s.micro_eur - micro))
                case f.Authorised(waited_s=waited):
                    self.requests.labels("accepted", "").inc()
                    self.request_decision.observe(waited)
                case f.Denied(code=code, waited_s=waited):
                    self.requests.labels("denied", code).inc()
                    self.request_decision.observe(waited)
                case f.DeadLettered(code=code):
                    self.dead_letters.labels(code).inc()
                case f.RegistrationRefused(code=code):
                    self.refused.labels(code).inc()

    async def render(
        self,
        state: CentralState,
        outbox: Callable[[], Awaitable[OutboxStats]],
        lags: Callable[[], Awaitable[dict[tuple[str, int], int]]],
        now: float,
        leader: bool,
    ) -> bytes:
        """The scrape: the gauges read afresh, then every metric in the text format."""
        counts = {status: 0 for status in CpStatus}
        for cp_id in state.cps:
            status = state.status(cp_id)
            if status is not None:
                counts[status] += 1
        for status, count in counts.items():
            self.charging_points.labels(status.value).set(count)
        self.monitors.set(len(state.links))
        self.sessions_active.set(len(state.sessions))
        stats = await outbox()
        self.outbox_rows.set(stats.rows)
        self.outbox_age.set(max(0.0, now - stats.oldest_at) if stats.oldest_at is not None else 0.0)
        for (topic, partition), lag in (await lags()).items():
            self.lag.labels(topic, str(partition)).set(lag)
        self.leader.set(1 if leader else 0)
        return generate_latest(self.registry)
