"""Per-key rate limits that answer at once (429) instead of making the caller wait."""

from __future__ import annotations

import math
from collections import OrderedDict

from aiolimiter import AsyncLimiter

MAX_KEYS = 10_000  # the least recently seen keys are forgotten first (their budget refills)


class KeyedLimiter:
    """Up to `per_minute` requests per key in a burst, refilled evenly (aiolimiter's leaky bucket)."""

    def __init__(self, per_minute: int, *, max_keys: int = MAX_KEYS) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._limiters: OrderedDict[str, AsyncLimiter] = OrderedDict()

    @property
    def retry_after(self) -> int:
        """Seconds until one more request fits."""
        return max(1, math.ceil(60 / self.per_minute))

    async def allow(self, key: str) -> bool:
        limiter = self._limiters.pop(key, None) or AsyncLimiter(self.per_minute, 60)
        self._limiters[key] = limiter
        if len(self._limiters) > self.max_keys:
            self._limiters.popitem(last=False)
        if not limiter.has_capacity():
            return False
        await limiter.acquire()  # has capacity: returns without waiting
        return True
