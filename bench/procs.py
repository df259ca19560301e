"""What a running process costs, read from /proc: CPU seconds and resident memory; and the machine itself."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds `pid` has used so far (None when it is gone)."""
    fields = _stat(pid)
    # After the command name: state is field 3, utime 14, stime 15 (1-based, man proc).
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICKS


def kernel_cpu_s(pid: int | None) -> float | None:
    """The system (kernel) part of `cpu_s`: syscalls, the network stack's work for the process."""
    fields = _stat(pid)
    return None if fields is None else int(fields[12]) / _TICKS


def tree_cpu_s(pid: int | None) -> float | None:
    """CPU seconds of `pid`, of the children it has reaped and of those still running: a server
    made of processes (PostgreSQL: a postmaster and a backend per connection)."""
    fields = _stat(pid)
    if pid is None or fields is None:
        return None
    # utime, stime, cutime, cstime: fields 14-17 (1-based, man proc).
    total = sum(int(f) for f in fields[11:15]) / _TICKS
    return total + sum((cpu_s(child) or 0.0) for child in children(pid))


def tree_rss_mb(pid: int | None) -> float | None:
    """Resident memory of `pid` and of its children still running, in MB: a process made of
    workers (`evcharge sim --processes N`)."""
    own = rss_mb(pid)
    if pid is None or own is None:
        return None
    return own + sum((rss_mb(child) or 0.0) for child in children(pid))


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, still running."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(stat)
        if fields is not None and fields[1] == str(pid):  # ppid, field 4
            found.append(int(stat.parent.name))
    return found


def _stat(pid: int | None) -> list[str] | None:
    return None if pid is None else _stat_fields(Path(f"/proc/{pid}/stat"))


def _stat_fields(path: Path) -> list[str] | None:
    """The fields of a /proc stat file after the command name (field 3 on), None when it is gone."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of `pid` in MB (VmRSS), None when it is gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine() -> dict[str, object]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "system": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": _commit(),
        # Other work on the machine shares the cores: the load when the run began says how much.
        "loadavg_at_start": _loadavg(),
    }


def _commit() -> str | None:
    """The code measured: HEAD, with "+dirty" when the tree has changes not committed."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
