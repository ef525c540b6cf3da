"""The pace of punches with a peer reached only through a relay (``UpgradeRetry``): on the one
RetrySchedule, with its jitter from the injected rng; 40 s after a retryable failure, then
60 s; a flat 60 s after a refusal no retry can change soon; a peer's retry_after honoured."""

from __future__ import annotations

import random

import pytest

from meshkey.nat.puncher import UpgradeRetry


def jitter(rng: random.Random) -> float:
    return rng.uniform(0.9, 1.1)  # RetrySchedule's jitter=0.1


def test_retryable_failures_back_off_from_40_to_60_seconds_with_the_rngs_jitter() -> None:
    retry, twin = UpgradeRetry(rng=random.Random(3)), random.Random(3)
    assert retry.after_failure(100.0, retryable=True) == pytest.approx(100 + 40 * jitter(twin))
    assert retry.after_failure(200.0, retryable=True) == pytest.approx(200 + 60 * jitter(twin))
    assert retry.after_failure(300.0, retryable=True) == pytest.approx(300 + 60 * jitter(twin))


def test_a_refusal_waits_the_reprobe_period_without_jitter_or_backoff() -> None:
    retry = UpgradeRetry(rng=random.Random(3))
    assert retry.after_failure(10.0, retryable=False) == 70.0
    assert retry.after_failure(10.0, retryable=False) == 70.0
    twin = random.Random(3)  # the refusals drew nothing: the backoff still starts at 40 s
    assert retry.after_failure(10.0, retryable=True) == pytest.approx(10 + 40 * jitter(twin))


def test_the_peers_retry_after_is_honoured() -> None:
    retry = UpgradeRetry(rng=random.Random(1))
    assert retry.after_failure(0.0, retryable=True, retry_after=500.0) == 500.0
    assert retry.after_failure(0.0, retryable=False, retry_after=90.0) == 90.0


def test_a_success_resets_the_backoff_and_a_lost_path_starts_over_from_it() -> None:
    retry, twin = UpgradeRetry(rng=random.Random(8)), random.Random(8)
    retry.after_failure(0.0, retryable=True)
    retry.after_failure(0.0, retryable=True)
    jitter(twin), jitter(twin)
    retry.after_success()
    assert retry.after_path_lost(1000.0) == pytest.approx(1000 + 40 * jitter(twin))
    assert retry.after_path_lost(2000.0) == pytest.approx(2000 + 60 * jitter(twin))
