"""The command lines that start each role, built from its settings: one place for the demo,
the tests and the benchmark.

    child("engine", EngineSettings(cp_id="CP-001", kafka=k, keys=False), log_path)

The flags come from the settings' own definitions (`evcharge.config`), so a
renamed flag or a changed default cannot leave a stale command line behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evcharge.config import argv
from evcharge.devtools.supervisor import Child

ROLES = ("central", "engine", "monitor", "driver", "sim", "gateway")


def role_args(role: str, settings: Any) -> list[str]:
    """`[role, --flag, value, ...]` for `python -m evcharge`: the flags that differ from the defaults."""
    if role not in ROLES:
        raise ValueError(f"no role {role!r}")
    return [role, *argv(settings)]


def child(role: str, settings: Any, log_path: Path, *, name: str | None = None, **options: Any) -> Child:
    """A `Child` process (not started yet) that runs `role` with exactly `settings`."""
    return Child(name or role, role_args(role, settings), log_path, **options)
