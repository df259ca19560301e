"""Who may do what on the project's secure broker: one SCRAM principal per role, and the
StandardAuthorizer's ACLs that let each do exactly its part of the Kafka contract.

    central  every evcharge topic (it creates and configures them), group `central`,
             transactional ids `evcharge-central-<store id>` (its outbox relay)
    engine   writes CP events and dead letters, reads CP commands, groups `engine-*`; the
             OCPP gateway is its chargers' engine and logs in as this user too (group `gateway-*`)
    driver   writes driver requests and dead letters, reads driver updates, groups `driver-*`
    anyone else: nothing (no ACL, and allow.everyone.if.no.acl.found=false)

Engines and drivers may also *describe* the evcharge topics (names, partitions,
configs: what a client needs to find its partition), never read or write them
beyond the above. Kafka's ACLs cannot tell one key (one CP) from another inside a
topic: that every engine may read every CP's commands is what the signatures,
not the ACLs, make harmless (see `evcharge.protocol.signing`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from evcharge.protocol.topics import Topic


class Resource(enum.IntEnum):
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class Operation(enum.IntEnum):
    READ = 3
    WRITE = 4
    CREATE = 5
    DESCRIBE = 8
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


class Pattern(enum.IntEnum):
    LITERAL = 3
    PREFIXED = 4


ALLOW = 3
EVERY_TOPIC = "evcharge."
CLUSTER = "kafka-cluster"
TRANSACTIONAL_PREFIX = "evcharge-central-"


@dataclass(frozen=True)
class Acl:
    principal: str  # a SCRAM user name
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation


def _grant(principal: str, resource: Resource, name: str, pattern: Pattern, *ops: Operation) -> list[Acl]:
    return [Acl(principal, resource, name, pattern, op) for op in ops]


def _topic(principal: str, topic: Topic, *ops: Operation) -> list[Acl]:
    return _grant(principal, Resource.TOPIC, topic.value, Pattern.LITERAL, *ops)


def _client(principal: str, groups: str) -> list[Acl]:
    """What every evcharge client needs: see the contract's topics, its own groups, idempotent sends."""
    return [
        *_grant(principal, Resource.TOPIC, EVERY_TOPIC, Pattern.PREFIXED, Operation.DESCRIBE),
        *_grant(principal, Resource.TOPIC, EVERY_TOPIC, Pattern.PREFIXED, Operation.DESCRIBE_CONFIGS),
        *_grant(principal, Resource.GROUP, groups, Pattern.PREFIXED, Operation.READ),
        *_grant(principal, Resource.CLUSTER, CLUSTER, Pattern.LITERAL, Operation.IDEMPOTENT_WRITE),
    ]


def role_acls() -> list[Acl]:
    o = Operation
    central = [
        *_grant(
            "central", Resource.TOPIC, EVERY_TOPIC, Pattern.PREFIXED,
            o.READ, o.WRITE, o.DESCRIBE, o.CREATE, o.DESCRIBE_CONFIGS, o.ALTER_CONFIGS,
        ),
        *_grant("central", Resource.GROUP, "central", Pattern.LITERAL, o.READ),
        *_grant(
            "central", Resource.TRANSACTIONAL_ID, TRANSACTIONAL_PREFIX, Pattern.PREFIXED, o.WRITE, o.DESCRIBE
        ),
        *_grant("central", Resource.CLUSTER, CLUSTER, Pattern.LITERAL, o.IDEMPOTENT_WRITE),
    ]  # fmt: skip
    engine = [
        *_topic("engine", Topic.CP_EVENTS, o.WRITE),
        *_topic("engine", Topic.DEAD_LETTERS, o.WRITE),
        *_topic("engine", Topic.CP_COMMANDS, o.READ),
        *_client("engine", "engine-"),
        *_grant("engine", Resource.GROUP, "gateway-", Pattern.PREFIXED, o.READ),
    ]
    driver = [
        *_topic("driver", Topic.DRIVER_REQUESTS, o.WRITE),
        *_topic("driver", Topic.DEAD_LETTERS, o.WRITE),
        *_topic("driver", Topic.DRIVER_UPDATES, o.READ),
        *_client("driver", "driver-"),
    ]
    return [*central, *engine, *driver]
