"""The bounded buffer between vLLM's threads and the sender thread.

The hot path only appends a tuple: no serialisation, no I/O, no logging. When the buffer is
full the *newest* event is dropped and counted by reason: the events already buffered belong
to requests in flight whose trails should stay whole, and the next batch carries a gap marker
so the trail says exactly how much is missing.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

RawEvent = tuple[Any, ...]


class EventBuffer:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"buffer capacity must be > 0, got {capacity}")
        self.capacity = capacity
        self._events: deque[RawEvent] = deque()
        self._drop_lock = threading.Lock()
        self._dropped: Counter[str] = Counter()
        self._dropped_total: Counter[str] = Counter()
        #: Set by offer() when the sender should wake early (a batch worth is waiting).
        self.wakeup = threading.Event()
        self.batch_hint = 1024

    def offer(self, event: RawEvent) -> None:
        """Called on vLLM's threads. deque.append is atomic under the GIL."""
        events = self._events
        size = len(events)
        if size >= self.capacity:
            self.count_drop("buffer_full")
            return
        events.append(event)
        if size == self.batch_hint:
            self.wakeup.set()

    def count_drop(self, reason: str, n: int = 1) -> None:
        # Rare path; the lock keeps counts exact when several threads drop at once.
        with self._drop_lock:
            self._dropped[reason] += n
            self._dropped_total[reason] += n

    def drain(self, max_events: int) -> list[RawEvent]:
        """Called only by the sender thread (single consumer)."""
        events = self._events
        out: list[RawEvent] = []
        popleft = events.popleft
        for _ in range(min(max_events, len(events))):
            out.append(popleft())
        return out

    def take_drops(self) -> dict[str, int]:
        """Drops since the last call, by reason (they go into the next gap marker)."""
        with self._drop_lock:
            taken = dict(self._dropped)
            self._dropped.clear()
        return taken

    def dropped_total(self) -> dict[str, int]:
        """Every drop since this buffer was created, by reason."""
        with self._drop_lock:
            return dict(self._dropped_total)

    def restore_drops(self, drops: dict[str, int]) -> None:
        """Puts taken-but-undelivered drop counts back (their gap marker was itself lost)."""
        with self._drop_lock:
            for reason, n in drops.items():
                self._dropped[reason] += n

    def __len__(self) -> int:
        return len(self._events)
