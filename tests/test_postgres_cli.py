"""`evcharge postgres start|status|stop`: a local PostgreSQL that outlives the command, for centrals."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from evcharge.runtime.ports import free_port

pytestmark = pytest.mark.processes


def evcharge(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "evcharge", "postgres", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


def test_start_prints_the_store_url_status_finds_it_and_stop_ends_it() -> None:
    folder = Path(tempfile.mkdtemp(prefix="evcharge-pg-cli-"))  # reachable by the postgres user
    where = ["--data-dir", str(folder), "--port", str(free_port())]
    try:
        started = evcharge("start", *where)
        assert started.returncode == 0, started.stderr
        url = started.stdout.split("--store ")[1].strip()
        assert url.startswith("postgresql://evcharge@127.0.0.1:")
        assert evcharge("start", *where).stdout.startswith("PostgreSQL already runs")
        assert evcharge("status", *where).returncode == 0
        stopped = evcharge("stop", *where)
        assert stopped.stdout.strip() == "PostgreSQL stopped"
        assert evcharge("status", *where).returncode == 1
    finally:
        evcharge("stop", *where)
        shutil.rmtree(folder, ignore_errors=True)
