"""A whole evcharge system of real processes on this machine: central, CPs (engine + monitor),
drivers, each a real `evcharge` subcommand with its own log, started, killed and restarted with
real signals; used by the tests and the benchmark.

The system is observed only through what its parts show of themselves: central's
HTTP API, each engine's health port and its own durable record, each driver's
event stream (`--events`), never log text.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evcharge.central.settings import CentralSettings
from evcharge.cp.settings import EngineSettings, MonitorSettings
from evcharge.devtools.commands import child
from evcharge.devtools.kafka_users import KafkaUsers
from evcharge.devtools.probes import engine_status
from evcharge.devtools.procs import running
from evcharge.devtools.supervisor import Child
from evcharge.driver.settings import DriverSettings
from evcharge.protocol.units import parse_price
from evcharge.runtime.ports import free_ports

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Place:
    """Where a role runs: the address it binds and is reached at, and the argv that puts it there
    (empty: this host; `ip netns exec NAME` for a host made of a network namespace)."""

    address: str = LOOPBACK
    prefix: tuple[str, ...] = ()


HERE = Place()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = predicate()
        except Exception as exc:  # the thing polled may not be up yet
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval_s)


@dataclass(frozen=True)
class Credentials:
    """A system with security on: central requires the tokens; with `tls_dir` (what `certs init`
    wrote) its ports and Kafka speak TLS, and with `kafka_users` every role is a SCRAM user."""

    join_token: str
    operator_token: str
    tls_dir: Path | None = None
    kafka_users: KafkaUsers | None = None

    @property
    def ca(self) -> Path | None:
        return self.tls_dir / "ca.pem" if self.tls_dir is not None else None

    def kafka(self, role: str) -> dict[str, Any]:
        """The settings that make `role` reach Kafka as itself."""
        tls = {"ca": self.ca} if self.ca is not None else {}
        if self.kafka_users is None:
            return tls
        return {**tls, "kafka_user": role, "kafka_password": self.kafka_users.password(role)}

    def http_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca is not None else None


def open_url(
    request: str | urllib.request.Request, timeout_s: float, tls: ssl.SSLContext | None = None
) -> Any:
    """urllib's urlopen, checking an https server's certificate against `tls` (our CA)."""
    return urllib.request.urlopen(request, timeout=timeout_s, context=tls)


@dataclass(frozen=True)
class Identity:
    """Who a process says it is, asked over its own interface."""

    instance: str
    pid: int


@dataclass
class ChargePoint:
    cp_id: str
    engine: Child
    monitor: Child
    engine_port: int
    state_dir: Path  # where the engine keeps its record
    address: str = LOOPBACK  # where its health port listens

    def identity(self) -> Identity | None:
        status = engine_status(self.address, self.engine_port, 1.0)
        return Identity(status.engine or "", status.pid) if status else None

    def ready(self) -> bool:
        return engine_status(self.address, self.engine_port, 0.5) is not None

    def engine_sessions(self, state_dir: Path | None = None) -> dict[str, dict[str, Any]]:
        """The engine's own durable record of its sessions (what its meter said)."""
        path = self.state_dir / f"engine-{self.cp_id}.sqlite"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            db.row_factory = sqlite3.Row
            return {r["session_id"]: dict(r) for r in db.execute("SELECT * FROM sessions")}

    def engine_outbox(self, state_dir: Path | None = None) -> int:
        path = self.state_dir / f"engine-{self.cp_id}.sqlite"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


@dataclass(frozen=True)
class Ticket:
    cp_id: str
    session_id: str
    wh: int
    micro_eur: int
    reason: str
    revision: int
    provisional: bool

    @property
    def kwh(self) -> float:
        return self.wh / 1000


