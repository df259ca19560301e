"""Retry-or-give-up in one place, and one calm log line per change of a link's state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka import errors as kafka_errors

from evcharge.errors import ConnectionLost, RequestTimeout
from evcharge.runtime.backoff import Backoff

T = TypeVar("T")


def is_retriable(exc: BaseException) -> bool:
    """True for an outage we expect to pass (peer down, slow, restarting); False for a bug."""
    if isinstance(exc, kafka_errors.KafkaError):
        return bool(getattr(exc, "retriable", False)) or isinstance(
            exc,
            (
                kafka_errors.KafkaConnectionError,
                kafka_errors.KafkaTimeoutError,
                kafka_errors.NodeNotReadyError,
                kafka_errors.CoordinatorNotAvailableError,
                kafka_errors.NotCoordinatorError,
                kafka_errors.UnknownTopicOrPartitionError,
                kafka_errors.CommitFailedError,
            ),
        )
    return isinstance(exc, (OSError, TimeoutError, ConnectionLost, RequestTimeout))


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = exc.__class__.__name__
    return f"{name}: {text}" if text and len(text) < 160 else name


class LinkWatch:
    """Logs 'unreachable' once when a link goes down and 'restored' once when it is back."""

    def __init__(self, log: logging.Logger, what: str, address: str) -> None:
        self._log = log
        self.what = what
        self.address = address
        self.up: bool | None = None

    def failed(self, exc: BaseException, retry_in_s: float | None = None) -> None:
        if self.up is False:
            self._log.debug("%s still unreachable: %s", self.what, describe(exc))
            return
        self.up = False
        retry = f", retrying in {retry_in_s:.1f} s" if retry_in_s is not None else ", retrying"
        self._log.warning("cannot reach %s at %s (%s)%s", self.what, self.address, describe(exc), retry)

    def succeeded(self) -> None:
        if self.up is False:
            self._log.info("%s at %s is reachable again", self.what, self.address)
        self.up = True


async def retry_until_done(
    operation: Callable[[], Awaitable[T]],
    *,
    watch: LinkWatch,
    backoff: Backoff | None = None,
) -> T:
    """Run `operation` until it succeeds; expected outages are waited out, anything else raises."""
    backoff = backoff or Backoff()
    while True:
        try:
            result = await operation()
        except Exception as exc:
            if not is_retriable(exc):
                raise
            delay = backoff.next_delay()
            watch.failed(exc, delay)
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        watch.succeeded()
        return result
