"""Child `evcharge` processes with their own log files: started, signalled, restarted, stopped.

Used by `evcharge demo` to run the whole system, by the benchmark, and by the tests
to kill real processes with real signals. A child dies with the process that started
it, even a SIGKILLed one (see evcharge.runtime.lifetime), so none is ever left running
headless.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from evcharge.runtime.lifetime import die_with_parent


@dataclass
class Child:
    """One `evcharge` subcommand run as its own process; its output appends to `log_path`."""

    name: str
    args: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    # On the caller's terminal (central's panel in the demo): same process group,
    # stdin and stdout inherited; only stderr goes to the log. It ignores the terminal's
    # hangup: the caller gets it too and stops its children in order, this one included.
    terminal: bool = False
    # Prepended to the command line, e.g. ["ip", "netns", "exec", NAME] to run the child
    # inside a network namespace (the partition tests).
    prefix: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    starts: int = field(default=0, init=False)
    signalled_at: float | None = field(default=None, init=False)  # monotonic, the last signal sent
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> Child:
        """Start it from the main thread: the kernel ends it when the starting thread ends."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._close_log()  # the previous run's, if it ended on its own
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.starts += 1
        self._log.write(f"--- start #{self.starts} of {self.name}\n".encode())
        self._log.flush()
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "evcharge", *self.args]
        self.process = subprocess.Popen(
            [*self.prefix, *die_with_parent(command, ignore_hangup=self.terminal)],
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
        """To its whole process group when it has its own, so whatever it started gets it too."""
        if self.process is None or self.process.poll() is not None:
            return  # past this check it is unreaped: its pid, so its group id, is not reused
        self.signalled_at = time.monotonic()
        if self.terminal:
            self.process.send_signal(signum)  # its group is the caller's own
            return
        with contextlib.suppress(ProcessLookupError):  # exited just now
            os.killpg(self.process.pid, signum)

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
            self.signal(signal.SIGTERM)
            if self.wait(timeout_s) is None:
                self.signal(signal.SIGKILL)
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
