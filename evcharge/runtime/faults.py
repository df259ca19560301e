"""Crash points: a test can make a process die at one exact place inside a critical window.

Inert unless `EVCHARGE_CRASH_AT` names the point: `central.commit` dies at the
first time it is reached, `engine.recorded@3` at the third. The process is
killed with SIGKILL, as a power cut or the OOM killer would: no cleanup, no
flush, no `finally`.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "EVCHARGE_CRASH_AT"

_target, _, _nth = (os.environ.get(ENV) or "").partition("@")
_remaining = int(_nth) if _nth.isdigit() else 1


def crash_point(name: str) -> None:
    """Die here if the environment asks for it; otherwise nothing."""
    global _remaining
    if name != _target:
        return
    _remaining -= 1
    if _remaining > 0:
        return
    sys.stderr.write(f"crash point {name}: killing this process (pid {os.getpid()})\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
