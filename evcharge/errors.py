"""The exceptions evcharge raises, under one root.

EvchargeError
├── ConfigError          a flag or environment value that cannot work
├── BrokerError          a local Kafka broker or PostgreSQL server cannot be fetched, started or stopped
├── ProtocolError        a peer sent bytes that are not a valid frame or message
│   └── FrameTooLarge    a frame header announces more than the limit
├── ConnectionLost       a TCP peer went away; carries why
├── RequestTimeout       a peer did not answer within the deadline
├── Refused              a peer answered with an error (duplicate id, not registered, ...)
├── Fenced               this process lost the right to write: another leads now
└── StoreUnavailable     a durable store cannot take a write now (disk full, database down)
    └── StorageFull      ... because its filesystem is full

`retriable` says whether waiting and trying again is the right answer; the
retry policy (`evcharge.runtime.retry`) reads it instead of guessing.
"""

from __future__ import annotations


class EvchargeError(Exception):
    """Root of every error evcharge raises on purpose."""

    retriable = False


class ConfigError(EvchargeError):
    pass


class BrokerError(EvchargeError):
    pass


class ProtocolError(EvchargeError):
    pass


class FrameTooLarge(ProtocolError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


class ConnectionLost(EvchargeError):
    retriable = True


class RequestTimeout(EvchargeError):
    retriable = True


class Refused(EvchargeError):
    # Codes a peer uses for "not now": a retry later may be accepted.
    TRANSIENT = frozenset({"unavailable", "not_leader"})

    def __init__(self, code: str, reason: str, *, leader: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.leader = leader  # where to go instead, when the peer knows

    @property
    def retriable(self) -> bool:  # type: ignore[override]
        return self.code in self.TRANSIENT


class Fenced(EvchargeError):
    """A write refused because this process no longer leads (its epoch or producer is stale)."""


class StoreUnavailable(EvchargeError):
    """The store refused a write it may take later: nothing of that write was kept."""

    retriable = True


class StorageFull(StoreUnavailable):
    pass
