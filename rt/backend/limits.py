"""`LocalRateLimit`: token buckets in this process, on Trio's clock (the `RateLimit` contract)."""

from __future__ import annotations

import trio

from rt.core.ratelimit import TokenBuckets


class LocalRateLimit:
    def __init__(self, rate: float, burst: float) -> None:
        self.buckets = TokenBuckets(rate, burst)

    async def take(self, key: str) -> float:
        return self.buckets.take(key, trio.current_time())

    async def refund(self, key: str) -> None:
        self.buckets.refund(key)
