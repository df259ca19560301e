"""Simulated drivers: each asks a random CP for a charge, waits for the answer and the ticket, repeats.

The fleet's request rate is a Poisson process: each driver's next request is
due an exponential gap after its previous one was sent (mean drivers / rate),
so the fleet sends about `--request-rate` per second as long as sessions are
shorter than that gap. Updates reach the drivers through one shared consumer.
An enrolled driver (its token given) proves each request, as `evcharge driver` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from evcharge.devtools.sim import split
from evcharge.devtools.sim.fleet import Publisher
from evcharge.devtools.sim.report import SimStats
from evcharge.driver.conversation import DriverUpdate, Kind, Waiting, hear
from evcharge.protocol.messages import ChargeRequest, RequestAccepted, RequestDenied, Ticket
from evcharge.protocol.signing import PROOF_HEADER, driver_key
from evcharge.protocol.topics import dead_letter
from evcharge.runtime.inbox import Delivery
from evcharge.runtime.waits import sleep_unless

T = TypeVar("T")
ANSWER_TIMEOUT_S = 30.0  # a request with no accept/deny within this is an error
TICKET_SLACK_S = 30.0  # beyond the session's own length
NO_CP_YET_S = 0.2


class Abandoned(Exception):
    """The run was interrupted while this request was waiting."""


@dataclass
class _Request:
    waiting: Waiting
    sent_at: float  # monotonic
    answer: asyncio.Future[RequestAccepted | RequestDenied]
    ticket: asyncio.Future[Ticket]


@dataclass(frozen=True)
class DriverSettings:
    drivers: int
    driver_prefix: str
    request_rate: float  # requests per second for the whole fleet
    ramp_up_s: float
    session_s: float
    start_after_s: float = 0.0  # the drivers' ramp-up begins this long after the run's start
    first_driver: int = 1  # a worker of `--processes N` runs drivers first_driver ... on
    fleet_drivers: int | None = None  # of a fleet this size (the ids' width); None: `drivers`

    def driver_ids(self) -> list[str]:
        numbers = range(self.first_driver, self.first_driver + self.drivers)
        return split.ids(self.driver_prefix, numbers, self.fleet_drivers or self.drivers)


class SimDriver:
    def __init__(
        self,
        driver_id: str,
        settings: DriverSettings,
        publisher: Publisher,
        pick: Callable[[], str | None],
        stats: SimStats,
        rng: random.Random,
        token: str | None = None,
    ) -> None:
        self.driver_id = driver_id
        self._proof = (PROOF_HEADER, driver_key(token)) if token else None
        self._settings = settings
        self._publisher = publisher
        self._pick = pick
        self._stats = stats
        self._rng = rng
        self._current: _Request | None = None

    def _gap_s(self) -> float:
        return self._rng.expovariate(self._settings.request_rate / self._settings.drivers)

    async def run(self, stop: asyncio.Event) -> None:
        # The first request too is one gap away: a fleet that starts all at once
        # would otherwise open with a burst far above the requested rate.
        due = time.monotonic() + self._gap_s()
        while not await sleep_unless(stop, max(0.0, due - time.monotonic())):
            cp_id = self._pick()
            if cp_id is None:
                due = time.monotonic() + NO_CP_YET_S
                continue
            sent_at = time.monotonic()
            try:
                await self._request(cp_id)
            except Abandoned:
                return
            due = sent_at + self._gap_s()

    async def _request(self, cp_id: str) -> None:
        loop = asyncio.get_running_loop()
        request = self._current = _Request(
            waiting=Waiting(uuid.uuid4().hex, cp_id, 0),
            sent_at=time.monotonic(),
            answer=loop.create_future(),
            ticket=loop.create_future(),
        )
        try:
            message = ChargeRequest(
                driver_id=self.driver_id, cp_id=cp_id, request_id=request.waiting.request_id
            )
            if not await self._publisher.publish(message, self._proof):
                return  # counted by the publisher
            self._stats.requests_sent += 1
            answer = await _within(request.answer, ANSWER_TIMEOUT_S)
            if answer is None:
                self._stats.error(f"no answer to a request within {ANSWER_TIMEOUT_S:g} s")
                return
            if isinstance(answer, RequestDenied):
                return
            ticket_timeout = self._settings.session_s + TICKET_SLACK_S
            if await _within(request.ticket, ticket_timeout) is None:
                self._stats.error(f"no ticket within {ticket_timeout:g} s of an accepted request")
        finally:
            self._current = None

    def on_update(self, update: DriverUpdate) -> None:
        """An update from central, for this driver's current request or for one it gave up on."""
        request = self._current
        elapsed = time.monotonic() - request.sent_at if request else 0.0
        heard = hear(request.waiting if request else None, update)
        if request is None or not heard.mine:
            if heard.kind is not Kind.PROGRESS:
                self._stats.late_updates += 1
            return
        if heard.kind is Kind.PROGRESS:
            if heard.first_reading:
                self._stats.record("first_reading", elapsed)
        elif heard.kind in (Kind.TICKET, Kind.REVISION):
            assert isinstance(update, Ticket)
            if not request.ticket.done():
                self._stats.tickets[update.end_reason.value] += 1
                self._stats.record("ticket", elapsed)
                request.ticket.set_result(update)
        elif not request.answer.done():
            assert isinstance(update, (RequestAccepted, RequestDenied))
            if isinstance(update, RequestAccepted):
                self._stats.accepted += 1
                self._stats.record("accepted", elapsed)
            else:
                self._stats.denied[update.code.value] += 1
                self._stats.record("denied", elapsed)
            request.answer.set_result(update)

    def abandon(self) -> None:
        """Fail the one waiter this driver awaits now (the answer, or else the ticket)."""
        request = self._current
        if request is not None:
            if not request.answer.done():
                request.answer.set_exception(Abandoned())
            elif request.waiting.session_id is not None and not request.ticket.done():
                request.ticket.set_exception(Abandoned())


