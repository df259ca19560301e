"""Logging for every role: readable lines by default, one JSON object per line with --log-json.

The Kafka client's own warnings and errors are let through, because an error
nobody planned for must be seen. What it says again and again while a broker
is away is one calm line per kind (no traceback) and then quiet until the
outage is over: the role's own reconnect line says when it is.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO

CLIENT_LIBRARIES = ("aiokafka", "kafka")
# Quiet period after a line of one kind was let through: repeats within it are counted.
REPEAT_QUIET_S = 60.0
# What the Kafka client says while a broker is unreachable, restarting or electing a leader:
# expected, waited out by the roles' retry policy. Matched on the message's format string.
# In a cluster the client retries on its own while a partition's leader or a group's
# coordinator moves to another broker, or too few replicas are in sync to acknowledge a
# write: it says so on every retry (every 100 ms), unless let through once here.
OUTAGE_MESSAGES = (
    'Unable connect to "%s:%s": %s',
    "Unable connect to node with id %s: %s",
    'Unable to request metadata from "%s:%s": %s',
    "Unable to request metadata from node with id %s: %r",
    "Unable to update metadata from %s",
    "Failed fetch messages from %s: %s",
    "Failed fetch offsets from %s: %s",
    "Attempt to fetch offsets for partition %s failed due to: %s",
    "Group Coordinator Request failed: %s",
    "FindCoordinator Request failed: %s",
    "Got error produce response: %s",
    "Got error produce response on topic-partition %s, retrying. Error: %s",
    "Cannot send %r to %s: %r",
    "Could not send %r: %r",
    "Error sending %s to node %s [%s] -- marking coordinator dead",
    "Marking the coordinator dead (node %s)for group %s.",
    "Error fetching metadata for topic %s: %s",
    "Topic %s not found in cluster metadata",
    "OffsetCommit failed before join, ignoring: %s",
    "Failed to commit on finallization: %s",
    "Unexpected error in coordinator routine",
)


class ClientGate(logging.Filter):
    """Lets the Kafka client's warnings and errors through, an expected outage calmly.

    An outage line is shown once per kind as a WARNING without its traceback,
    then counted and held back for `REPEAT_QUIET_S`; anything else the client
    says at WARNING or above passes unchanged, so a real error stays visible.
    """

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(CLIENT_LIBRARIES):
            return True
        template = str(record.msg)
        if template not in OUTAGE_MESSAGES:
            return record.levelno >= logging.WARNING
        now = time.monotonic()
        last = self._last.get(template)
        if last is not None and now - last < REPEAT_QUIET_S:
            self._held[template] = self._held.get(template, 0) + 1
            return False
        self._last[template] = now
        held = self._held.pop(template, 0)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        if record.exc_info:
            error = record.exc_info[1]
            record.msg = f"{template} ({type(error).__name__}: {error})" if error else template
            record.exc_info = None
            record.exc_text = None
        if held:
            record.msg = f"{record.msg} (and {held} more like it)"
        return True


class _HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "info", *, json_lines: bool = False, stream: IO[str] | None = None) -> None:
    if not isinstance(logging.getLevelName(level.upper()), int):
        raise ValueError(f"{level!r} is not a log level: debug, info, warning or error")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if json_lines else _HumanFormatter())
    handler.addFilter(ClientGate())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The client's debug chatter only when debugging; its warnings and errors always (through the gate).
    library_level = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for name in CLIENT_LIBRARIES:
        logging.getLogger(name).setLevel(library_level)
