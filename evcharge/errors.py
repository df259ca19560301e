"""The exceptions evcharge raises, under one root.

EvchargeError
├── ConfigError          a flag or environment value that cannot work
├── BrokerError          the local Kafka broker cannot be fetched, started or stopped
├── ProtocolError        a peer sent bytes that are not a valid frame or message
│   └── FrameTooLarge    a frame header announces more than the limit
├── ConnectionLost       a TCP peer went away; carries why
├── RequestTimeout       a peer did not answer within the deadline
└── Refused              a peer answered with an error (duplicate id, not registered, ...)
"""

from __future__ import annotations


class EvchargeError(Exception):
    """Root of every error evcharge raises on purpose."""


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
    pass


class RequestTimeout(EvchargeError):
    pass


class Refused(EvchargeError):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
