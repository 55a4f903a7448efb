"""The engine-stats side queue: snapshots sent best effort beside the record log.

Engine-stats snapshots are not audit records: they are not chained, bypass the record log
and go through a small bounded queue straight to `<prefix>.engine-stats` on the publisher's
sink. A full queue drops the newest snapshot (counted as `stats_dropped_queue_full`), a failed
send is counted as `stats_failed`, a sent one as `stats_published` — in the publisher's
`counters`, which metrics and the stats API read.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from vllm_audit_agent.delivery.sink import Sink

#: Snapshots waiting at most; a snapshot is worth little once newer ones are queued.
STATS_QUEUE_SIZE = 1000


class EngineStatsQueue:
    """Sends offered snapshots while the publisher is connected, until it stops.

    It shares the publisher's sink, counters and stop event: `connected` and `sleep` are the
    publisher's (its connection state, its jittered wait that wakes at once on shutdown)."""

    def __init__(self, sink: Sink, counters: Counter[str], stopping: asyncio.Event,
                 connected: Callable[[], bool],
                 sleep: Callable[[float], Awaitable[None]]) -> None:
        self.sink = sink
        self.counters = counters
        for key in ("stats_published", "stats_dropped_queue_full", "stats_failed"):
            counters[key] += 0  # born at 0: exported before the first snapshot
        self._stopping = stopping
        self._connected = connected
        self._sleep = sleep
        self._queue: deque[tuple[str, bytes, bytes]] = deque()
        self._ready = asyncio.Event()

    def offer(self, topic_suffix: str, key: str, record: dict[str, Any]) -> None:
        if len(self._queue) >= STATS_QUEUE_SIZE:
            self.counters["stats_dropped_queue_full"] += 1
            return
        self._queue.append((topic_suffix, key.encode(), orjson.dumps(record)))
        self._ready.set()

    def wake(self) -> None:
        """Lets `run` see the stop event (it waits on its own event, not on that one)."""
        self._ready.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self._ready.wait()
            self._ready.clear()
            while self._queue and self._connected():
                topic, key, value = self._queue.popleft()
                try:
                    sent = await self.sink.send(topic, key, value)
                    sent_future = asyncio.ensure_future(sent)
                    sent_future.add_done_callback(self._done)
                except Exception as exc:
                    if self.sink.classify(exc) is None:
                        raise
                    self.counters["stats_failed"] += 1
            if self._queue and not self._connected():
                await self._sleep(0.5)
                self._ready.set()

    def _done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.counters["stats_failed"] += 1
        else:
            self.counters["stats_published"] += 1
