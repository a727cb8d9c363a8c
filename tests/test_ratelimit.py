from __future__ import annotations

import pytest

from murder_core.ratelimit import TokenBucket


def test_unlimited_never_delays() -> None:
    bucket = TokenBucket(0, now=0.0)
    bucket.take(10**12, now=0.0)
    assert bucket.delay(0.0) == 0.0


def test_delay_matches_the_rate_after_the_burst_is_spent() -> None:
    bucket = TokenBucket(1000.0, now=0.0, burst=500.0)
    bucket.take(500, now=0.0)
    assert bucket.delay(0.0) == 0.0
    bucket.take(1000, now=0.0)  # 1000 bytes into debt
    assert bucket.delay(0.0) == pytest.approx(1.0)
    assert bucket.delay(0.5) == pytest.approx(0.5)
    assert bucket.delay(1.0) == 0.0


def test_average_rate_over_time_is_capped() -> None:
    bucket = TokenBucket(10_000.0, now=0.0, burst=1_000.0)
    now, sent = 0.0, 0
    while now < 10.0:
        now += bucket.delay(now)
        bucket.take(100, now)
        sent += 100
    assert sent <= 10_000 * 10 + 1_000 + 100


def test_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="rate must be >= 0, got -1"):
        TokenBucket(-1, now=0.0)
