"""Retention of the record log: which of its oldest sealed segments go, and why.

The oldest sealed segments go while the log is above 90% of its cap or their newest record is
older than `retention_days`, each counted by reason (size, age) — but never a segment holding
a record the publisher has not had acknowledged: with Kafka down the log keeps everything
owed and refuses at its cap instead.

Access records (meta-audit: queries and refusals) have a budget of their own within the cap
and do not count towards the size rule: what readers cause can never make retention expire
request records. While their budget is spent, queries are refused (api/meta_audit.py); it
frees as old segments expire by age, or as request records make the size rule rotate the log.
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
    #: Bytes of access records in the segment (their own budget: see the module's docstring).
    access_bytes: int = 0


def expire_segments(wal: WriteAheadLog, segments: dict[int, SegmentInfo], cursor: int,
                    horizon_ms: float, need: int, counters: Counter[str],
                    access_budget: int = 0) -> int:
    """Deletes the oldest sealed segments past the size limit or with nothing newer than
    `horizon_ms`, but none holding a record after `cursor`; returns how many. Each goes from
    `segments` too, counted in `counters` by reason.

    `need`: bytes waiting to be written (after a refusal), to make room for.
    `access_budget`: bytes of the cap reserved for access records, which the size rule does
    not count (so queries never push request records out)."""
    deleted = 0
    access = sum(info.access_bytes for info in segments.values())
    for segment in sorted(segments):
        info = segments[segment]
        if info.last_seq > cursor:
            break  # owed to the sink: kept (and the log refuses at its cap)
        if wal.size - access + need > (wal.max_bytes - access_budget) * RETENTION_RATIO:
            reason = "size"
        elif info.last_time_ms < horizon_ms:
            reason = "age"
        else:
            break
        if not wal.delete(segment):
            break
        del segments[segment]
        access -= info.access_bytes
        counters[f"expired_segments_{reason}"] += 1
        deleted += 1
    return deleted
