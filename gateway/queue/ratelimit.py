"""Rate limits shared by every process through Redis (REDIS_URL), or kept in-process without it.

One wrapper over the `limits` library, so the send throttle and the anti-pumping limits count the
same way. Rules are `limits` strings ("3/day", "1/second").
"""

from __future__ import annotations

import time
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from gateway.services.ports import Verdict


@lru_cache(maxsize=256)
def rule(text: str) -> RateLimitItem:
    """A parsed limit; raises ValueError on a malformed rule."""
    return parse(text)


class Limiter:
    """The Limiter port over `limits`: Redis when given its URL, else this process's memory."""

    def __init__(self, redis_url: str | None, namespace: str = "smsgate"):
        self.storage = storage_from_string(redis_url) if redis_url else MemoryStorage()
        self.shared = redis_url is not None
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.namespace = namespace

    def hit(self, limit: str, *keys: str) -> Verdict:
        """Take one slot under `limit` for `keys` if one is free."""
        item = rule(limit)
        identifiers = (self.namespace, *keys)
        if self.strategy.hit(item, *identifiers):
            return Verdict(True, 0.0)
        reset_at, _ = self.strategy.get_window_stats(item, *identifiers)
        return Verdict(False, max(0.0, reset_at - time.time()))

    def test(self, limit: str, *keys: str) -> bool:
        """Would a hit be allowed now? (Takes nothing.)"""
        return self.strategy.test(rule(limit), self.namespace, *keys)

    def clear(self, limit: str, *keys: str) -> None:
        self.strategy.clear(rule(limit), self.namespace, *keys)

    def reset(self) -> None:
        """Forget every counter (tests)."""
        self.storage.reset()
