"""Which central a monitor-protocol client dials next: the leader a standby named, else the next one.

Centrals run redundantly: one leads, the others stand by and refuse a `Register`
with `not_leader`, naming the leader when they know it. Every client of central's
monitor port (`evcharge monitor`, each charger link of `evcharge gateway`) dials
through a `Centrals`, so each goes straight to the leader after one refusal, and
walks the list in turn when nobody names one (a central down, a lease changing hands).
"""

from __future__ import annotations

from evcharge.errors import Refused


class Centrals:
    def __init__(self, addresses: tuple[tuple[str, int], ...]) -> None:
        if not addresses:
            raise ValueError("at least one central address")
        self.addresses = addresses
        self._next = 0
        self._leader: tuple[str, int] | None = None

    def __str__(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.addresses)

    def next(self) -> tuple[str, int]:
        """The address to dial now: a leader just named (once), else the next of the list."""
        if self._leader is not None:
            leader, self._leader = self._leader, None
            return leader
        address = self.addresses[self._next % len(self.addresses)]
        self._next += 1
        return address

    def refused(self, exc: Refused) -> None:
        """Take note of a refusal: a standby that named the leader sends the next dial there."""
        if exc.code == "not_leader" and exc.leader:
            host, _, port = exc.leader.rpartition(":")
            if host and port.isdigit():
                self._leader = (host.strip("[]"), int(port))
