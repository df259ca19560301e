"""Which of the centrals sharing one store decides: a lease in the store, with a fencing epoch.

The leader holds a lease that it renews well before it expires; a standby takes
it once it has expired, and every take bumps the epoch. Every commit the leader
makes checks, in the same transaction, that the epoch is still its own, so a
leader that froze past its lease and woke up cannot write a thing: it finds out
at its next renewal or commit and steps down. The store's clock judges expiry,
so the centrals' own clocks never have to agree.

With the embedded SQLite store there is one central, kept alone by a file lock:
it leads from the start (`ALONE`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from evcharge.errors import Fenced
from evcharge.runtime.waits import sleep_unless

__all__ = ["Fenced", "Holder", "Leadership", "Lease"]

log = logging.getLogger("evcharge.central.leadership")

LEASE_S = 2.0  # a standby takes over this long after the leader's last renewal at most
RENEW_EVERY_S = 0.5  # four renewals per lease: one slow round trip does not lose it
TRY_EVERY_S = 0.25  # how often a standby looks whether the lease has expired


@dataclass(frozen=True)
class Holder:
    """A central as its peers reach it: the leader's address for monitors, drivers and pages."""

    instance: str
    tcp: str  # host:port for monitors
    http: str  # base URL of the HTTP API
    pid: int
    host: str


class Lease(Protocol):
    async def acquire(self, me: Holder, lease_s: float) -> int | None:
        """Take the lead if it is free (expired) or already ours: the new epoch, else None."""

    async def renew(self, me: Holder, epoch: int, lease_s: float) -> bool:
        """Extend our lease; False if the epoch is no longer ours."""

    async def release(self, me: Holder, epoch: int) -> None:
        """Let the lease expire now, so a standby takes over at once (an orderly stop)."""

    async def leader(self) -> Holder | None:
        """The central holding an unexpired lease, if any."""


@dataclass
class Leadership:
    """This central's part in the lead: standby until it acquires, leader until it loses."""

    lease: Lease | None
    me: Holder
    lease_s: float = LEASE_S
    renew_every_s: float = RENEW_EVERY_S
    try_every_s: float = TRY_EVERY_S

    def __post_init__(self) -> None:
        self.epoch: int | None = None
        self.known_leader: Holder | None = None
        self.lost = asyncio.Event()
        self.since = time.monotonic()

    @property
    def shared(self) -> bool:
        """Several centrals may share this store (else this one leads alone)."""
        return self.lease is not None

    @property
    def leading(self) -> bool:
        return self.epoch is not None and not self.lost.is_set()

    @property
    def role(self) -> str:
        if not self.shared:
            return "single"
        return "leader" if self.leading else "standby"

    def leader(self) -> Holder | None:
        """Where the lead is, as far as this central knows (itself while it leads)."""
        return self.me if self.leading else self.known_leader

    async def wait_to_lead(self, stop: asyncio.Event) -> bool:
        """Serve as a standby until the lease is ours; False if `stop` came first."""
        if self.lease is None:
            self._took(0)
            return True
        said_standby = False
        while not stop.is_set():
            try:
                epoch = await self.lease.acquire(self.me, self.lease_s)
                if epoch is not None:
                    self._took(epoch)
                    return True
                self.known_leader = await self.lease.leader()
            except Exception as exc:  # the store is away: stay a standby and keep looking
                if not getattr(exc, "retriable", False):
                    raise
            if not said_standby:
                said_standby = True
                leader = self.known_leader
                where = f" (leader: {leader.instance} at {leader.http})" if leader else ""
                log.info("central is a standby%s: it takes over when the leader's lease expires", where)
            if await sleep_unless(stop, self.try_every_s):
                return False
        return False

    def _took(self, epoch: int) -> None:
        self.epoch = epoch
        self.known_leader = None
        self.lost.clear()
        self.since = time.monotonic()
        if self.lease is not None:
            log.info("central leads (epoch %d)", epoch)

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew the lease while leading; set `lost` when the epoch is no longer ours."""
        if self.lease is None or self.epoch is None:
            await stop.wait()
            return
        while not await sleep_unless(stop, self.renew_every_s):
            try:
                if await self.lease.renew(self.me, self.epoch, self.lease_s):
                    continue
            except Exception as exc:
                if not getattr(exc, "retriable", False):
                    raise
                # The store is away: nobody can take over meanwhile without the store either,
                # and every commit checks the epoch; keep leading until the store says otherwise.
                continue
            self.step_down("another central took the lead")
            return

    def step_down(self, why: str) -> None:
        if self.lost.is_set() or self.epoch is None:
            return
        log.warning("central steps down to standby (epoch %d): %s", self.epoch, why)
        self.lost.set()

    async def release(self) -> None:
        """An orderly stop of the leader: hand the lead over now rather than at expiry."""
        if self.lease is None or self.epoch is None or self.lost.is_set():
            return
        epoch, self.epoch = self.epoch, None
        try:
            async with asyncio.timeout(2.0):
                await self.lease.release(self.me, epoch)
        except Exception as exc:  # the lease then expires by itself
            log.info("central could not hand its lease over (%s): a standby takes over at expiry", exc)

    def became_standby(self) -> None:
        self.epoch = None
        self.lost.clear()
        self.since = time.monotonic()
