from __future__ import annotations

import random

import pytest

from meshkey.retry import RetrySchedule


def test_delays_double_up_to_the_maximum_without_jitter() -> None:
    schedule = RetrySchedule(0.5, 4.0, jitter=0)
    assert [schedule.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    schedule.reset()
    assert schedule.next_delay() == 0.5


def test_jitter_stays_within_its_fraction_and_comes_from_the_rng() -> None:
    one = RetrySchedule(1.0, 1.0, jitter=0.2, rng=random.Random(7))
    two = RetrySchedule(1.0, 1.0, jitter=0.2, rng=random.Random(7))
    delays = [one.next_delay() for _ in range(200)]
    assert delays == [two.next_delay() for _ in range(200)]
    assert all(d is not None and 0.8 <= d <= 1.2 for d in delays)
    assert len(set(delays)) > 100


def test_attempts_bound_the_schedule_until_reset() -> None:
    schedule = RetrySchedule(0.25, 0.25, jitter=0, attempts=3)
    assert schedule.next_deadline(10.0) == 10.25
    assert [schedule.next_delay(), schedule.next_delay()] == [0.25, 0.25]
    assert schedule.next_delay() is None
    assert schedule.given == 3
    schedule.reset()
    assert schedule.next_delay() == 0.25


@pytest.mark.parametrize(
    ("first", "maximum", "factor", "jitter"),
    [(0, 1, 2, 0), (2, 1, 2, 0), (1, 2, 0.5, 0), (1, 2, 2, 1.0)],
)
def test_nonsense_parameters_are_refused(
    first: float, maximum: float, factor: float, jitter: float
) -> None:
    with pytest.raises(ValueError, match="retry schedule"):
        RetrySchedule(first, maximum, factor=factor, jitter=jitter)
