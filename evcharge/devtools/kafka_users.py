"""The SCRAM users of the project's secure broker, one per role, and their passwords (a 0600 file).

The broker learns them when its storage is formatted (`kafka-storage format
--add-scram`); roles are given theirs with `--kafka-user` and `--kafka-password`.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

ROLES = ("admin", "central", "engine", "driver")


@dataclass(frozen=True)
class KafkaUsers:
    path: Path
    passwords: dict[str, str]

    FILE = "kafka-users.json"

    @classmethod
    def load_or_create(cls, path: Path) -> KafkaUsers:
        if path.is_file():
            return cls(path, json.loads(path.read_text()))
        passwords = {role: secrets.token_urlsafe(24) for role in ROLES}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(passwords, handle, indent=2)
        return cls(path, passwords)

    def password(self, role: str) -> str:
        return self.passwords[role]
