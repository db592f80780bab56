"""Token buckets keyed by anything hashable. Pure: the caller passes the time."""

from __future__ import annotations

from collections.abc import Hashable


class TokenBuckets:
    """`rate` tokens a second up to `burst`, one bucket per key.

    `take(key, now)` spends one token and returns 0.0, or returns the
    seconds until one is available (spending nothing). Buckets that have
    refilled completely are forgotten, so memory stays bounded by the keys
    active in the last `burst / rate` seconds.
    """

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def take(self, key: Hashable, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > 10_000:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        self._buckets = {
            k: (t, s)
            for k, (t, s) in self._buckets.items()
            if t + (now - s) * self.rate < self.burst
        }

    def refund(self, key: Hashable) -> None:
        """Give back the token the last `take` spent (the op turned out to be free)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets[key] = (min(self.burst, bucket[0] + 1), bucket[1])
