"""`wait_first` and `sleep_unless`: woken by any event, bounded by the deadline, leaving nothing behind."""

from __future__ import annotations

import asyncio
import time

import pytest

from evcharge.runtime.waits import sleep_unless, wait_first


async def test_returns_when_any_event_is_set() -> None:
    first, second = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, second.set)
    started = time.monotonic()
    await wait_first(first, second, timeout_s=10)
    assert second.is_set() and not first.is_set()
    assert time.monotonic() - started < 5


async def test_returns_at_the_deadline_when_nothing_is_set() -> None:
    event = asyncio.Event()
    started = time.monotonic()
    await wait_first(event, timeout_s=0.05)
    assert time.monotonic() - started >= 0.05
    assert not event.is_set()


async def test_an_event_already_set_returns_at_once() -> None:
    event = asyncio.Event()
    event.set()
    await asyncio.wait_for(wait_first(asyncio.Event(), event), timeout=5)


async def test_leaves_no_waiter_on_the_events() -> None:
    """A stop event shared by thousands of monitors must not grow with every wait on it."""
    stop, other = asyncio.Event(), asyncio.Event()
    for _ in range(100):
        await wait_first(stop, other, timeout_s=0)
    other.set()
    await wait_first(stop, other)
    # Set now, `stop` wakes only those waiting now: none are left from the waits above.
    assert not stop._waiters and not other._waiters  # type: ignore[attr-defined]


async def test_a_cancelled_wait_is_cancelled_and_leaves_no_waiter() -> None:
    stop = asyncio.Event()
    waiting = asyncio.create_task(wait_first(stop))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not stop._waiters  # type: ignore[attr-defined]
    stop.set()  # the cancelled wait's future is not woken twice


async def test_each_of_many_waiters_on_one_event_is_woken() -> None:
    stop = asyncio.Event()
    waits = [asyncio.create_task(wait_first(stop, asyncio.Event(), timeout_s=10)) for _ in range(50)]
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*waits), timeout=5)


async def test_sleep_unless_says_whether_stop_was_set() -> None:
    stop = asyncio.Event()
    assert await sleep_unless(stop, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, stop.set)
    assert await sleep_unless(stop, 10) is True
