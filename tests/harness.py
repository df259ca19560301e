"""A whole evcharge system of real processes for tests: central, CPs (engine + monitor), drivers.

Every process is a real `evcharge` subcommand with its own log file, killed
and restarted with real signals. Central is observed only through what a user
sees: its HTTP API, the drivers' screens, the engines' durable records.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evcharge.supervisor import Child, wait_until
from tests.kafka_fixture import free_ports

TICKET = re.compile(
    r"ticket.*? cp=(?P<cp>\S+) session=(?P<session>[0-9a-f]+) kwh=(?P<kwh>[\d.]+) "
    r"eur=(?P<eur>[\d.]+) ended=(?P<reason>\w+)"
)
# Lines that say a process failed in a way nobody planned for.
UNEXPECTED = re.compile(r"Traceback \(most recent call last\)|\bERROR\b|\bCRITICAL\b")


@dataclass
class ChargePoint:
    cp_id: str
    engine: Child
    monitor: Child
    engine_port: int

    def engine_sessions(self, state_dir: Path) -> dict[str, dict[str, Any]]:
        """The engine's own durable record of its sessions (what its meter said)."""
        path = state_dir / f"engine-{self.cp_id}.sqlite"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            db.row_factory = sqlite3.Row
            return {r["session_id"]: dict(r) for r in db.execute("SELECT * FROM sessions")}


@dataclass
class Ticket:
    cp_id: str
    session_id: str
    kwh: float
    eur: float
    reason: str


