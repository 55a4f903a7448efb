"""Retention of the record log: which of its oldest segments go, why, and the seal that says so.

The oldest segments go when their newest record is older than `retention_days` — and, only when
the operator allows it (`expire_by_size`), while the log is above 90% of its cap — each counted
by reason (size, age). Never a segment holding a record the publisher has not had acknowledged:
with Kafka down the log keeps everything owed and refuses at its cap instead.

Before any segment is deleted the log appends a signed *seal* record naming the range that goes
(first and last seq, the last record's hash) and the Merkle tree at its end (size, root,
compact range); the segments are deleted once the seal is durable. A verifier that finds a log
starting mid-way accepts the start only with a seal whose range ends just before it, and goes
on from the seal's tree — deleting the oldest records any other way is named as such.

With a WORM archive configured (archive/), a segment goes only once the archive holds it:
the log exposes `expiry_hold`, which the archive's uploader sets.

Access records (meta-audit: queries and refusals) have a budget of their own within the cap
and do not count towards the size rule: what readers cause can never make retention expire
request records. While their budget is spent, queries are refused (api/meta_audit.py); it
frees as old segments expire by age, or as request records make the size rule rotate the log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from vllm_audit_agent.records.chain import RECORD_TYPE_SEAL
from vllm_audit_agent.records.merkle import CompactRange
from vllm_audit_agent.storage.wal import WriteAheadLog

#: Share of the cap retention keeps the log under (the rest is headroom between sweeps).
RETENTION_RATIO = 0.9
#: Reasons retention deletes a segment.
EXPIRY_REASONS = ("size", "age")


class TreeState(NamedTuple):
    """The log's Merkle tree after one record: its size and compact range."""
    size: int
    nodes: tuple[bytes, ...]


@dataclass(slots=True)
class SegmentInfo:
    """What the log knows of one of its segments: what retention decides on (and where the
    publisher's reads from disk start)."""
    first_seq: int
    last_seq: int
    last_time_ms: int
    #: Bytes of access records in the segment (their own budget: see the module's docstring).
    access_bytes: int = 0
    #: The tree after the segment's last record (None: before the log's genesis, or unknown).
    tree_after: TreeState | None = None
    #: The hash of the segment's last record.
    last_hash: str = ""
    #: Why retention chose it (set by plan_expiry).
    reason: str = ""


#: A hold on retention: True keeps the segment (the WORM archive has not got it yet).
ExpiryHold = Callable[[SegmentInfo], bool]


def plan_expiry(wal: WriteAheadLog, segments: dict[int, SegmentInfo], cursor: int,
                horizon_ms: float, need: int, counters: Counter[str], access_budget: int = 0,
                by_size: bool = True, hold: ExpiryHold | None = None) -> list[int]:
    """The oldest segments past the size limit (when `by_size`) or with nothing newer than
    `horizon_ms`, but none holding a record after `cursor` nor one `hold` keeps, oldest first.

    `need`: bytes waiting to be written (after a refusal), to make room for.
    `access_budget`: bytes of the cap reserved for access records, which the size rule does
    not count (so queries never push request records out).
    `hold`: with an archive configured, a segment not yet archived stays (and so every newer
    one: the log is deleted from its oldest end only); a full log then refuses, as it does
    for records the sink has not acknowledged."""
    plan: list[int] = []
    access = sum(info.access_bytes for info in segments.values())
    size = wal.size
    for segment in sorted(segments):
        info = segments[segment]
        if info.last_seq > cursor or segment == wal.current:
            break  # owed to the sink (the log refuses at its cap), or still being written
        if hold is not None and hold(info):
            break  # owed to the archive
        if by_size and size - access + need > (wal.max_bytes - access_budget) * RETENTION_RATIO:
            info.reason = "size"
        elif info.last_time_ms < horizon_ms:
            info.reason = "age"
        else:
            break
        plan.append(segment)
        access -= info.access_bytes
        size -= wal.segment_size(segment)
    return plan


def delete_segments(wal: WriteAheadLog, segments: dict[int, SegmentInfo],
                    plan: Sequence[int], counters: Counter[str] | None = None) -> int:
    """Deletes the planned segments (oldest first, stopping at one that cannot go)."""
    deleted = 0
    for segment in plan:
        info = segments.get(segment)
        if info is None or not wal.delete(segment):
            break
        del segments[segment]
        if counters is not None:
            counters[f"expired_segments_{info.reason or 'age'}"] += 1
        deleted += 1
    return deleted


def seal_record(expiring: Sequence[SegmentInfo], log_id: str, time_ms: int) -> dict[str, Any]:
    """The (unsigned) seal naming what goes: the range, its last record, the tree at its end."""
    last = expiring[-1]
    tree = last.tree_after
    compact = CompactRange(tree.size, list(tree.nodes)) if tree is not None else None
    reasons = Counter(info.reason for info in expiring)
    return {
        "type": RECORD_TYPE_SEAL, "log_id": log_id, "time_unix_ms": time_ms,
        "removed_first_seq": expiring[0].first_seq, "removed_last_seq": last.last_seq,
        "removed_last_hash": last.last_hash, "reasons": dict(sorted(reasons.items())),
        "tree_size": compact.size if compact is not None else None,
        "root_hash": compact.root().hex() if compact is not None else None,
        "compact_range": compact.to_hex() if compact is not None else None,
    }
