"""One durable record as the publisher sends it (`Entry`: topic, key, bytes, recorded time), and
what a record's type and ids make of it: its topic, its key and its `event_id`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm_audit_agent.model import record as records
from vllm_audit_agent.records.chain import (
    RECORD_TYPE_ACCESS,
    RECORD_TYPE_CHECKPOINT,
    RECORD_TYPE_REQUEST,
)

#: Topic suffix per record type (`<prefix>.<suffix>`).
TOPICS = {RECORD_TYPE_REQUEST: "requests", RECORD_TYPE_CHECKPOINT: "checkpoints",
          RECORD_TYPE_ACCESS: "access"}


def event_id(record: dict[str, Any]) -> str:
    """Trail id + revision: unique per record, stable across re-delivery, so a consumer that
    keeps the newest revision per trail id never takes a forced finalisation for the real
    record. Falls back to `request_id` and revision 0 for records without a trail id."""
    trail = record.get("trail_id") or record.get("request_id") or ""
    return records.event_id(str(trail), int(record.get("revision") or 0))


@dataclass(slots=True)
class Entry:
    """One durable record as the publisher needs it."""
    seq: int
    topic: str
    key: bytes
    value: bytes
    time_ms: int


def entry_of(record: dict[str, Any], value: bytes) -> Entry:
    """The entry of a sealed record whose bytes are `value`: a request is keyed by its trail
    (so a trail's revisions share a partition), any other record by its type."""
    kind = record.get("type", RECORD_TYPE_REQUEST)
    key = (record.get("trail_id") or record.get("request_id") or kind) if kind == \
        RECORD_TYPE_REQUEST else kind
    return Entry(int(record["seq"]), TOPICS.get(kind, "requests"), str(key).encode(), value,
                 int(record.get("recorded_unix_ms", 0)))
