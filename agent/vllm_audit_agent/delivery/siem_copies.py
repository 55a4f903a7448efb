"""SIEM copies on Kafka (`--kafka-format`): beside each record on `<prefix>.TOPIC`, its copy in
a SIEM's format on `<prefix>.TOPIC.FORMAT` (siem/formats.py makes it).

The chained record stays on its own topic, unchanged: it is what the fleet service verifies
and stores, and what `vllm-audit verify` checks; a copy can be re-made from it at any time
(`vllm-audit export --format`). A copy is sent with its record and acknowledged with it: the
publisher's cursor passes a record only once the broker has both, so a copy is delivered at
least once, like the record (a re-sent copy has the same OCSF `metadata.uid` / ECS
`event.hash`: the record's chain hash, to de-duplicate on). A copy that can never be
accepted (too large for the broker) is dropped and counted (`dropped`): the record it was made
from is delivered, and dead-lettering the record for its copy would lose the evidence.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable
from typing import Any

import orjson

from vllm_audit_agent.delivery.sink import DEAD_LETTER_REASONS, Sink
from vllm_audit_agent.records.entry import Entry
from vllm_audit_agent.siem.formats import encode

_Ack = Awaitable[Any] | BaseException


async def _both(record: Awaitable[Any], copies: tuple[Awaitable[Any], ...]) -> Any:
    """The record's acknowledgement (what the publisher checks the offset of), after its
    copies' too."""
    metadata = await record
    for copy in copies:
        await copy
    return metadata


class SiemCopySink:
    """A `Sink` that sends each record through `inner` with its copies (see the module)."""

    def __init__(self, inner: Sink, copies: dict[str, tuple[str, ...]]) -> None:
        self.inner = inner
        self.durable = inner.durable
        self.copies = copies
        #: Copies made, and those dropped, by format.
        self.made: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        topics = getattr(inner, "topics", None)
        if topics is not None:  # Kafka fetches every topic's metadata at connect
            extra = tuple(f"{t}.{f}" for t, fs in copies.items() for f in fs)
            # `topics` is KafkaSink's, not the Sink protocol's (the memory sink has none).
            inner.topics = (*topics, *extra)  # type: ignore[attr-defined]

    async def connect(self) -> None:
        await self.inner.connect()

    async def send(self, topic_suffix: str, key: bytes, value: bytes) -> Awaitable[Any]:
        return await self.inner.send(topic_suffix, key, value)

    def _copies_of(self, entry: Entry) -> list[Entry]:
        formats = self.copies.get(entry.topic)
        if not formats:
            return []
        record = orjson.loads(entry.value)
        out = []
        for fmt in formats:
            value = encode(fmt, record)
            if value is not None:
                out.append(Entry(entry.seq, f"{entry.topic}.{fmt}", entry.key, value,
                                 entry.time_ms, entry.hash))
        return out

    async def send_many(self, entries: list[Entry]) -> list[_Ack]:
        """The records' acknowledgements, each awaiting its copies' too (one awaitable per
        distinct set of broker batches, so records of one batch still share theirs)."""
        copies = [self._copies_of(entry) for entry in entries]
        flat = [c for cs in copies for c in cs]
        if not flat:
            return await self.inner.send_many(entries)
        acks = await self.inner.send_many(entries + flat)
        out: list[_Ack] = []
        combined: dict[tuple[int, ...], _Ack] = {}
        at = len(entries)
        for i, own in enumerate(copies):
            record_ack, copy_acks = acks[i], acks[at:at + len(own)]
            at += len(own)
            out.append(self._combine(record_ack, own, copy_acks, combined))
        return out

    def _combine(self, record_ack: _Ack, own: list[Entry], copy_acks: list[_Ack],
                 combined: dict[tuple[int, ...], _Ack]) -> _Ack:
        if isinstance(record_ack, BaseException):
            return record_ack
        waits: list[Awaitable[Any]] = []
        for copy, ack in zip(own, copy_acks, strict=True):
            fmt = copy.topic.rsplit(".", 1)[-1]
            if isinstance(ack, BaseException):
                if self.inner.classify(ack) in DEAD_LETTER_REASONS:
                    self.dropped[fmt] += 1
                    continue
                return ack  # retried with its record
            self.made[fmt] += 1
            waits.append(ack)
        if not waits:
            return record_ack
        key = (id(record_ack), *map(id, waits))
        if key not in combined:
            combined[key] = asyncio.ensure_future(_both(record_ack, tuple(waits)))
        return combined[key]

    def classify(self, exc: BaseException) -> str | None:
        return self.inner.classify(exc)

    async def probe(self) -> bool:
        return await self.inner.probe()

    async def close(self, timeout: float) -> None:
        await self.inner.close(timeout)
