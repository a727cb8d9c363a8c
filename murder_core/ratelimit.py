"""A token bucket, fed the clock by its caller so it is testable without sleeping."""

from __future__ import annotations


class TokenBucket:
    """Allows ``rate`` bytes per second on average with bursts up to ``burst`` bytes.

    ``rate`` of 0 means unlimited. ``take`` may drive the balance negative: callers
    ask ``delay`` how long to wait before the next send, which keeps whole blocks
    intact instead of splitting them to fit the bucket.
    """

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 4, 64 * 1024)
        self._tokens = self.burst
        self._stamp = now

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)

    def take(self, amount: int, now: float) -> None:
        if self.unlimited:
            return
        self._refill(now)
        self._tokens -= amount

    def delay(self, now: float) -> float:
        """Seconds to wait until the balance is non-negative again (0 if it is)."""
        if self.unlimited:
            return 0.0
        self._refill(now)
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
