"""The processes a benchmark phase runs, on top of the tests' `System`, and fast looks at central.

`System` (tests/harness.py) starts real `evcharge` processes with their own logs;
here its waits are tightened to 10 ms polls over one kept-alive HTTP connection,
so a figure of a few hundred milliseconds is not rounded to the harness's 50 ms.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evcharge.supervisor import Child

from tests.harness import System

POLL_S = 0.01
TIMEOUT_S = 30.0


class CentralView:
    """Central's HTTP API over one kept-alive connection; reconnects after central restarts."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._host, self._port = host, port
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, Any]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=5)
            try:
                self._conn.request("GET", path)
                response = self._conn.getresponse()
                return response.status, json.loads(response.read() or b"null")
            except (OSError, http.client.HTTPException, json.JSONDecodeError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def status(self, cp_id: str) -> str | None:
        code, body = self.get(f"/cp/{cp_id}")
        return body["status"] if code == 200 else None

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
    """Poll every 10 ms until `predicate` is truthy; the monotonic time it first was."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            last = predicate()
        except Exception as exc:  # central may be restarting: that is what is being timed
            last = exc
        else:
            if last:
                return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")
        time.sleep(POLL_S)


def log_count(child: Child, text: str) -> int:
    """How often `text` appears in the child's log (which appends across restarts)."""
    return child.output().count(text)


class BenchSystem(System):
    """A `System` whose central is timed precisely and observed through a `CentralView`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.view = CentralView(self.http_port)

    def start_central(self) -> Child:
        started = time.monotonic()
        self.central = self.central_child().start()
        self.central_ready_s = self.wait_central() - started
        return self.central

    def wait_central(self, timeout_s: float = TIMEOUT_S) -> float:
        return wait_for(lambda: self.view.health()["status"] == "ok", "central's HTTP API", timeout_s)

    def wait_cp(self, cp_id: str, status: str, timeout_s: float = TIMEOUT_S) -> float:
        return wait_for(lambda: self.view.status(cp_id) == status, f"{cp_id} to show {status}", timeout_s)

    def stop_all(self) -> None:
        try:
            super().stop_all()
        finally:
            self.view.close()


def new_system(root: Path, kafka: str, name: str, *, max_session_s: float = 2.0) -> BenchSystem:
    system = BenchSystem(root / name, kafka)
    system.max_session_s = max_session_s
    return system
