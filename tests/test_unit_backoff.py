"""Unit tests for evcharge.runtime.retry: exponential, capped, jittered retry delays."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evcharge.runtime.retry import Backoff, scaled

NO_JITTER = 0.5  # rng() == 0.5 makes the spread exactly 1.0
# initial 0.2, factor 1.6, cap 5.0 (the defaults)
EXPECTED_BASES = [0.2, 0.32, 0.512, 0.8192, 1.31072, 2.097152, 3.3554432, 5.0, 5.0, 5.0]


def fixed(value: float):
    return lambda: value


def take(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next_delay() for _ in range(n)]


def test_without_jitter_delays_grow_by_factor_up_to_the_cap() -> None:
    backoff = Backoff(rng=fixed(NO_JITTER))
    assert take(backoff, len(EXPECTED_BASES)) == pytest.approx(EXPECTED_BASES)


def test_each_delay_is_factor_times_the_previous_until_capped() -> None:
    backoff = Backoff(initial_delay_s=0.1, max_delay_s=100.0, factor=3.0, rng=fixed(NO_JITTER))
    delays = take(backoff, 6)
    assert delays[0] == pytest.approx(0.1)
    for previous, current in itertools.pairwise(delays):
        assert current == pytest.approx(previous * 3.0)


def test_factor_one_keeps_the_initial_delay() -> None:
    backoff = Backoff(initial_delay_s=0.7, factor=1.0, rng=fixed(NO_JITTER))
    assert take(backoff, 5) == pytest.approx([0.7] * 5)


def test_max_jitter_up_never_exceeds_the_cap() -> None:
    backoff = Backoff(rng=fixed(1.0))
    delays = take(backoff, 30)
    assert delays[0] == pytest.approx(0.2 * 1.25)
    assert max(delays) <= backoff.max_delay_s
    # Once the base reaches the cap, +25% is clipped back to exactly the cap.
    assert delays[-1] == backoff.max_delay_s


def test_max_jitter_down_is_the_base_times_one_minus_jitter() -> None:
    backoff = Backoff(rng=fixed(0.0))
    expected = [base * 0.75 for base in EXPECTED_BASES]
    assert take(backoff, len(EXPECTED_BASES)) == pytest.approx(expected)


def test_jitter_zero_ignores_the_rng() -> None:
    for value in (0.0, 0.3, 1.0):
        backoff = Backoff(jitter=0.0, rng=fixed(value))
        assert take(backoff, len(EXPECTED_BASES)) == pytest.approx(EXPECTED_BASES)


@settings(max_examples=150, database=None, deadline=None)
@given(
    rolls=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=25),
    jitter=st.floats(min_value=0.0, max_value=0.9),
    factor=st.floats(min_value=1.0, max_value=4.0),
    initial=st.floats(min_value=0.001, max_value=2.0),
    cap=st.floats(min_value=0.001, max_value=60.0),
)
def test_jitter_spreads_within_plus_minus_jitter_and_respects_the_cap(
    rolls: list[float], jitter: float, factor: float, initial: float, cap: float
) -> None:
    it = iter(rolls)
    backoff = Backoff(
        initial_delay_s=initial,
        max_delay_s=cap,
        factor=factor,
        jitter=jitter,
        rng=lambda: next(it),
    )
    for attempt in range(len(rolls)):
        base = min(initial * factor**attempt, cap)
        delay = backoff.next_delay()
        assert delay <= cap
        assert base * (1 - jitter) * (1 - 1e-9) <= delay <= base * (1 + jitter) * (1 + 1e-9)
        assert delay > 0


def test_jitter_actually_spreads_the_delays() -> None:
    rolls = iter([0.0, 0.25, 0.5, 0.75, 1.0])
    delays = [Backoff(rng=lambda: next(rolls)).next_delay() for _ in range(5)]
    assert delays == pytest.approx([0.15, 0.175, 0.2, 0.225, 0.25])


def test_reset_starts_again_from_the_initial_delay() -> None:
    backoff = Backoff(rng=fixed(NO_JITTER))
    take(backoff, 6)
    assert backoff.attempts == 6
    backoff.reset()
    assert backoff.attempts == 0
    assert take(backoff, 3) == pytest.approx(EXPECTED_BASES[:3])


def test_attempts_counts_calls() -> None:
    backoff = Backoff(rng=fixed(NO_JITTER))
    assert backoff.attempts == 0
    take(backoff, 4)
    assert backoff.attempts == 4


def test_iteration_yields_the_same_sequence_as_next_delay() -> None:
    backoff = Backoff(rng=fixed(NO_JITTER))
    assert list(itertools.islice(backoff, 10)) == pytest.approx(EXPECTED_BASES)
    assert backoff.attempts == 10


def test_scaled_multiplies_every_delay() -> None:
    original = Backoff(rng=fixed(NO_JITTER))
    fast = scaled(original, 0.001)
    assert take(fast, len(EXPECTED_BASES)) == pytest.approx([d * 0.001 for d in EXPECTED_BASES])
    assert fast.max_delay_s == pytest.approx(0.005)
    assert fast.factor == original.factor
    assert fast.jitter == original.jitter


def test_scaled_keeps_the_rng_and_jitter() -> None:
    original = Backoff(rng=fixed(1.0))
    fast = scaled(original, 10.0)
    assert fast.next_delay() == pytest.approx(0.2 * 1.25 * 10.0)


def test_scaled_starts_fresh_and_leaves_the_original_alone() -> None:
    original = Backoff(rng=fixed(NO_JITTER))
    take(original, 5)
    fast = scaled(original, 2.0)
    assert fast.attempts == 0
    assert fast.next_delay() == pytest.approx(0.4)
    assert original.attempts == 5
    assert original.next_delay() == pytest.approx(EXPECTED_BASES[5])


def test_a_very_long_outage_keeps_returning_the_cap() -> None:
    backoff = Backoff(max_delay_s=2.0, rng=fixed(NO_JITTER))
    delays = take(backoff, 2000)
    assert delays[-1] == 2.0
