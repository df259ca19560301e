"""Central's audit log: one JSON line per registration, refusal, operator command and session outcome.

Append-only and flushed line by line, so what happened before a crash is on disk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8", buffering=1)

    def record(self, action: str, *, who: str, peer: str = "", result: str = "ok", **details: Any) -> None:
        if self._file is None:
            return
        entry = {"at": round(time.time(), 3), "action": action, "who": who, "from": peer, "result": result}
        entry.update(details)
        self._file.write(json.dumps(entry) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
