"""A process counts as running while it exists and is not a zombie: real child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from evcharge.devtools.procs import running, task_state


def test_a_live_child_runs_a_killed_unreaped_one_does_not_nor_once_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert running(child.pid)
        assert task_state(Path(f"/proc/{child.pid}")) in {"S", "R"}
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while task_state(Path(f"/proc/{child.pid}")) != "Z":  # dead, not yet waited for
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert not running(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not running(child.pid)
    assert task_state(Path(f"/proc/{child.pid}")) is None


def test_a_stopped_process_still_runs() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while task_state(Path(f"/proc/{child.pid}")) != "T":
            assert time.monotonic() < deadline, "SIGSTOP did not stop the child"
            time.sleep(0.01)
        assert running(child.pid)
    finally:
        child.kill()
        child.wait()
