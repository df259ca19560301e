"""The Kafka contract in one table: each topic, what it carries, and which key orders it.

Pure. `route(message)` says where a message goes; `TOPICS` is what every role
creates if it is missing; `CODECS` decodes what each topic carries. Keys keep one
CP's and one driver's messages in order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import msgspec

from evcharge.protocol import messages as m


class Topic(enum.StrEnum):
    DRIVER_REQUESTS = "evcharge.driver.requests"
    DRIVER_UPDATES = "evcharge.driver.updates"
    CP_COMMANDS = "evcharge.cp.commands"
    CP_EVENTS = "evcharge.cp.events"
    DEAD_LETTERS = "evcharge.deadletter"
    CENTRAL_CLAIMS = "evcharge.central.claims"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    # Topic-level settings. Requests are stamped by the broker when it appends them
    # (LogAppendTime): their age is then measured without trusting a driver's clock.
    config: dict[str, str] = field(default_factory=dict)


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(Topic.DRIVER_REQUESTS, {"message.timestamp.type": "LogAppendTime"}),
    TopicSpec(Topic.DRIVER_UPDATES),
    TopicSpec(Topic.CP_COMMANDS),
    TopicSpec(Topic.CP_EVENTS),
    TopicSpec(Topic.DEAD_LETTERS),
)

# One partition, so every central reads the claims in one order; an hour is plenty to look back.
CLAIMS_TOPIC = TopicSpec(
    Topic.CENTRAL_CLAIMS, {"message.timestamp.type": "LogAppendTime", "retention.ms": str(3_600_000)}
)

CODECS: dict[str, m.Codec[Any]] = {
    Topic.DRIVER_REQUESTS: m.DRIVER_REQUESTS,
    Topic.DRIVER_UPDATES: m.DRIVER_UPDATES,
    Topic.CP_COMMANDS: m.CP_COMMANDS,
    Topic.CP_EVENTS: m.CP_EVENTS,
    Topic.DEAD_LETTERS: m.DEAD_LETTERS,
    Topic.CENTRAL_CLAIMS: m.CENTRAL_CLAIMS,
}

# message type -> (topic, the field whose value is the key)
_ROUTES: dict[type[msgspec.Struct], tuple[Topic, str]] = {
    m.ChargeRequest: (Topic.DRIVER_REQUESTS, "driver_id"),
    m.StopRequest: (Topic.DRIVER_REQUESTS, "driver_id"),
    m.RequestAccepted: (Topic.DRIVER_UPDATES, "driver_id"),
    m.RequestDenied: (Topic.DRIVER_UPDATES, "driver_id"),
    m.ChargingProgress: (Topic.DRIVER_UPDATES, "driver_id"),
    m.Ticket: (Topic.DRIVER_UPDATES, "driver_id"),
    m.StartSupply: (Topic.CP_COMMANDS, "cp_id"),
    m.StopSupply: (Topic.CP_COMMANDS, "cp_id"),
    m.StopCp: (Topic.CP_COMMANDS, "cp_id"),
    m.ResumeCp: (Topic.CP_COMMANDS, "cp_id"),
    m.SessionStarted: (Topic.CP_EVENTS, "cp_id"),
    m.MeterReading: (Topic.CP_EVENTS, "cp_id"),
    m.SessionEnded: (Topic.CP_EVENTS, "cp_id"),
    m.SessionRefused: (Topic.CP_EVENTS, "cp_id"),
    m.DeadLetter: (Topic.DEAD_LETTERS, "source_topic"),
    m.CentralClaim: (Topic.CENTRAL_CLAIMS, "store_id"),
}


def route(message: msgspec.Struct) -> tuple[str, str]:
    """(topic, key) for a message; a type with no route is a programming error."""
    topic, key_field = _ROUTES[type(message)]
    return topic.value, str(getattr(message, key_field))


def dead_letter(
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    payload: bytes | None,
    consumer: str,
    reason: str,
) -> tuple[str, str, bytes]:
    """The record (topic, key, payload) that keeps an unusable record with why it was refused."""
    letter = m.DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        consumer=consumer,
        reason=reason,
        key=key.decode(errors="replace") if key else None,
        payload=bytes(payload or b""),
    )
    return (*route(letter), m.encode(letter))
