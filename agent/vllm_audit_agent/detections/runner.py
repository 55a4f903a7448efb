"""The agent's detections: the record log's appends feed the rule engine off the append path,
and what it finds is appended to the same log as `finding` records (the publisher then sends
them to `<prefix>.findings` like any record).

The log's listener only queues the record (a bounded deque; when it is full the oldest queued
record is dropped and counted: detections are best effort, the records themselves are not
touched). A task takes what is queued in batches, runs the engine on a worker thread (the
loop keeps serving ingest meanwhile; only this task touches the engine) and appends the
findings on the loop. At a stop the queue is drained within a deadline, before the record log
writes its final checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from typing import Any

from vllm_audit_agent.detections.engine import RuleEngine
from vllm_audit_agent.records.chain import RECORD_TYPE_FINDING
from vllm_audit_agent.records.log import RecordLog

logger = logging.getLogger("vllm_audit.agent")

#: Record types the rules read (event.py); the rest is not queued.
FED_TYPES = frozenset({"request", "access"})
QUEUE_MAX = 100_000
BATCH_MAX = 2_000


class DetectionRunner:
    def __init__(self, engine: RuleEngine, records: RecordLog, queue_max: int = QUEUE_MAX) -> None:
        self.engine, self.records = engine, records
        self._queue: deque[dict[str, Any]] = deque()
        self.queue_max = queue_max
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: dropped_queue_full, errors, findings_appended.
        self.counters: Counter[str] = Counter(
            {"dropped_queue_full": 0, "errors": 0, "findings_appended": 0})

    def offer(self, record: dict[str, Any]) -> None:
        """The record log's listener: queue a record the rules read, nothing more."""
        if record.get("type") not in FED_TYPES:
            return
        if len(self._queue) >= self.queue_max:
            self._queue.popleft()
            self.counters["dropped_queue_full"] += 1
        self._queue.append(record)
        self._wake.set()

    def start(self) -> None:
        self.records.add_record_listener(self.offer)
        self._task = asyncio.create_task(self._run(), name="detections")

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            await self.drain()

    async def drain(self) -> None:
        """Evaluates everything queued now, in batches; appends what the rules found."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(BATCH_MAX, len(self._queue)))]
            try:
                findings = await asyncio.to_thread(self.engine.feed_many, batch)
            except Exception:  # a rule's bug must not stop the detections, nor the agent
                self.counters["errors"] += 1
                logger.exception("detections: a batch of %d records was not evaluated",
                                 len(batch))
                continue
            for finding in findings:
                self.records.append(finding, kind=RECORD_TYPE_FINDING)
                self.counters["findings_appended"] += 1

    async def stop(self, timeout: float) -> None:
        """What is queued is evaluated (within `timeout`), then the task ends."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()  # the task drains what is queued, then ends
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            logger.warning("detections: %d records not evaluated at stop", len(self._queue))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
