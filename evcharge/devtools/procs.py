"""What the kernel says of a process: its state letter, and whether it still runs."""

from __future__ import annotations

import os
from pathlib import Path


def task_state(task: Path) -> str | None:
    """The one-letter state of a process or thread from its /proc entry (None when gone)."""
    try:
        stat = (task / "stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may itself contain spaces or parentheses.
    return stat.rsplit(")", 1)[1].split()[0]


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie: a killed child not yet reaped is not running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    state = task_state(Path(f"/proc/{pid}"))
    return state not in (None, "Z", "X") if Path("/proc/self").is_dir() else True
