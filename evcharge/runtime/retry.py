"""Retry or give up, decided in one place: the delays, which failures are worth waiting out,
and one calm log line per change of a link's state.

Every long-lived link (Kafka consumers and producers, the monitor's TCP link to
central, the outbox relay) runs through `keep_trying` with a `RetryPolicy`, so
an outage looks and behaves the same everywhere; tests pass a policy scaled to
milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from aiokafka import errors as kafka_errors

from evcharge.errors import EvchargeError
from evcharge.runtime.tls import is_refusal

T = TypeVar("T")

_KAFKA_OUTAGES = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.CoordinatorNotAvailableError,
    kafka_errors.NotCoordinatorError,
    kafka_errors.UnknownTopicOrPartitionError,
    kafka_errors.CommitFailedError,
    kafka_errors.NotLeaderForPartitionError,
    kafka_errors.NotEnoughReplicasError,
    kafka_errors.NotEnoughReplicasAfterAppendError,
    kafka_errors.RequestTimedOutError,
)


def is_retriable(exc: BaseException) -> bool:
    """True for an outage we expect to pass (peer down, slow, restarting, disk full); False for a bug."""
    if isinstance(exc, EvchargeError):
        return bool(exc.retriable)
    if is_refusal(exc):
        return False  # a certificate refused: the next handshake ends the same way
    if isinstance(exc, kafka_errors.KafkaError):
        return bool(getattr(exc, "retriable", False)) or isinstance(exc, _KAFKA_OUTAGES)
    # LookupError: topics that another process is still creating.
    return isinstance(exc, (OSError, TimeoutError, LookupError))


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = exc.__class__.__name__
    if not text or len(text) >= 160:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


@dataclass
class Backoff:
    """Yields the next delay in seconds each time `next_delay()` is called.

    The first delay is jittered so that many clients that lost the same peer do
    not all come back in the same instant; later delays grow by `factor` up to
    `max_delay_s`. `reset()` after a success starts the sequence again.
    """

    initial_delay_s: float = 0.2
    max_delay_s: float = 5.0
    factor: float = 1.6
    jitter: float = 0.25
    rng: Callable[[], float] = field(default=random.random, repr=False)
    _attempt: int = field(default=0, init=False, repr=False)

    def next_delay(self) -> float:
        base = min(self.initial_delay_s * self.factor**self._attempt, self.max_delay_s)
        # Past the cap the exponent no longer matters; bounding it avoids a float overflow
        # in an outage that lasts for hours.
        self._attempt = min(self._attempt + 1, 64)
        # Spread delays over [base*(1-jitter), base*(1+jitter)], but never past the cap.
        spread = 1.0 + self.jitter * (2.0 * self.rng() - 1.0)
        return min(base * spread, self.max_delay_s)

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt

    def __iter__(self) -> Iterator[float]:
        while True:
            yield self.next_delay()


def scaled(backoff: Backoff, scale: float) -> Backoff:
    """The same policy with every delay multiplied by `scale` (tests run in milliseconds)."""
    return Backoff(
        initial_delay_s=backoff.initial_delay_s * scale,
        max_delay_s=backoff.max_delay_s * scale,
        factor=backoff.factor,
        jitter=backoff.jitter,
        rng=backoff.rng,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How a link waits between attempts, and which failures it waits out."""

    initial_delay_s: float = 0.2
    max_delay_s: float = 2.0
    factor: float = 1.6
    jitter: float = 0.25
    retriable: Callable[[BaseException], bool] = is_retriable

    def backoff(self) -> Backoff:
        return Backoff(self.initial_delay_s, self.max_delay_s, self.factor, self.jitter)

    def scaled(self, scale: float) -> RetryPolicy:
        return RetryPolicy(
            self.initial_delay_s * scale, self.max_delay_s * scale, self.factor, self.jitter, self.retriable
        )


DEFAULT_POLICY = RetryPolicy()


class LinkWatch:
    """Logs 'unreachable' once when a link goes down and 'restored' once when it is back."""

    REACH = ("cannot reach {what} at {address} ({error}){retry}", "{what} at {address} is reachable again")

    def __init__(
        self, log: logging.Logger, what: str, address: str, wording: tuple[str, str] = REACH
    ) -> None:
        self._log = log
        self.what = what
        self.address = address
        self._down, self._up = wording
        self.up: bool | None = None
        self.last_error = ""

    def failed(self, exc: BaseException, retry_in_s: float | None = None) -> None:
        self.last_error = describe(exc)
        if self.up is False:
            self._log.debug("%s still failing: %s", self.what, self.last_error)
            return
        self.up = False
        retry = f", retrying in {retry_in_s:.1f} s" if retry_in_s is not None else ", retrying"
        self._log.warning(
            self._down.format(what=self.what, address=self.address, error=self.last_error, retry=retry)
        )

    def succeeded(self) -> None:
        if self.up is False:
            self._log.info(self._up.format(what=self.what, address=self.address))
        self.up = True


class Attempts:
    """One retry loop's state: its backoff and the watch that says when the link went down."""

    def __init__(self, policy: RetryPolicy, watch: LinkWatch) -> None:
        self.policy = policy
        self.watch = watch
        self._backoff = policy.backoff()

    def succeeded(self) -> None:
        """The link works again: the next outage starts from the shortest delay."""
        self._backoff.reset()
        self.watch.succeeded()

    async def failed(self, exc: BaseException, stop: asyncio.Event | None = None) -> None:
        """Wait before the next attempt; an error that is not an outage is raised again."""
        if not self.policy.retriable(exc):
            raise exc
        delay = self._backoff.next_delay()
        self.watch.failed(exc, delay)
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()


async def keep_trying(
    session: Callable[[Attempts], Awaitable[T]],
    *,
    watch: LinkWatch,
    stop: asyncio.Event | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> T | None:
    """Run `session` until it returns; outages are waited out by the policy, anything else raises.

    The session calls `attempts.succeeded()` once its link works, so a long-lived
    session that fails after an hour starts again from the shortest delay. Returns
    None when `stop` was set before a session returned.
    """
    attempts = Attempts(policy, watch)
    while stop is None or not stop.is_set():
        try:
            return await session(attempts)
        except Exception as exc:
            await attempts.failed(exc, stop)
    return None


async def retry_until_done(
    operation: Callable[[], Awaitable[T]],
    *,
    watch: LinkWatch,
    policy: RetryPolicy = DEFAULT_POLICY,
    stop: asyncio.Event | None = None,
) -> T | None:
    """Run one `operation` until it succeeds (a publish, a query), then report the link up."""

    async def once(attempts: Attempts) -> T:
        result = await operation()
        attempts.succeeded()
        return result

    return await keep_trying(once, watch=watch, stop=stop, policy=policy)
