"""One durable record as the publisher sends it (`Entry`: topic, key, bytes, recorded time), and
what a record's type and ids make of it: its topic, its key and its `event_id`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm_audit_agent.model import record as records
from vllm_audit_agent.records.chain import (
    RECORD_TYPE_ACCESS,
    RECORD_TYPE_ADMIN,
    RECORD_TYPE_CHECKPOINT,
    RECORD_TYPE_COSIGNATURE,
    RECORD_TYPE_ERASURE,
    RECORD_TYPE_FINDING,
    RECORD_TYPE_GENESIS,
    RECORD_TYPE_LEVEL,
    RECORD_TYPE_REQUEST,
    RECORD_TYPE_SEAL,
)

#: Topic suffix per record type (`<prefix>.<suffix>`): the evidence about the log itself
#: (genesis, checkpoints, seals, cosignatures, level changes) shares the checkpoints topic.
#: Admin records (vLLM's administrative calls: an adapter loaded, weights updated) go on the
#: requests topic: keyed by the log like the requests, they share their partition, so a
#: consumer reads "adapter loaded" before the first request it served, in order (consumers
#: tell them apart by `type`). Erasure records too: a consumer of the requests reads which
#: content keys are gone in the same order. Findings (detections) have their own topic: what a
#: SIEM or an on-call tool subscribes to without reading every request.
TOPICS = {RECORD_TYPE_REQUEST: "requests", RECORD_TYPE_ADMIN: "requests",
          RECORD_TYPE_ERASURE: "requests",
          RECORD_TYPE_CHECKPOINT: "checkpoints", RECORD_TYPE_ACCESS: "access",
          RECORD_TYPE_GENESIS: "checkpoints", RECORD_TYPE_SEAL: "checkpoints",
          RECORD_TYPE_COSIGNATURE: "checkpoints", RECORD_TYPE_LEVEL: "checkpoints",
          RECORD_TYPE_FINDING: "findings"}


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
    #: The record's chain hash.
    hash: str = ""


def entry_of(record: dict[str, Any], value: bytes) -> Entry:
    """The entry of a sealed record whose bytes are `value`, keyed by its log's id: one log's
    records share a partition per topic, so a consumer reads each log in order (and several
    agents on one topic never interleave one log). Records of a log written before identities
    are keyed by their trail (requests) or their type."""
    kind = record.get("type", RECORD_TYPE_REQUEST)
    key = record.get("log_id") or ((record.get("trail_id") or record.get("request_id") or kind)
                                   if kind == RECORD_TYPE_REQUEST else kind)
    return Entry(int(record["seq"]), TOPICS.get(kind, "requests"), str(key).encode(), value,
                 int(record.get("recorded_unix_ms", 0)), str(record.get("hash", "")))
