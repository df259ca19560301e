"""Where central's time goes: py-spy's raw stacks folded into the functions and libraries that cost most."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

# py-spy raw frames look like "apply_events (evcharge/central/service.py:373)".
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")
_AREAS = (
    ("sqlite (aiosqlite thread)", ("aiosqlite", "sqlite3")),
    ("aiokafka", ("aiokafka",)),
    ("msgspec", ("msgspec",)),
    ("aiohttp", ("aiohttp",)),
    ("evcharge", ("evcharge",)),
    ("asyncio", ("asyncio",)),
)


def _frame(raw: str) -> tuple[str, str]:
    match = _FRAME.match(raw.strip())
    if not match:
        return raw.strip(), ""
    return match["func"], match["file"]


def _short(func: str, file: str) -> str:
    tail = "/".join(Path(file).parts[-2:]) if file else "?"
    return f"{func} ({tail})"


def _area(file: str) -> str:
    for name, needles in _AREAS:
        if any(n in file for n in needles):
            return name
    return "other"


def summarise(path: Path, rate_hz: int = 100, duration_s: float = 8.0, top: int = 12) -> dict[str, Any]:
    """Self time by function, inclusive time of central's own functions, and time by library."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        leaf_func, leaf_file = frames[-1]
        self_time[_short(leaf_func, leaf_file)] += count
        # The innermost frame of a known library names where the time is spent.
        areas[next((_area(f) for _, f in reversed(frames) if _area(f) != "other"), "other")] += count
        for name in {_short(fn, fl) for fn, fl in frames if "evcharge" in fl}:
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)] if total else []

    return {
        "samples": total,
        # Samples of busy threads over the wall time: how many cores central kept busy.
        "busy_cores": round(total / (rate_hz * duration_s), 2),
        "by_area_percent": share(areas),
        "self_percent": share(self_time),
        "evcharge_inclusive_percent": share(inclusive),
    }
