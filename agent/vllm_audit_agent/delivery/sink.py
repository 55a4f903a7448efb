"""What a publisher sends through: the `Sink` interface and the closed sets of reasons a
sink's `classify` sorts a failed send into.

Two sinks implement it: Kafka (`kafka_sink`) and, without Kafka, the in-memory sink of
`no_kafka`. The publisher (`publisher`) and the engine-stats queue (`engine_stats`) only ever
talk to this interface.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from vllm_audit_agent.records.entry import Entry

#: Why a send failed (each retried, except the dead-letter reasons).
FAILURE_REASONS = ("retriable", "timeout", "refused", "too_large", "invalid")
#: Failures that no retry can fix: the record goes to the dead-letter file.
DEAD_LETTER_REASONS = ("too_large", "invalid")


class Sink(Protocol):
    """Where records go. `send` enqueues and returns the acknowledgement to await."""

    #: True when what it accepted is kept elsewhere (Kafka), not only in this process.
    durable: bool

    async def connect(self) -> None: ...
    async def send(self, topic_suffix: str, key: bytes, value: bytes) -> Awaitable[Any]: ...
    async def send_many(self, entries: list[Entry]) -> list[Awaitable[Any] | BaseException]:
        """One acknowledgement (or the error that stopped it) per entry, in order."""
        ...
    def classify(self, exc: BaseException) -> str | None:
        """A FAILURE_REASONS member, or None if `exc` is not a sink error (a bug: raised)."""
        ...
    async def probe(self) -> bool:
        """Whether the sink can reach its destination now, from its client's connection
        state (cheap: no request when a connection is up), reconnecting if it must."""
        ...
    async def close(self, timeout: float) -> None: ...
