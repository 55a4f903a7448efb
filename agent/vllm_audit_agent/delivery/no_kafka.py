"""Without Kafka: the record log is the archive, and the publisher only moves its cursor.

When no Kafka is configured the agent still runs the generic publisher (`publisher`), over a
sink that acknowledges every record at once and keeps the newest ones in memory (tests and
benchmarks read them back as `records`). Nothing leaves the pod: with the cursor always at the
head, no record is owed downstream, so the record log's retention may reclaim any sealed
segment by size or age (records/retention.py) — the log on disk is the archive. Engine-stats
snapshots go to the same memory sink.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import orjson

from vllm_audit_agent.delivery.publisher import Publisher
from vllm_audit_agent.records.entry import Entry


class MemorySink:
    """Keeps the newest records in a list (no-Kafka mode and tests): not durable; without
    Kafka the record log itself is the archive."""

    durable = False

    def __init__(self, max_records: int = 10_000) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        self.max_records = max_records
        self.trimmed = 0

    async def connect(self) -> None:
        pass

    async def send(self, topic_suffix: str, key: bytes, value: bytes) -> Awaitable[Any]:
        if len(self.records) >= self.max_records:
            self.records.pop(0)
            self.trimmed += 1
        self.records.append((topic_suffix, key.decode(), orjson.loads(value)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_many(self, entries: list[Entry]) -> list[Awaitable[Any] | BaseException]:
        return [await self.send(e.topic, e.key, e.value) for e in entries]

    def classify(self, exc: BaseException) -> str | None:
        return None

    async def probe(self) -> bool:
        return True

    async def close(self, timeout: float) -> None:
        pass


class NoKafkaPublisher(Publisher):
    """The publisher when no Kafka is configured: over a MemorySink, so the record log is
    the archive; `records` are the newest (topic suffix, key, record) it took."""

    def __init__(self, max_records: int = 10_000, durable: bool = False) -> None:
        sink = MemorySink(max_records)
        sink.durable = durable  # tests may stand in for a durable sink
        super().__init__(sink)
        self.memory = sink

    @property
    def records(self) -> list[tuple[str, str, dict[str, Any]]]:
        return self.memory.records

    @property
    def connected(self) -> bool:
        """Connected to Kafka: never (health and metrics report Kafka's state)."""
        return False


#: The old name, which tests and benchmarks use for a publisher they can read back.
InMemoryPublisher = NoKafkaPublisher
