from __future__ import annotations

import pytest

from meshkey.ratelimit import TokenBucket


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert [bucket.allow(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.allow(0.05)  # half a token
    assert bucket.allow(0.1)
    assert bucket.available(100.0) == 5  # never more than the burst


def test_time_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.allow(10.0)
    assert not bucket.allow(5.0)
    assert not bucket.allow(10.5)
    assert bucket.allow(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0.5)])
def test_nonsense_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(rate, burst)
