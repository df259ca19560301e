"""Child `evcharge` processes with their own log files: started, signalled, restarted, stopped.

Used by `evcharge demo` to run the whole system and by the tests to kill real
processes with real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


@dataclass
class Child:
    """One `evcharge` subcommand run as its own process; its output appends to `log_path`."""

    name: str
    args: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    # On the caller's terminal (central's panel in the demo): same process group,
    # stdin and stdout inherited; only stderr goes to the log.
    terminal: bool = False
    # Prepended to the command line, e.g. ["ip", "netns", "exec", NAME] to run the child
    # inside a network namespace (the partition tests).
    prefix: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    starts: int = field(default=0, init=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> Child:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._close_log()  # the previous run's, if it ended on its own
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.starts += 1
        self._log.write(f"--- start #{self.starts} of {self.name}\n".encode())
        self._log.flush()
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "evcharge", *self.args],
            stdout=None if self.terminal else self._log,
            stderr=self._log if self.terminal else subprocess.STDOUT,
            stdin=None if self.terminal else subprocess.DEVNULL,
            env=env,
            cwd=self.cwd,
            # Its own process group unless it shares the terminal: a Ctrl-C in the
            # demo's terminal reaches the demo only, which then stops every child in order.
            start_new_session=not self.terminal,
        )
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        self.signal(signal.SIGKILL)
        self.wait(10)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def wait(self, timeout_s: float) -> int | None:
        if self.process is None:
            return None
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self._close_log()
        return code

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited in time. Idempotent."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.thaw()  # a frozen process cannot act on SIGTERM
            self.process.send_signal(signal.SIGTERM)
            if self.wait(timeout_s) is None:
                self.process.kill()
                self.wait(5)
        self._close_log()
        return self.process.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> Child:
        self.stop()
        return self.start()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll `predicate` until it returns something truthy; AssertionError naming `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            last = predicate()
        except Exception as exc:  # the thing polled may not be up yet
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval_s)
