"""What the archive uploads for one sealed segment of the record log, read from the disk.

A segment is sealed once the log writes to a newer one. Its object is its records, byte for
byte, one a line; its checkpoint object is the records after it up to and including the first
checkpoint at or after its end, so the newest archived segment is covered by a signature. A
segment that ends with a checkpoint has an empty checkpoint object. Until that checkpoint is
durable (the log writes one every `--checkpoint-every` records or `--checkpoint-interval`
seconds while records arrive) the segment waits.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from vllm_audit_agent.records.chain import RECORD_TYPE_CHECKPOINT
from vllm_audit_agent.storage.wal_reader import WalReader


class SegmentObjects(NamedTuple):
    segment: bytes
    checkpoint: bytes


def _kind(payload: bytes) -> tuple[int, str]:
    try:
        record = orjson.loads(payload)
        return int(record.get("seq", 0)), str(record.get("type", ""))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 0, ""


def lines(payloads: list[bytes]) -> bytes:
    return b"".join(p + b"\n" for p in payloads)


def read_segment(wal: WalReader, index: int, durable_seq: int) -> SegmentObjects | None:
    """The two objects of segment `index`, or None while no durable checkpoint covers it yet.
    Reads the segment and then only as far as that checkpoint (the log keeps appending)."""
    body: list[bytes] = []
    bridge: list[bytes] = []
    for segment, payload in wal.replay(first_segment=index):
        if segment == index:
            body.append(payload)
            continue
        if not bridge and body and _kind(body[-1])[1] == RECORD_TYPE_CHECKPOINT:
            return SegmentObjects(lines(body), b"")
        seq, kind = _kind(payload)
        if seq > durable_seq:
            return None  # written, not yet synced: it could still be lost in a crash
        bridge.append(payload)
        if kind == RECORD_TYPE_CHECKPOINT:
            return SegmentObjects(lines(body), lines(bridge))
    return None