@dataclass
class CentralNode:
    """One of several centrals sharing a PostgreSQL store: a leader or a standby."""

    name: str
    child: Child
    tcp_port: int
    http_port: int
    address: str
    tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}:{self.http_port}"

    def health(self) -> dict[str, Any] | None:
        try:
            with open_url(self.url + "/health", 2, self.tls) as response:
                answer: dict[str, Any] = json.load(response)
                return answer
        except (OSError, ValueError):
            return None

    def role(self) -> str | None:
        health = self.health()
        return health["role"] if health else None

    def leads(self) -> bool:
        return self.role() == "leader"


@dataclass
class LocalSystem:
    root: Path
    kafka: str
    store: str | None = None  # None: SQLite in the state dir
    max_session_s: float = 4.0
    central_overrides: dict[str, Any] = field(default_factory=dict)
    monitor_overrides: dict[str, Any] = field(default_factory=dict)
    cps: dict[str, ChargePoint] = field(default_factory=dict)
    drivers: dict[str, Child] = field(default_factory=dict)
    central: Child | None = None
    centrals: list[CentralNode] = field(default_factory=list)  # with start_centrals()
    # Where each kind of process runs: all on this host, or each on a host of its own.
    central_place: Place = HERE
    cp_place: Place = HERE
    driver_place: Place = HERE
    credentials: Credentials | None = None  # with `secure()`
    driver_tokens: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir = self.root / "state"
        self.logs = self.root / "logs"
        self.tcp_port, self.http_port = free_ports(2)
        self.url = f"http://{self.central_place.address}:{self.http_port}"
        # Tests share one broker: ids unique to this system keep one test's
        # committed offsets and commands away from the next test's processes.
        self.tag = uuid.uuid4().hex[:6]

    def ident(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def secure(self, credentials: Credentials) -> None:
        """Security on for every process started from now on (central first)."""
        self.credentials = credentials
        if credentials.tls_dir is not None:
            self.url = self.url.replace("http://", "https://", 1)

    @property
    def http_tls(self) -> ssl.SSLContext | None:
        return self.credentials.http_context() if self.credentials is not None else None

    def _secured(self, role: str) -> dict[str, Any]:
        c = self.credentials
        if c is None:
            return {}
        if role == "central":
            served = {}
            if c.tls_dir is not None:
                served = {"cert": c.tls_dir / "central.pem", "key": c.tls_dir / "central.key"}
            return {
                "require_auth": True,
                "require_proofs": True,
                "join_token": c.join_token,
                "operator_token": c.operator_token,
                **served,
                **c.kafka("central"),
            }
        if role == "monitor":
            return {"join_token": c.join_token, **({"ca": c.ca} if c.ca else {})}
        if role == "engine":
            return {"sign_events": True, **c.kafka("engine")}
        return c.kafka(role)

    def enrol(self, *driver_ids: str) -> None:
        """With security on, enrol these drivers now, while central is up to take it (a driver
        started later, with central down or unable to record, has its token already)."""
        if self.credentials is not None:
            for driver_id in driver_ids:
                self.enrol_driver(driver_id)

    def enrol_driver(self, driver_id: str) -> str:
        """The driver's token, from central (POST /drivers with the operator token), once per driver."""
        assert self.credentials is not None
        if driver_id not in self.driver_tokens:
            status, answer = self.post(
                "/drivers", {"driver_id": driver_id}, token=self.credentials.operator_token
            )
            assert status == 201, f"enrolling {driver_id}: {status} {answer}"
            self.driver_tokens[driver_id] = answer["token"]
        return self.driver_tokens[driver_id]

    # ------------------------------------------------------------ start

    def central_settings(self, place: Place | None = None, **overrides: Any) -> CentralSettings:
        at = place or self.central_place
        settings: dict[str, Any] = {
            "kafka": self.kafka,
            "store": self.store or str(self.state_dir / "central.sqlite"),
            "state_dir": self.state_dir,
            "host": at.address,
            # Said outright: what its peers are told to reach it at is the address it binds.
            "advertise": at.address,
            "tcp_port": self.tcp_port,
            "http_port": self.http_port,
            "panel": False,
            **self._secured("central"),
        }
        return CentralSettings(**{**settings, **self.central_overrides, **overrides})

    def central_child(
        self,
        env: dict[str, str] | None = None,
        *,
        name: str = "central",
        place: Place | None = None,
        **overrides: Any,
    ) -> Child:
        """Central as this system runs it (at `place`, default `central_place`), not started yet."""
        at = place or self.central_place
        return child(
            "central",
            self.central_settings(at, **overrides),
            self.logs / f"{name}.log",
            name=name,
            env=env,
            prefix=at.prefix,
        )

    def start_centrals(
        self, count: int, env: dict[str, str] | None = None, *, places: Sequence[Place] | None = None
    ) -> list[CentralNode]:
        """`count` centrals on this system's shared store (PostgreSQL), each on its own ports, the
        first started first (it leads); the CPs added afterwards know every one of them.

        `places`: where each one runs (one host each), default all at `central_place`.
        """
        if self.store is None or not self.store.startswith("postgresql"):
            raise ValueError("several centrals share a PostgreSQL store: set `store` first")
        at = list(places) if places is not None else [self.central_place] * count
        if len(at) != count:
            raise ValueError(f"{count} centrals need {count} places, got {len(at)}")
        ports = [(self.tcp_port, self.http_port)] + [tuple(free_ports(2)) for _ in range(count - 1)]
        for number, ((tcp_port, http_port), place) in enumerate(zip(ports, at, strict=True), start=1):
            name = f"central-{number}"
            process = self.central_child(env, name=name, place=place, tcp_port=tcp_port, http_port=http_port)
            node = CentralNode(name, process.start(), tcp_port, http_port, place.address, self.http_tls)
            self.centrals.append(node)
            wait_for(node.health, 30, f"{name}'s HTTP API")
            if number == 1 and count > 1:
                # Its API answers before it has taken the lease: the next one must find it taken.
                wait_for(node.leads, 30, f"{name} to lead")
        self.central = self.centrals[0].child
        self.monitor_overrides = {
            **self.monitor_overrides,
            "central": tuple((node.address, node.tcp_port) for node in self.centrals),
        }
        self.wait_leader(30)
        return self.centrals

    @property
    def central_urls(self) -> str:
        """Every central's HTTP API, comma-separated, as drivers take them (the leader's when alone)."""
        return ",".join(node.url for node in self.centrals) or self.url

    def wait_leader(self, timeout_s: float, *, not_: CentralNode | None = None) -> CentralNode:
        """The central that leads (other than `not_`); reads of the system go to it from now on."""

        def leading() -> CentralNode | None:
            return next((n for n in self.centrals if n is not not_ and n.role() == "leader"), None)

        node: CentralNode = wait_for(leading, timeout_s, "a central to lead", interval_s=0.02)
        self.url = node.url
        return node

    def start_central(self, env: dict[str, str] | None = None) -> Child:
        if self.central is not None:
            self.central.stop()  # a central started before (maybe dead): its log file closed
        self.central = self.central_child(env).start()
        wait_for(lambda: self.get("/health")["status"] == "ok", 30, "central's HTTP API")
        return self.central

    def engine_settings(self, cp_id: str, port: int, **overrides: Any) -> EngineSettings:
        return EngineSettings(
            **{
                "cp_id": cp_id,
                "host": self.cp_place.address,
                "port": port,
                "kafka": self.kafka,
                "state_dir": self.state_dir,
                "max_session_s": self.max_session_s,
                "keys": False,
                **self._secured("engine"),
                **overrides,
            }
        )

    def monitor_settings(self, cp_id: str, port: int, **overrides: Any) -> MonitorSettings:
        settings: dict[str, Any] = {
            "cp_id": cp_id,
            "engine": f"{self.cp_place.address}:{port}",
            "central": ((self.central_place.address, self.tcp_port),),
            "state_dir": self.state_dir,
            **self._secured("monitor"),
        }
        return MonitorSettings(**{**settings, **self.monitor_overrides, **overrides})

    def add_cp(
        self,
        cp_id: str,
        *,
        location: str = "Test street",
        price: str = "0.30",
        wait: bool = True,
        engine_env: dict[str, str] | None = None,
        **engine_overrides: Any,
    ) -> ChargePoint:
        (port,) = free_ports(1)
        settings = self.engine_settings(cp_id, port, **engine_overrides)
        # Both settings first: a bad one fails before any process is started.
        # One CP, one state dir: the monitor keeps there the key its engine signs with.
        monitor_settings = self.monitor_settings(
            cp_id, port, location=location, price=parse_price(price), state_dir=settings.state_dir
        )
        engine = child(
            "engine",
            settings,
            self.logs / f"engine-{cp_id}.log",
            name=f"engine {cp_id}",
            env=engine_env,
            prefix=self.cp_place.prefix,
        ).start()
        monitor = child(
            "monitor",
            monitor_settings,
            self.logs / f"monitor-{cp_id}.log",
            name=f"monitor {cp_id}",
            prefix=self.cp_place.prefix,
        ).start()
        cp = self.cps[cp_id] = ChargePoint(
            cp_id, engine, monitor, port, settings.state_dir, self.cp_place.address
        )
        if wait:
            self.wait_status(cp_id, "ON", 30)
            self.wait_engine_ready(cp)
        return cp

    def wait_engine_ready(self, cp: ChargePoint, timeout_s: float = 30) -> None:
        """An engine opens its health port once it has taken its Kafka partition."""
        wait_for(cp.ready, timeout_s, f"{cp.cp_id}'s engine to answer on its health port")

    def events_path(self, driver_id: str) -> Path:
        return self.logs / f"{driver_id}.events.jsonl"

    def start_driver(
        self,
        driver_id: str,
        requests: list[str],
        *,
        interval_s: float = 0.5,
        env: dict[str, str] | None = None,
        **overrides: Any,
    ) -> Child:
        path = self.root / f"{driver_id}.txt"
        path.write_text("\n".join(requests) + "\n")
        existing = self.drivers.get(driver_id)
        if existing is None or overrides or env:
            if self.credentials is not None and "token" not in overrides:
                overrides = {**overrides, "token": self.enrol_driver(driver_id)}
            overrides = {**self._secured("driver"), **overrides}
            settings = DriverSettings(
                driver_id=driver_id,
                requests=path,
                kafka=self.kafka,
                state_dir=self.state_dir,
                interval_s=interval_s,
                central_url=self.central_urls,
                events=self.events_path(driver_id),
                **overrides,
            )
            existing = self.drivers[driver_id] = child(
                "driver", settings, self.logs / f"{driver_id}.log", name=driver_id, env=env,
                prefix=self.driver_place.prefix,
            )  # fmt: skip
        return existing.start()

    def stop_all(self) -> None:
        for process in [
            *self.drivers.values(),
            *(c.monitor for c in self.cps.values()),
            *(c.engine for c in self.cps.values()),
            *([self.central] if self.central else []),
            *(node.child for node in self.centrals),
        ]:
            process.stop()

    # ---------------------------------------------------------- observe

    def get(self, path: str) -> Any:
        with open_url(self.url + path, 5, self.http_tls) as response:
            return json.load(response)

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with open_url(request, 5, self.http_tls) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def post(
        self, path: str, body: dict[str, Any] | None = None, token: str | None = None
    ) -> tuple[int, Any]:
        return self.request("POST", path, body, token)

    def ask_charge(self, driver_id: str, cp_id: str) -> tuple[int, Any]:
        """POST /request/charge for `driver_id`; with security on, as the operator, who may ask for
        any driver (even one not enrolled, or while central cannot record an enrolment)."""
        token = self.credentials.operator_token if self.credentials is not None else None
        return self.post("/request/charge", {"driver_id": driver_id, "cp_id": cp_id}, token=token)

    def status(self, cp_id: str) -> str | None:
        try:
            status: str | None = self.get(f"/cp/{cp_id}")["status"]
        except urllib.error.HTTPError:
            return None
        return status

    def wait_status(self, cp_id: str, status: str, timeout_s: float, since: float | None = None) -> float:
        """Seconds until central shows `status` for `cp_id`, counted from `since` (default: now)."""
        started = time.monotonic() if since is None else since
        wait_for(
            lambda: self.status(cp_id) == status,
            timeout_s,
            f"{cp_id} to show {status} at central",
            interval_s=0.01,
        )
        return time.monotonic() - started

    def sessions(self) -> list[dict[str, Any]]:
        sessions: list[dict[str, Any]] = self.get("/sessions?limit=1000")["sessions"]
        return sessions

    def events(self, driver_id: str) -> list[dict[str, Any]]:
        path = self.events_path(driver_id)
        if not path.exists():
            return []
        events = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                events.append(json.loads(line))
        return events

    def tickets(self, driver_id: str) -> list[Ticket]:
        """Every ticket the driver showed, revisions included, in the order shown."""
        return [
            Ticket(
                e["cp_id"],
                e["session_id"],
                e["wh"],
                e["micro_eur"],
                e["end_reason"],
                e["revision"],
                e["provisional"],
            )
            for e in self.events(driver_id)
            if e["event"] == "ticket"
        ]

    def final_tickets(self, driver_id: str) -> dict[str, Ticket]:
        """The ticket that stands for each session: its latest revision shown."""
        final: dict[str, Ticket] = {}
        for ticket in self.tickets(driver_id):
            if ticket.session_id not in final or ticket.revision > final[ticket.session_id].revision:
                final[ticket.session_id] = ticket
        return final

    def wait_driver_done(self, driver_id: str, timeout_s: float, code: int = 0) -> None:
        process = self.drivers[driver_id]
        wait_for(lambda: not process.alive, timeout_s, f"{driver_id} to finish its requests")
        assert process.returncode == code, (
            f"{driver_id} exited with {process.returncode}; see {process.log_path}"
        )

    # ------------------------------------------------------- identities

    def identities(self) -> dict[str, Identity | None]:
        """Every process of the system, as it describes itself (None: it does not answer)."""
        found: dict[str, Identity | None] = {}
        if self.central is not None:
            try:
                health = self.get("/health")
                found["central"] = Identity(health["instance"], health["pid"])
            except (OSError, ValueError, KeyError):
                found["central"] = None
        listed = {}
        with contextlib.suppress(OSError, ValueError, KeyError):
            listed = {cp["cp_id"]: cp for cp in self.get("/cp")["charging_points"]}
        for cp in self.cps.values():
            found[cp.engine.name] = cp.identity()
            monitor = (listed.get(cp.cp_id) or {}).get("monitor")
            found[cp.monitor.name] = Identity(monitor["instance"], monitor["pid"]) if monitor else None
        for driver_id, process in self.drivers.items():
            found[process.name] = self._driver_identity(driver_id, process)
        return found

    def _driver_identity(self, driver_id: str, process: Child) -> Identity | None:
        """A driver says who it is in its event stream; it counts while it runs or once it
        finished its requests by itself (its summary follows its last start)."""
        events = self.events(driver_id)
        starts = [i for i, e in enumerate(events) if e["event"] == "ready"]
        if not starts:
            return None
        ready = events[starts[-1]]
        finished = any(e["event"] == "summary" for e in events[starts[-1] :]) and process.returncode == 0
        live = process.alive and running(ready["pid"])
        return Identity(ready["instance"], ready["pid"]) if live or finished else None

    def _processes(self) -> list[Child]:
        processes = [*self.drivers.values()]
        for cp in self.cps.values():
            processes += [cp.engine, cp.monitor]
        return [*processes, *([self.central] if self.central else [])]

    # -------------------------------------------------------- invariants

    def settle(self, timeout_s: float = 30) -> None:
        """Wait until what the engines recorded has reached central (their outboxes are empty)."""
        wait_for(
            lambda: all(cp.engine_outbox(self.state_dir) == 0 for cp in self.cps.values()),
            timeout_s,
            "every engine's outbox to drain",
        )
