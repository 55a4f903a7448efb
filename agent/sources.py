"""What the agent knows of each hook process (source): which batch seqs it has stored, for
de-duplicating resends, and which it was told are missing, for counting each loss once."""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_audit.v1 import events_pb2 as pb

#: Acknowledged seqs remembered per source for de-duplication of resends.
DEDUP_WINDOW = 100_000


@dataclass
class SourceState:
    acked: set[int] = field(default_factory=set)
    floor: int = 0  # every seq <= floor counts as seen
    role: str = ""
    model: str = ""
    last_stats: pb.EngineStats | None = None
    last_stats_published: float = 0.0
    #: Disjoint, sorted seq ranges already reported missing (lost batches are few and runs).
    missing_counted: list[tuple[int, int]] = field(default_factory=list)

    def seen(self, seq: int) -> bool:
        return seq <= self.floor or seq in self.acked

    def count_missing(self, first: int, last: int) -> int:
        """Seqs in a gap marker's range [first, last] that were never stored and not counted
        before. A hook's ranges can overlap (a dropped batch hands its own range on to the
        next one) and can span batches it delivered, so only these are new losses."""
        new = 0
        low = max(first, self.floor + 1)
        for a, b in _subtract(low, last, self.missing_counted):
            new += (b - a + 1) - sum(1 for s in self.acked if a <= s <= b)
        self.missing_counted = _merge([*self.missing_counted, (first, last)])
        return new

    def mark(self, seq: int) -> None:
        self.acked.add(seq)
        if len(self.acked) > DEDUP_WINDOW:
            self.floor = max(self.floor, max(self.acked) - DEDUP_WINDOW // 2)
            self.acked = {s for s in self.acked if s > self.floor}


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _subtract(first: int, last: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[first, last] minus the sorted disjoint `ranges`, as a list of ranges."""
    out: list[tuple[int, int]] = []
    cursor = first
    for a, b in ranges:
        if b < cursor:
            continue
        if a > last:
            break
        if a > cursor:
            out.append((cursor, a - 1))
        cursor = max(cursor, b + 1)
    if cursor <= last:
        out.append((cursor, last))
    return out
