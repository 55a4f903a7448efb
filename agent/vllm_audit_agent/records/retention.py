"""Retention of the record log: which of its oldest sealed segments go, and why.

The oldest sealed segments go while the log is above 90% of its cap or their newest record is
older than `retention_days`, each counted by reason (size, age) — but never a segment holding
a record the publisher has not had acknowledged: with Kafka down the log keeps everything
owed and refuses at its cap instead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from vllm_audit_agent.storage.wal import WriteAheadLog

#: Share of the cap retention keeps the log under (the rest is headroom between sweeps).
RETENTION_RATIO = 0.9
#: Reasons retention deletes a segment.
EXPIRY_REASONS = ("size", "age")


@dataclass(slots=True)
class SegmentInfo:
    """What the log knows of one of its segments: what retention decides on (and where the
    publisher's reads from disk start)."""
    first_seq: int
    last_seq: int
    last_time_ms: int


def expire_segments(wal: WriteAheadLog, segments: dict[int, SegmentInfo], cursor: int,
                    horizon_ms: float, need: int, counters: Counter[str]) -> int:
    """Deletes the oldest sealed segments past the size limit or with nothing newer than
    `horizon_ms`, but none holding a record after `cursor`; returns how many. Each goes from
    `segments` too, counted in `counters` by reason.

    `need`: bytes waiting to be written (after a refusal), to make room for."""
    deleted = 0
    for segment in sorted(segments):
        info = segments[segment]
        if info.last_seq > cursor:
            break  # owed to the sink: kept (and the log refuses at its cap)
        if wal.size + need > wal.max_bytes * RETENTION_RATIO:
            reason = "size"
        elif info.last_time_ms < horizon_ms:
            reason = "age"
        else:
            break
        if not wal.delete(segment):
            break
        del segments[segment]
        counters[f"expired_segments_{reason}"] += 1
        deleted += 1
    return deleted
