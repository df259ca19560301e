"""Where central's time goes: py-spy's raw stacks folded into the functions and libraries that cost most."""

from __future__ import annotations

import linecache
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import children, cpu_s

RATE_HZ = 100
# How long central and the simulator are profiled beside a section's figures: some 500 samples each.
PROFILE_S = 5.0

# py-spy raw frames look like "apply (evcharge/central/service.py:373)".
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")
# Where a thread waits rather than works (py-spy --nonblocking cannot tell idle threads apart):
# the event loop in select(), aiosqlite's worker thread blocked on its queue.
_IDLE = (("select", "selectors.py", None), ("_connection_worker_thread", "aiosqlite/core.py", "tx.get("))
# Frames every sample passes through on its way to the event loop: not worth listing.
_ENTRY_FILES = ("evcharge/__main__.py", "evcharge/cli.py", "runtime/shutdown.py")
_AREAS = (
    ("sqlite (aiosqlite thread)", ("aiosqlite", "sqlite3")),
    ("aiokafka", ("aiokafka",)),
    ("asyncpg", ("asyncpg",)),
    ("msgspec", ("msgspec",)),
    ("aiohttp", ("aiohttp",)),
    ("evcharge", ("evcharge",)),
    ("asyncio", ("asyncio",)),
)


def profiler_path() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start_profiler(pid: int, out: Path, duration_s: float = 120) -> subprocess.Popen[bytes] | None:
    """py-spy sampling `pid` into `out` (raw stacks) until `duration_s` or SIGINT; None without py-spy.
    --nonblocking: the process is never paused, so what it serves meanwhile is not slowed."""
    py_spy = profiler_path()
    if py_spy is None:
        return None
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(duration_s))),
         "--rate", str(RATE_HZ), "--nonblocking", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


class Profiles:
    """Several processes profiled by py-spy over the same `duration_s`, from now on, in the background.
    `summaries()` waits for them: by name, a summary, or {"error": ...} for one that could not be
    profiled (gone, not Python); {} without py-spy."""

    def __init__(self, pids: dict[str, int], duration_s: float, folder: Path) -> None:
        self.duration_s = duration_s
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        for name, pid in pids.items():
            profiler = start_profiler(pid, self._raw(name), duration_s)
            if profiler is not None:
                self.running[name] = profiler

    def _raw(self, name: str) -> Path:
        return self.folder / f"{name}-profile.txt"

    def summaries(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, profiler in self.running.items():
            try:
                profiler.wait(self.duration_s + 30)
                out[name] = summarise(self._raw(name), self.duration_s, RATE_HZ)
            except (subprocess.TimeoutExpired, OSError) as exc:
                out[name] = {"error": f"no profile: {exc!r}"}
        self.stop()
        return out

    def stop(self) -> None:
        for profiler in self.running.values():
            if profiler.poll() is None:
                profiler.kill()
                profiler.wait(10)


def central_and_sim(central: int, sim: int, folder: Path) -> Profiles:
    """Central and the simulator's busiest process, profiled for PROFILE_S from now on."""
    return Profiles({"central": central, "sim": busiest_worker(sim)}, PROFILE_S, folder)


def busiest_worker(sim: int) -> int:
    """The simulator's worker that has used the most CPU (with --processes 1, the simulator itself)."""
    workers = children(sim)
    return max(workers, key=lambda w: cpu_s(w) or 0.0) if workers else sim


def _frame(raw: str) -> tuple[str, str, int | None]:
    match = _FRAME.match(raw.strip())
    if not match:
        return raw.strip(), "", None
    return match["func"], match["file"], int(match["line"]) if match["line"] else None


def _idle(func: str, file: str, line: int | None) -> bool:
    for idle_func, idle_file, text in _IDLE:
        if func.rsplit(".", 1)[-1] == idle_func and file.endswith(idle_file):
            return text is None or text in _source_line(idle_file, line)
    return False


def _source_line(file: str, line: int | None) -> str:
    """The text of `line` in an installed module, found by its path's tail (e.g. aiosqlite/core.py)."""
    if line is None:
        return ""
    for folder in map(Path, sys.path):
        path = folder / file
        if path.is_file():
            return linecache.getline(str(path), line)
    return ""


def _short(func: str, file: str) -> str:
    tail = "/".join(Path(file).parts[-2:]) if file else "?"
    return f"{func} ({tail})"


def _area(file: str) -> str:
    for name, needles in _AREAS:
        if any(n in file for n in needles):
            return name
    return "other"


def summarise(path: Path, duration_s: float | None, rate_hz: int = 100, top: int = 12) -> dict[str, Any]:
    """Self time by function, inclusive time of central's own functions, and time by library."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        if _idle(*frames[-1]):
            idle += count
            continue
        total += count
        leaf_func, leaf_file, _ = frames[-1]
        self_time[_short(leaf_func, leaf_file)] += count
        # The innermost frame of a known library names where the time is spent.
        areas[next((_area(f) for _, f, _ in reversed(frames) if _area(f) != "other"), "other")] += count
        own = {_short(fn, fl) for fn, fl, _ in frames if "evcharge" in fl and not fl.endswith(_ENTRY_FILES)}
        for name in own:
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "idle_samples": idle,
        "profiled_s": duration_s,
        "rate_hz": rate_hz,
        "by_area_percent": share(areas),
        "self_percent": share(self_time),
        "evcharge_inclusive_percent": share(inclusive),
    }
