"""The fleet's Kafka consumer group: each batch is verified, stored, its logs' states saved,
and only then are its offsets committed (at-least-once; the store folds what comes twice).

A batch gathers several Kafka fetches (one fetch holds about 1 MiB per partition: a few hundred
records) up to `max_records` or `max_wait_ms` after its first record: chDB's insert costs
less per record in larger batches (verified and stored one after the other, ~17k records/s in
batches of 5,000, ~21k/s in 20,000). Batches are pipelined (pipeline.py: ~38k/s, each record
parsed once): the next is verified while chDB inserts this one, and offsets are committed
batch by batch, in order, each only once the store has it.

The four topics (requests, checkpoints, access, findings) are subscribed by pattern (a topic
created later is picked up) with the range assignor: with the same partition count on each
topic — the agents key every topic by log_id — partition p of every topic goes to one
replica, so each log is verified by one replica.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vllm_audit_agent.fleet.findings import FleetDetections
from vllm_audit_agent.fleet.pipeline import Prepared, WritePath
from vllm_audit_agent.fleet.store import FleetStore
from vllm_audit_agent.fleet.verifier import FleetVerifier

logger = logging.getLogger("vllm_audit.fleet")
TOPIC_SUFFIXES = ("requests", "checkpoints", "access", "findings")


@dataclass
class ConsumerStats:
    batches: int = 0
    records: int = 0
    stored: int = 0
    store_errors: int = 0
    last_batch_ms: int = 0
    #: topic -> records on the broker past this replica's positions (its partitions only)
    lag: dict[str, int] = field(default_factory=dict)


def topic_pattern(prefix: str) -> str:
    return f"^{re.escape(prefix)}\\.({'|'.join(TOPIC_SUFFIXES)})$"


class FleetConsumer:
    def __init__(self, bootstrap: str, prefix: str, group_id: str, store: FleetStore,
                 verifier: FleetVerifier, max_records: int = 20_000, retry_seconds: float = 1.0,
                 detections: FleetDetections | None = None, max_wait_ms: int = 500) -> None:
        self.bootstrap, self.prefix, self.group_id = bootstrap, prefix, group_id
        self.store, self.verifier = store, verifier
        #: The fleet-wide rules over what each batch stored (None: --detections off).
        self.detections = detections
        self.path = WritePath(store, verifier, detections)
        self.max_records, self.max_wait_ms = max_records, max_wait_ms
        self.retry_seconds = retry_seconds
        self.stats = ConsumerStats()

    def _consumer(self) -> Any:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.coordinator.assignors.range import RangePartitionAssignor

        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", metadata_max_age_ms=5000,
            partition_assignment_strategy=(RangePartitionAssignor,))

    async def run(self, stop: asyncio.Event, on_batch: Callable[[], None] = lambda: None
                  ) -> None:
        """Consumes until `stop` is set; a batch the store refuses is retried, uncommitted."""
        consumer = self._consumer()
        await consumer.start()
        writing: tuple[Prepared, asyncio.Task[bool]] | None = None
        try:
            consumer.subscribe(pattern=topic_pattern(self.prefix))
            while not stop.is_set():
                payloads, offsets = await self._gather(consumer, stop)
                if stop.is_set():
                    break  # gathered, not fed: re-delivered to whoever comes next
                batch = await self._prepare(payloads, offsets)
                # The batch written meanwhile: stored and committed, or refused.
                refused = [] if batch is not None else [Prepared(payloads, offsets)]
                if writing is not None:
                    before, task = writing
                    writing = None
                    if not await task:
                        refused = [before, batch if batch is not None else refused[0]]
                if refused:
                    if not await self._recover(consumer, refused, stop):
                        return  # never committed: re-delivered to whoever comes next
                elif batch is not None and not batch.idle:
                    writing = batch, asyncio.create_task(self._write(consumer, batch))
                await self._lag(consumer)
                on_batch()
        finally:
            if writing is not None:
                await writing[1]  # a refused batch is not committed: re-delivered
            await consumer.stop()

    async def _gather(self, consumer: Any, stop: asyncio.Event
                      ) -> tuple[list[bytes], dict[Any, int]]:
        """Fetches until `max_records`, or `max_wait_ms` after the first record came (nothing
        in 500 ms: an empty batch, so quiet logs' gaps are still looked for)."""
        payloads: list[bytes] = []
        offsets: dict[Any, int] = {}
        deadline: float | None = None
        while not stop.is_set() and len(payloads) < self.max_records:
            wait = 500 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            fetched = await consumer.getmany(timeout_ms=wait,
                                             max_records=self.max_records - len(payloads))
            for tp, records in fetched.items():
                offsets[tp] = records[-1].offset + 1
                payloads += [r.value for r in records if r.value is not None]
            if deadline is None:
                if not fetched:
                    break
                deadline = time.monotonic() + self.max_wait_ms / 1000
            elif time.monotonic() >= deadline:
                break
        return payloads, offsets

    async def _prepare(self, payloads: list[bytes], offsets: dict[Any, int]
                       ) -> Prepared | None:
        """The batch fed to the verifier; None: a read from the store failed meanwhile."""
        try:
            return await asyncio.to_thread(self.path.prepare, payloads, offsets)
        except Exception:  # the verifier's reads from the store: fed again by _recover
            self.stats.store_errors += 1
            logger.exception("fleet store: batch of %d records not verified; retrying",
                             len(payloads))
            return None

    async def _write(self, consumer: Any, batch: Prepared) -> bool:
        """Stores the batch and commits its offsets; False: the store refused it."""
        try:
            self.stats.stored += await asyncio.to_thread(self.path.write, batch)
        except Exception:  # any store failure: retried by _recover, never committed
            self.stats.store_errors += 1
            logger.exception("fleet store: batch of %d records not stored; retrying",
                             len(batch.payloads))
            return False
        await self._commit(consumer, batch)
        return True

    async def _commit(self, consumer: Any, batch: Prepared) -> None:
        # This batch's offsets, not the positions: the consumer has fetched the next already.
        # A partition taken away meanwhile is re-delivered to its new owner (the store folds).
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in batch.offsets.items() if tp in assigned}
        if offsets:
            await consumer.commit(offsets)
        self.stats.batches += 1
        self.stats.records += len(batch.payloads)
        self.stats.last_batch_ms = time.time_ns() // 1_000_000

    async def _recover(self, consumer: Any, batches: list[Prepared], stop: asyncio.Event
                       ) -> bool:
        """The store refused the first of `batches` (the rest fed after it, not stored): until
        it takes them, the verifier is reloaded from the store (the store is the truth) and
        each is fed and stored again, in order. False: stopped first."""
        waiting = list(batches)
        while waiting and not stop.is_set():
            await asyncio.sleep(self.retry_seconds)
            if not await asyncio.to_thread(self._reload):
                continue
            while waiting:
                again = await self._prepare(waiting[0].payloads, waiting[0].offsets)
                if again is None or not await self._write(consumer, again):
                    break
                waiting.pop(0)
        return not waiting

    async def _lag(self, consumer: Any) -> None:
        """What the broker holds past our positions, per topic, from the high watermarks the
        last fetches saw (a partition not fetched yet counts when it is)."""
        lag: dict[str, int] = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            behind = max(0, int(high) - int(await consumer.position(tp)))
            lag[tp.topic] = lag.get(tp.topic, 0) + behind
        self.stats.lag = lag

    def _reload(self) -> bool:
        try:
            self.path.reload()
            return True
        except Exception:  # the store is still down: the next try reloads
            logger.exception("fleet store: log states not read back")
            return False
