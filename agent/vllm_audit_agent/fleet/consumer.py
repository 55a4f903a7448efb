"""The fleet's Kafka consumer group: each batch is verified, stored, its logs' states saved,
and only then are its offsets committed (at-least-once; the store folds what comes twice).

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
                 verifier: FleetVerifier, max_records: int = 5000, retry_seconds: float = 1.0,
                 detections: FleetDetections | None = None) -> None:
        self.bootstrap, self.prefix, self.group_id = bootstrap, prefix, group_id
        self.store, self.verifier = store, verifier
        #: The fleet-wide rules over what each batch stored (None: --detections off).
        self.detections = detections
        self.max_records, self.retry_seconds = max_records, retry_seconds
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
        try:
            consumer.subscribe(pattern=topic_pattern(self.prefix))
            while not stop.is_set():
                batches = await consumer.getmany(
                    timeout_ms=500, max_records=self.max_records)
                payloads = [r.value for records in batches.values() for r in records
                            if r.value is not None]
                if payloads:
                    await self._store(payloads, stop)
                    if stop.is_set() and not self._stored:
                        return  # never committed: re-delivered to whoever comes next
                    await consumer.commit()
                await asyncio.to_thread(self._gaps)
                await self._lag(consumer)
                on_batch()
        finally:
            await consumer.stop()

    _stored = False

    async def _store(self, payloads: list[bytes], stop: asyncio.Event) -> None:
        self._stored = False
        while not stop.is_set():
            try:
                await asyncio.to_thread(self._write, payloads)
                self._stored = True
                return
            except Exception:  # any store failure: retried, never committed
                self.stats.store_errors += 1
                logger.exception("fleet store: batch of %d records not stored; retrying",
                                 len(payloads))
                await asyncio.sleep(self.retry_seconds)
                # The verifier may have gone past what the store holds: the store is the truth.
                await asyncio.to_thread(self._reload)

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

    def _write(self, payloads: list[bytes]) -> None:
        fed = self.verifier.feed(payloads)
        self.stats.stored += self.store.insert(fed.store)
        if self.detections is not None:
            self.detections.feed(fed.store)
        self.store.save_logs(self.verifier.states(fed.changed))
        self.stats.batches += 1
        self.stats.records += len(payloads)
        self.stats.last_batch_ms = time.time_ns() // 1_000_000

    def _reload(self) -> None:
        try:
            self.verifier.logs.clear()
            self.verifier.load(self.store.logs())
        except Exception:  # the store is still down: the next try reloads
            logger.exception("fleet store: log states not read back")

    def _gaps(self) -> None:
        found = self.verifier.gaps()
        if found:
            self.store.save_logs(self.verifier.states(found))
