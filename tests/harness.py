"""The test layer over `evcharge.devtools.system`: waits that fail a test, and the judgement of a run.

`audit()` judges a run from three independent sources (what each driver showed,
central's records, each engine's records) and returns the figures the chaos
report prints; `assert_invariants()` fails with every finding named.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from evcharge.devtools.system import ChargePoint, Identity, LocalSystem, Ticket, wait_for

__all__ = ["Audit", "ChargePoint", "Identity", "System", "Ticket", "scrape", "value", "wait_until"]

# Lines that say a process failed in a way nobody planned for.
UNEXPECTED = re.compile(r"Traceback \(most recent call last\)|\bERROR\b|\bCRITICAL\b")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(system: LocalSystem) -> Samples:
    """Central's `GET /metrics`, parsed by Prometheus' own parser: {(name, labels): value}."""
    with urllib.request.urlopen(system.url + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """`wait_for`, failing the test (AssertionError) when the time is up."""
    try:
        return wait_for(predicate, timeout_s, what, interval_s)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


@dataclass
class Audit:
    """One run judged from what the drivers showed, central's records and the engines' records."""

    sessions: int = 0  # sessions central knows for this system's drivers
    charged: int = 0  # of which some energy was delivered
    tickets_lost: int = 0
    duplicates: int = 0
    mismatched: int = 0
    unanswered: int = 0
    stuck: int = 0
    findings: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "findings"}


@dataclass
class System(LocalSystem):
    def assert_only_restarted(self, before: dict[str, Identity | None], restarted: set[str]) -> None:
        """Those named were restarted (by us: a new instance, our own child) and the rest were not.

        Asked of each process over its own interface: a process that died and stayed
        dead has no identity, one restarted by something else has a pid we did not start.
        """
        after = self.identities()
        ours = {p.name: p.pid for p in self._processes()}
        for name, was in before.items():
            now = after.get(name)
            assert now is not None, f"{name} does not answer: it died and was not brought back"
            assert now.pid == ours.get(name), (
                f"{name} runs as pid {now.pid}, not the process this test started"
            )
            if name in restarted:
                assert was is None or now.instance != was.instance, f"{name} should have been restarted"
            else:
                assert now == was, f"{name} was restarted ({was} → {now}) but did not fail"

    def audit(self) -> Audit:
        """The run, judged from what each driver showed, central's records and each engine's records."""
        audit = Audit()
        central = {s["session_id"]: s for s in self.sessions() if s["driver_id"] in self.drivers}
        engines: dict[str, dict[str, Any]] = {}
        for cp in self.cps.values():
            engines.update(cp.engine_sessions(self.state_dir))
        audit.sessions = len(central)
        audit.charged = sum(1 for s in central.values() if s["wh"] > 0)
        for session in central.values():
            if session["state"] != "ended":
                audit.stuck += 1
                audit.findings.append(f"session {session['session_id']} never ended: {session}")
        for driver_id in self.drivers:
            events = self.events(driver_id)
            audit.unanswered += sum(1 for e in events if e["event"] == "no_answer")
            audit.duplicates += _duplicates(events, audit.findings, driver_id)
            final = self.final_tickets(driver_id)
            for session in (s for s in central.values() if s["driver_id"] == driver_id):
                ticket = final.get(session["session_id"])
                if ticket is None:
                    audit.tickets_lost += 1
                    audit.findings.append(f"{driver_id} never saw the ticket of {session}")
                    continue
                engine = engines.get(session["session_id"])
                figures = {
                    "ticket": (ticket.wh, ticket.micro_eur),
                    "central": (session["wh"], session["micro_eur"]),
                }
                if engine is not None and engine["ended"] and engine["end_reason"] != "refused":
                    figures["engine"] = (engine["wh"], engine["micro_eur"])
                if len(set(figures.values())) > 1:
                    audit.mismatched += 1
                    audit.findings.append(f"session {session['session_id']}: figures differ {figures}")
        for session_id, engine in engines.items():
            if engine["end_reason"] == "refused" or engine["driver_id"] not in self.drivers:
                continue
            if session_id not in central:
                audit.tickets_lost += 1
                audit.findings.append(
                    f"the engine metered session {session_id} that central never billed: {engine}"
                )
        return audit

    def assert_invariants(self) -> Audit:
        """Every session ended with exactly one final ticket on its driver's screen, and the ticket,
        central's record and the engine's own record agree to the Wh and the micro-euro."""
        audit = self.audit()
        assert not audit.findings, "\n".join(audit.findings)
        return audit

    def unexpected_log_lines(self) -> dict[str, list[str]]:
        found = {}
        for log in self.logs.glob("*.log"):
            bad = [line for line in log.read_text(errors="replace").splitlines() if UNEXPECTED.search(line)]
            if bad:
                found[log.name] = bad[:10]
        return found


def _duplicates(events: list[dict[str, Any]], findings: list[str], driver_id: str) -> int:
    """Tickets shown more than once.

    A ticket shown, then shown again in the next run of the driver, is allowed only
    when it was the last thing the earlier run showed: the driver died between
    showing it and writing that down, the one window where at-least-once shows.
    """
    runs: list[list[dict[str, Any]]] = []
    for event in events:
        if event["event"] == "ready" or not runs:
            runs.append([])
        runs[-1].append(event)
    seen: dict[tuple[str, int], tuple[int, bool]] = {}
    count = 0
    for number, run in enumerate(runs):
        last_ticket = max((i for i, e in enumerate(run) if e["event"] == "ticket"), default=None)
        for i, event in enumerate(run):
            if event["event"] != "ticket":
                continue
            key = (event["session_id"], event["revision"])
            if key in seen:
                earlier_run, was_last = seen[key]
                if not (earlier_run < number and was_last):
                    count += 1
                    findings.append(f"{driver_id} was shown the ticket {key} twice")
            seen[key] = (number, i == last_ticket and number < len(runs) - 1)
    return count
