"""At most one engine-stats snapshot per engine per interval, and always the last of a burst.

A hook sends a snapshot per engine step; the agent publishes (to Kafka and the on-disk history
that `stats export` reads) one per engine per `interval`. Dropping every snapshot that came
within the interval lost the end of every burst: the last row of an export said 236 finished
requests when vLLM said 260, because the final snapshots came less than an interval after the
previous published one and nothing came after them. Here a snapshot within the interval waits
(replacing the one waiting before it) and goes out when the interval has passed: a trailing
edge, as a debounce with a maximum wait. `flush` sends what waits (at shutdown).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class TrailingThrottle(Generic[K, T]):
    """`emit(item)` at most once per `interval` per key; the newest item offered within an
    interval is emitted when it ends. Timers run on the running event loop; offered outside
    one (no loop), a waiting item goes out with the next offer of its key or at `flush`."""

    def __init__(self, interval: float, emit: Callable[[T], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._emit = emit
        self._clock = clock
        self._last: dict[K, float] = {}
        self._waiting: dict[K, T] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}

    def offer(self, key: K, item: T) -> None:
        now = self._clock()
        wait = self._last.get(key, float("-inf")) + self.interval - now
        if wait <= 0:
            self._waiting.pop(key, None)
            self._send(key, item, now)
            return
        self._waiting[key] = item
        if key in self._timers:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timers[key] = loop.call_later(wait, self._due, key)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _due(self, key: K) -> None:
        self._timers.pop(key, None)
        item = self._waiting.pop(key, None)
        if item is not None:
            self._send(key, item, self._clock())

    def _send(self, key: K, item: T, now: float) -> None:
        self._last[key] = now
        self._emit(item)

    def flush(self) -> None:
        """Sends everything waiting now (the agent is stopping)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        waiting, self._waiting = self._waiting, {}
        now = self._clock()
        for key, item in waiting.items():
            self._send(key, item, now)
