"""The processes a benchmark phase runs, on top of `evcharge.devtools.system.LocalSystem`, and
fast looks at what each one says of itself.

`LocalSystem` starts real `evcharge` processes with their own logs; here its waits
are tightened to 10 ms polls over one kept-alive HTTP connection, so a figure of a
few hundred milliseconds is not rounded to the harness's 50 ms. Every readiness the
bench times is asked of the process over its own interface (central's `GET /health`
and `GET /cp/<id>`, an engine's health port, a driver's event stream), never read
from its log.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evcharge.devtools import system as devsystem
from evcharge.devtools.supervisor import Child
from evcharge.devtools.system import ChargePoint, Credentials, LocalSystem

POLL_S = 0.01
TIMEOUT_S = 30.0


class CentralView:
    """Central's HTTP API over one kept-alive connection (HTTPS with `tls`); reconnects after
    central restarts."""

    def __init__(self, port: int, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self._host, self._port, self._tls = host, port, tls
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, Any]:
        status, body = self.fetch(path)
        return status, json.loads(body or b"null")

    def text(self, path: str) -> str:
        """A page that is not JSON (`/metrics`), which must answer 200."""
        status, body = self.fetch(path)
        if status != 200:
            raise OSError(f"GET {path} answered {status}")
        return body.decode()

    def fetch(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = (
                    http.client.HTTPSConnection(self._host, self._port, timeout=5, context=self._tls)
                    if self._tls is not None
                    else http.client.HTTPConnection(self._host, self._port, timeout=5)
                )
            try:
                self._conn.request("GET", path)
                response = self._conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def cp(self, cp_id: str) -> dict[str, Any] | None:
        code, body = self.get(f"/cp/{cp_id}")
        return body if code == 200 else None

    def status(self, cp_id: str) -> str | None:
        cp = self.cp(cp_id)
        return cp["status"] if cp else None

    def health(self) -> dict[str, Any]:
        code, body = self.get("/health")
        if code != 200:
            raise OSError(f"GET /health answered {code}")
        return body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def wait_for(predicate: Callable[[], object], what: str, timeout_s: float = TIMEOUT_S) -> float:
    """Poll every 10 ms until `predicate` is truthy; the monotonic time it first was.

    TimeoutError naming `what` once `timeout_s` has passed; a predicate that raises
    counts as not yet (central may be restarting: that is what is being timed).
    """
    devsystem.wait_for(predicate, timeout_s, what, interval_s=POLL_S)
    return time.monotonic()


@dataclass
class BenchSystem(LocalSystem):
    """A `LocalSystem` whose central is timed precisely and observed through a `CentralView`."""

    central_ready_s: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.view = self._view()

    def _view(self) -> CentralView:
        url = urllib.parse.urlsplit(self.url)
        return CentralView(url.port or self.http_port, url.hostname or "127.0.0.1", self.http_tls)

    def secure(self, credentials: Credentials) -> None:
        super().secure(credentials)
        self.view.close()
        self.view = self._view()

    def start_central(self, env: dict[str, str] | None = None) -> Child:
        if self.central is not None:
            self.central.stop()
        started = time.monotonic()
        self.central = self.central_child(env).start()
        self.central_ready_s = self.wait_central() - started
        return self.central

    def wait_central(self, timeout_s: float = TIMEOUT_S) -> float:
        return wait_for(lambda: self.view.health()["status"] == "ok", "central's HTTP API", timeout_s)

    def wait_cp(self, cp_id: str, status: str, timeout_s: float = TIMEOUT_S) -> float:
        return wait_for(lambda: self.view.status(cp_id) == status, f"{cp_id} to show {status}", timeout_s)

    # What each process says once it serves, asked of the process we started (its pid),
    # so an answer left over from its previous run never counts.

    def engine_serving(self, cp: ChargePoint) -> bool:
        """Its health port answers, which it opens once it reads its Kafka commands."""
        identity = cp.identity()
        return identity is not None and identity.pid == cp.engine.pid

    def monitor_connected(self, cp: ChargePoint) -> bool:
        """Central lists it as the CP's connected monitor."""
        listed = self.view.cp(cp.cp_id)
        monitor = (listed or {}).get("monitor") or {}
        return monitor.get("pid") == cp.monitor.pid

    def driver_ready(self, driver_id: str) -> bool:
        """Its event stream has a `ready` from the running process (it reads its updates)."""
        process = self.drivers[driver_id]
        return any(e["event"] == "ready" and e.get("pid") == process.pid for e in self.events(driver_id))

    def driver_count(self, driver_id: str, event: str) -> int:
        return sum(1 for e in self.events(driver_id) if e["event"] == event)

    def driver_settled(self, driver_id: str) -> bool:
        """Every session the driver was told was accepted has its ticket shown."""
        events = self.events(driver_id)
        accepted = {e["session_id"] for e in events if e["event"] == "accepted"}
        ticketed = {e["session_id"] for e in events if e["event"] == "ticket"}
        return bool(accepted) and accepted <= ticketed

    def stop_all(self) -> None:
        try:
            super().stop_all()
        finally:
            self.view.close()


def new_system(
    root: Path,
    kafka: str,
    name: str,
    *,
    max_session_s: float = 2.0,
    store: str | None = None,
    central_overrides: dict[str, Any] | None = None,
    credentials: Credentials | None = None,
) -> BenchSystem:
    """A system of its own under `root/name`; `store` None is SQLite in its state dir; with
    `credentials`, every process it starts has security on (`LocalSystem.secure`)."""
    system = BenchSystem(
        root / name,
        kafka,
        store=store,
        max_session_s=max_session_s,
        central_overrides=dict(central_overrides or {}),
    )
    if credentials is not None:
        system.secure(credentials)
    return system
