"""Per-token query rate limits: a token bucket for each token id.

A valid token must not let its holder run the agent's CPU or its access records' budget down
at line rate. Each token id has a bucket of `burst` calls that refills at `rate` per second;
a call finding it empty is refused (RESOURCE_EXHAUSTED / 429, reason `rate_limited`, counted and
on record like every refusal). Buckets of tokens idle for a minute are dropped, so memory is
bounded by the tokens in use.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBuckets:
    """`rate` calls per second per token id, `burst` at once; rate 0 means no limit."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, max(burst, 1.0), clock
        self._buckets: dict[str, tuple[float, float]] = {}  # token id -> (tokens, last refill)
        self._swept = clock()

    def take(self, token_id: str) -> bool:
        """Whether `token_id` may make one more call now (and counts it if so)."""
        if self.rate <= 0:
            return True
        now = self.clock()
        if now - self._swept > 60.0:
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}
            self._swept = now
        level, last = self._buckets.get(token_id, (self.burst, now))
        level = min(self.burst, level + (now - last) * self.rate)
        if level < 1.0:
            self._buckets[token_id] = (level, now)
            return False
        self._buckets[token_id] = (level - 1.0, now)
        return True
