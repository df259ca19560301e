"""Which central a monitor-protocol client registers with: one round over the list, the leader first.

Centrals run redundantly: one leads, the others stand by and refuse a `Register`
with `not_leader`, naming the leader when they know it. Every client of central's
monitor port (`evcharge monitor`, each charger link of `evcharge gateway`) registers
through `Centrals.reach`, which makes one *round*: the central that last took the
registration, then the others in list order, each at most once, a leader a standby
names dialled next. A round fails only when every central did, so the caller backs
off once per round and not once per address: while a standby takes over from a dead
leader, the client reaches the new leader within one backoff delay of its taking
over, instead of spending most of its attempts on the dead one that standbys still
name until its lease runs out.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from evcharge.errors import Refused
from evcharge.protocol.messages import Frame
from evcharge.runtime.tcp import FramedConnection

T = TypeVar("T")
Address = tuple[str, int]


class Centrals:
    def __init__(self, addresses: tuple[Address, ...]) -> None:
        if not addresses:
            raise ValueError("at least one central address")
        self.addresses = addresses
        self._last_leader: Address | None = None
        # Centrals that did not answer in the last round (refused, timed out): dialled last, so a
        # leader cut off, whose packets vanish, does not cost a connect timeout every round.
        self._silent: set[Address] = set()

    def __str__(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.addresses)

    def lost(self, address: Address) -> None:
        """The link to `address` broke after it took the registration: the next round starts
        elsewhere (a leader cut off would cost a connect timeout before any other is tried)."""
        self._silent.add(address)

    def round(self) -> list[Address]:
        """The order of the next round: the last central that took the registration, then the
        list, and last of all those that did not answer in the round before."""
        first = [self._last_leader] if self._last_leader is not None else []
        order = first + [a for a in self.addresses if a != self._last_leader]
        return [a for a in order if a not in self._silent] + [a for a in order if a in self._silent]

    async def reach(
        self, attempt: Callable[[str, int], Awaitable[T]], retriable: Callable[[BaseException], bool]
    ) -> tuple[T, Address]:
        """`attempt` on each central of one round until one succeeds, and which one it was.

        When none did, the failure that says most is raised: a refusal from a central that
        leads over a standby's pointer. A failure `retriable` does not wave through (wrong
        credentials) ends the round at once.
        """
        queue = deque(self.round())
        tried: set[Address] = set()
        silent: set[Address] = set()
        failure: BaseException | None = None
        while queue:
            address = queue.popleft()
            if address in tried:
                continue
            tried.add(address)
            try:
                result = await attempt(*address)
            except Exception as exc:
                if not retriable(exc):
                    raise
                if not isinstance(exc, Refused):
                    silent.add(address)
                if failure is None or not _from_a_standby(exc):
                    failure = exc  # a leader's own refusal says more than a standby's pointer
                leader = named_leader(exc)
                if leader is not None and leader not in tried:
                    # Next, unless it did not answer last round: a standby names a dead leader
                    # until its lease runs out.
                    if leader in self._silent:
                        queue.append(leader)
                    else:
                        queue.appendleft(leader)
                continue
            self._last_leader = address
            self._silent = silent
            return result, address
        self._silent = silent
        assert failure is not None  # the list is never empty
        raise failure


def _from_a_standby(exc: BaseException) -> bool:
    return isinstance(exc, Refused) and exc.code == "not_leader"


def named_leader(exc: BaseException) -> Address | None:
    """The leader a standby's refusal names, if it names one well formed."""
    if not (isinstance(exc, Refused) and exc.code == "not_leader" and exc.leader):
        return None
    host, _, port = exc.leader.rpartition(":")
    if not (host and port.isdigit()):
        return None
    return host.strip("[]"), int(port)


async def register(
    host: str, port: int, message: Callable[[], Frame], *, timeout_s: float, tls: ssl.SSLContext | None
) -> tuple[FramedConnection, Frame]:
    """A connection to the central at `host:port` that took `message()` (a `Register`, made once
    the link is up) and its answer; closed if it did not take it."""
    conn = await FramedConnection.open(host, port, timeout_s=timeout_s, tls=tls)
    try:
        return conn, await conn.request(message(), timeout_s=timeout_s)
    except BaseException:
        await conn.close()
        raise
