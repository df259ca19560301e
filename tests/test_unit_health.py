"""Unit tests for evcharge.cp.health: when repeated failed checks make a CP KO, and OK again."""

from __future__ import annotations

import pytest

from evcharge.cp.health import HealthTracker
from evcharge.protocol.messages import Health


def test_no_verdict_before_the_first_check() -> None:
    tracker = HealthTracker()
    assert tracker.health is None
    assert tracker.failures == 0


def test_ok_at_the_first_good_check() -> None:
    tracker = HealthTracker()
    assert tracker.observe(True) is Health.OK
    assert tracker.health is Health.OK


def test_ok_is_reported_only_once() -> None:
    tracker = HealthTracker()
    assert [tracker.observe(True) for _ in range(5)] == [Health.OK, None, None, None, None]
    assert tracker.health is Health.OK


def test_failures_below_the_threshold_give_no_verdict_at_start() -> None:
    tracker = HealthTracker(threshold=3)
    assert tracker.observe(False) is None
    assert tracker.observe(False) is None
    assert tracker.health is None
    assert tracker.failures == 2


@pytest.mark.parametrize("threshold", [1, 2, 3, 5])
def test_ko_only_after_threshold_consecutive_failures(threshold: int) -> None:
    tracker = HealthTracker(threshold=threshold)
    tracker.observe(True)
    results = [tracker.observe(False) for _ in range(threshold)]
    assert results == [None] * (threshold - 1) + [Health.KO]
    assert tracker.health is Health.KO


@pytest.mark.parametrize("threshold", [1, 3])
def test_ko_from_the_start_after_threshold_failures(threshold: int) -> None:
    tracker = HealthTracker(threshold=threshold)
    results = [tracker.observe(False) for _ in range(threshold)]
    assert results[-1] is Health.KO
    assert all(r is None for r in results[:-1])


def test_a_success_in_between_resets_the_count() -> None:
    tracker = HealthTracker(threshold=3)
    tracker.observe(True)
    pattern = [False, False, True, False, False, True, False, False]
    assert [tracker.observe(ok) for ok in pattern] == [None] * len(pattern)
    assert tracker.health is Health.OK
    assert tracker.failures == 2
    assert tracker.observe(False) is Health.KO


def test_ko_is_reported_only_once() -> None:
    tracker = HealthTracker(threshold=2)
    tracker.observe(True)
    results = [tracker.observe(False) for _ in range(6)]
    assert results == [None, Health.KO, None, None, None, None]
    assert tracker.health is Health.KO


def test_ok_again_at_the_first_good_check_after_ko() -> None:
    tracker = HealthTracker(threshold=3)
    tracker.observe(True)
    for _ in range(4):
        tracker.observe(False)
    assert tracker.health is Health.KO
    assert tracker.observe(True) is Health.OK
    assert tracker.health is Health.OK
    assert tracker.failures == 0
    assert tracker.observe(True) is None


def test_after_recovery_ko_needs_threshold_failures_again() -> None:
    tracker = HealthTracker(threshold=3)
    for ok in [True, False, False, False, True]:
        tracker.observe(ok)
    assert tracker.health is Health.OK
    assert tracker.observe(False) is None
    assert tracker.observe(False) is None
    assert tracker.observe(False) is Health.KO


def test_changes_sequence_over_a_long_run() -> None:
    tracker = HealthTracker(threshold=2)
    checks = [False, True, False, False, False, True, True, False, True, False, False]
    changes = [(i, c) for i, ok in enumerate(checks) if (c := tracker.observe(ok)) is not None]
    assert changes == [(1, Health.OK), (3, Health.KO), (5, Health.OK), (10, Health.KO)]