@dataclass
class System:
    root: Path
    kafka: str
    max_session_s: float = 4.0
    central_args: list[str] = field(default_factory=list)
    monitor_args: list[str] = field(default_factory=list)
    cps: dict[str, ChargePoint] = field(default_factory=dict)
    drivers: dict[str, Child] = field(default_factory=dict)
    central: Child | None = None

    def __post_init__(self) -> None:
        self.state_dir = self.root / "state"
        self.logs = self.root / "logs"
        self.tcp_port, self.http_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.http_port}"
        # Tests share one broker: ids unique to this system keep one test's
        # committed offsets and commands away from the next test's processes.
        self.tag = uuid.uuid4().hex[:6]

    def ident(self, name: str) -> str:
        return f"{name}-{self.tag}"

    # ------------------------------------------------------------ start

    def start_central(self) -> Child:
        self.central = self.central_child().start()
        wait_until(lambda: self.get("/health")["status"] == "ok", 30, "central's HTTP API")
        return self.central

    def central_child(self) -> Child:
        """Central as this system runs it, not started yet."""
        return Child(
            "central",
            [
                "central",
                "--no-panel",
                "--kafka",
                self.kafka,
                "--db",
                str(self.state_dir / "central.sqlite"),
                "--tcp-port",
                str(self.tcp_port),
                "--http-port",
                str(self.http_port),
                *self.central_args,
            ],
            self.logs / "central.log",
        )

    def add_cp(
        self, cp_id: str, *, location: str = "Test street", price: float = 0.30, wait: bool = True
    ) -> ChargePoint:
        (port,) = free_ports(1)
        engine = Child(
            f"engine {cp_id}",
            [
                "engine",
                "--cp-id",
                cp_id,
                "--port",
                str(port),
                "--kafka",
                self.kafka,
                "--state-dir",
                str(self.state_dir),
                "--max-session",
                str(self.max_session_s),
                "--no-keys",
            ],
            self.logs / f"engine-{cp_id}.log",
        ).start()
        monitor = Child(
            f"monitor {cp_id}",
            [
                "monitor",
                "--cp-id",
                cp_id,
                "--engine",
                f"127.0.0.1:{port}",
                "--central",
                f"127.0.0.1:{self.tcp_port}",
                "--location",
                location,
                "--price",
                str(price),
                "--state-dir",
                str(self.state_dir),
                *self.monitor_args,
            ],
            self.logs / f"monitor-{cp_id}.log",
        ).start()
        cp = self.cps[cp_id] = ChargePoint(cp_id, engine, monitor, port)
        if wait:
            self.wait_status(cp_id, "ON", 30)
            self.wait_engine_ready(cp)
        return cp

    def wait_engine_ready(self, cp: ChargePoint, timeout_s: float = 30) -> None:
        """An engine reads its commands once it has taken its Kafka partition."""
        wait_until(
            lambda: "engine ready" in cp.engine.output(),
            timeout_s,
            f"{cp.cp_id}'s engine to take its Kafka partition",
        )

    def start_driver(self, driver_id: str, requests: list[str], *, interval_s: float = 0.5) -> Child:
        path = self.root / f"{driver_id}.txt"
        path.write_text("\n".join(requests) + "\n")
        child = self.drivers.get(driver_id)
        if child is None:
            child = self.drivers[driver_id] = Child(
                driver_id,
                [
                    "driver",
                    "--id",
                    driver_id,
                    "--requests",
                    str(path),
                    "--kafka",
                    self.kafka,
                    "--state-dir",
                    str(self.state_dir),
                    "--interval",
                    str(interval_s),
                ],
                self.logs / f"{driver_id}.log",
            )
        return child.start()

    def stop_all(self) -> None:
        for child in [
            *self.drivers.values(),
            *(c.monitor for c in self.cps.values()),
            *(c.engine for c in self.cps.values()),
            *([self.central] if self.central else []),
        ]:
            child.stop()

    # ---------------------------------------------------------- observe

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return json.load(response)

    def post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        request = urllib.request.Request(
            self.url + path, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def status(self, cp_id: str) -> str | None:
        try:
            return self.get(f"/cp/{cp_id}")["status"]
        except urllib.error.HTTPError:
            return None

    def wait_status(self, cp_id: str, status: str, timeout_s: float) -> float:
        """Seconds until central shows `status` for `cp_id` (AssertionError after the timeout)."""
        started = time.monotonic()
        wait_until(lambda: self.status(cp_id) == status, timeout_s, f"{cp_id} to show {status} at central")
        return time.monotonic() - started

    def sessions(self) -> list[dict[str, Any]]:
        return self.get("/sessions?limit=1000")["sessions"]

    def tickets(self, driver_id: str) -> list[Ticket]:
        return [
            Ticket(m["cp"], m["session"], float(m["kwh"]), float(m["eur"]), m["reason"])
            for m in TICKET.finditer(self.drivers[driver_id].output())
        ]

    def wait_driver_done(self, driver_id: str, timeout_s: float) -> None:
        child = self.drivers[driver_id]
        wait_until(lambda: not child.alive, timeout_s, f"{driver_id} to finish its requests")
        assert child.returncode == 0, f"{driver_id} exited with {child.returncode}; see {child.log_path}"

    # -------------------------------------------------------- invariants

    def assert_invariants(self) -> None:
        """Every session ended, each with exactly one ticket on its driver's screen, and
        ticket = central's record = the engine's own record."""
        sessions = self.sessions()
        stuck = [s for s in sessions if s["state"] != "ended"]
        assert not stuck, f"sessions not ended: {stuck}"
        engine_records: dict[str, dict[str, Any]] = {}
        for cp in self.cps.values():
            engine_records.update(cp.engine_sessions(self.state_dir))
        for driver_id in self.drivers:
            tickets = self.tickets(driver_id)
            seen = [t.session_id for t in tickets]
            duplicates = {s for s in seen if seen.count(s) > 1}
            assert not duplicates, f"{driver_id} was shown these tickets twice: {duplicates}"
            by_session = {t.session_id: t for t in tickets}
            for session in (s for s in sessions if s["driver_id"] == driver_id):
                ticket = by_session.get(session["session_id"])
                assert ticket is not None, f"{driver_id} never saw the ticket of {session}"
                assert (ticket.kwh, ticket.eur) == (
                    round(session["kwh"], 5),
                    round(session["eur"], 4),
                ), f"ticket {ticket} differs from central's record {session}"
                engine = engine_records.get(session["session_id"])
                if engine is not None and engine["ended"] and engine["end_reason"] != "refused":
                    assert (engine["kwh"], engine["eur"]) == (session["kwh"], session["eur"]), (
                        f"engine's record {engine} differs from central's {session}"
                    )

    def unexpected_log_lines(self) -> dict[str, list[str]]:
        found = {}
        for log in self.logs.glob("*.log"):
            bad = [line for line in log.read_text(errors="replace").splitlines() if UNEXPECTED.search(line)]
            if bad:
                found[log.name] = bad[:10]
        return found
