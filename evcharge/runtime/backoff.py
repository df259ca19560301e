"""Retry delays: jittered, exponential, capped, and reset after a success."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


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