async def _within(waiter: asyncio.Future[T], timeout_s: float) -> T | None:
    """The waiter's result, or None after `timeout_s` (Abandoned if the run was interrupted).

    On timeout the waiter is cancelled: an answer that comes later finds it done
    and is counted as a late update.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await waiter
    except TimeoutError:
        return None


class DriverFleet:
    """Every simulated driver, and the dispatcher of the one `driver_updates` consumer."""

    def __init__(
        self,
        settings: DriverSettings,
        publisher: Publisher,
        pick: Callable[[], str | None],
        stats: SimStats,
        rng: random.Random,
        tokens: dict[str, str] | None = None,
    ) -> None:
        """`tokens`: each driver's, when central requires enrolled drivers."""
        self.settings = settings
        tokens = tokens or {}
        self.drivers = {
            driver_id: SimDriver(driver_id, settings, publisher, pick, stats, rng, tokens.get(driver_id))
            for driver_id in settings.driver_ids()
        }
        self._stats = stats
        self._publisher = publisher

    async def on_updates(self, deliveries: list[Delivery[DriverUpdate]]) -> None:
        for delivery in deliveries:
            driver = self.drivers.get(delivery.message.driver_id)
            if driver is not None:  # else another simulator's or a real driver's update
                driver.on_update(delivery.message)

    async def dead_letter(self, record: Any, reason: str) -> None:
        """Set aside like a real driver does; the inbox's warning is counted as an error of the run."""
        await self._publisher.publish_raw(
            *dead_letter(
                record.topic, record.partition, record.offset, record.key, record.value, "sim-drivers", reason
            )
        )

    async def run(self, stop: asyncio.Event, abort: asyncio.Event) -> None:
        """Start the drivers over the ramp-up; after `stop`, each finishes the request it waits on.

        `abort` (the run was interrupted) makes every waiting driver give up at once.
        """
        async with asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(self._abandon_when(abort), name="abandon on interrupt")
            async with asyncio.TaskGroup() as drivers:
                started = time.monotonic() + self.settings.start_after_s
                step_s = self.settings.ramp_up_s / max(1, len(self.drivers))
                for n, driver in enumerate(self.drivers.values()):
                    if await sleep_unless(stop, max(0.0, started + n * step_s - time.monotonic())):
                        break
                    drivers.create_task(driver.run(stop), name=f"driver {driver.driver_id}")
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _abandon_when(self, abort: asyncio.Event) -> None:
        await abort.wait()
        for driver in self.drivers.values():
            driver.abandon()
