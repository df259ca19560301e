"""The key a CP's engine signs its events with: issued by central at join, kept by the monitor in
the state dir the two share (0600), read here.

Why this way: the monitor is the CP's one authenticated link to central (TLS, its
own secret), so central hands the key over on that link; the state dir is already
the CP's private place on its host (the monitor's secret lives there). The
engine's health port is not used: it is plain TCP, may listen beyond loopback,
and must never carry a secret.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from evcharge.protocol import signing
from evcharge.runtime.outbox import OutboxRow

log = logging.getLogger("evcharge.engine")


def keep_key(path: Path, key: str) -> bool:
    """Write `key` to `path` (0600, atomically) unless it is there already; True when written."""
    try:
        if path.read_text().strip() == key:
            return False
    except OSError:
        pass
    write_private(path, key)
    return True


def write_private(path: Path, secret: str) -> None:
    """`secret` as the whole of `path`: readable by its user alone from its first byte (0600),
    durable, and replaced atomically, so a crash leaves the old one or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


class EventSigner:
    """Signs each outbox row (its exact payload bytes) with the CP's key, re-read when it changes.

    With `required`, nothing is published before the key is there: an unsigned event
    would be refused as a forgery, and waiting in the outbox loses nothing.
    """

    def __init__(self, path: Path, *, required: bool) -> None:
        self.path = path
        self.required = required
        self._key: str | None = None
        self._seen: float | None = None
        self._said_waiting = False

    def key(self) -> str | None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return self._key
        if mtime != self._seen:
            self._seen = mtime
            self._key = self.path.read_text().strip() or None
        return self._key

    async def may_publish(self) -> bool:
        if not self.required or self.key() is not None:
            if self._said_waiting:
                log.info("the signing key is here (%s): publishing", self.path)
                self._said_waiting = False
            return True
        if not self._said_waiting:
            log.info(
                "events wait for the signing key central issues at join (the monitor writes %s)", self.path
            )
            self._said_waiting = True
        return False

    def headers(self, row: OutboxRow) -> Sequence[tuple[str, bytes]]:
        key = self.key()
        return [(signing.SIGNATURE_HEADER, signing.sign(key, row.payload))] if key else []
