"""The command lines that start each role, built from its settings: one place for the demo,
the tests and the benchmark.

    child("engine", EngineSettings(cp_id="CP-001", kafka=k, keys=False), log_path)

The flags come from the settings' own definitions (`evcharge.config`), so a
renamed flag or a changed default cannot leave a stale command line behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evcharge.config import SECRETS, argv, secrets_env
from evcharge.devtools.supervisor import Child

ROLES = ("central", "engine", "monitor", "driver", "sim", "gateway")


def role_command(role: str, settings: Any) -> tuple[list[str], dict[str, str]]:
    """`[role, --flag, value, ...]` for `python -m evcharge` (the flags that differ from the
    defaults), and the environment that carries its secrets instead."""
    if role not in ROLES:
        raise ValueError(f"no role {role!r}")
    return [role, *argv(settings, leave_out=SECRETS)], secrets_env(settings)


def child(role: str, settings: Any, log_path: Path, *, name: str | None = None, **options: Any) -> Child:
    """A `Child` process (not started yet) that runs `role` with exactly `settings`."""
    args, secrets = role_command(role, settings)
    env = {**secrets, **(options.pop("env", None) or {})}
    return Child(name or role, args, log_path, env=env or None, **options)
