"""What the agent knows of each hook process (source).

A source is a `source_id` (the hook's "<hostname>:<pid>:<start ns>"); its batches are numbered
per *epoch*, a random number the hook's sender draws when it starts. De-duplication is keyed on
(source_id, epoch, seq): a restarted sender, or a second process that reuses a source id, has a
new epoch and is a new stream of seqs, never a duplicate of the first one's batches. Epoch 0 is
what a hook from before epochs sends (the field unset): it is one more epoch, de-duplicated
like any other, so an old hook keeps working exactly as before (its source id is already
unique per process start).

Per (source_id, epoch) a SeqWindow remembers which seqs are stored, for de-duplicating
resends, and which the hook declared missing, for counting each loss once.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field

from vllm_audit.v1 import events_pb2 as pb

#: Seqs (and declared-missing ranges) held above the window's floor before the window gives
#: up on its oldest hole (see SeqWindow).
DEDUP_WINDOW = 100_000
#: Above every seq (a uint64), for bisecting (seq, end) pairs.
UINT64_LIMIT = 1 << 64
#: Epochs remembered per source id; the least recently used one is forgotten first.
MAX_EPOCHS_PER_SOURCE = 16


class SeqWindow:
    """Stored and declared-missing seqs of one (source_id, epoch), in bounded memory.

    `floor` advances only over a contiguous prefix of seqs that are stored or declared missing,
    so no seq value can poison the window: a seq of 2^64-1 is just held above a hole, and every
    later seq below it is still new. Memory is bounded: past DEDUP_WINDOW held seqs and ranges
    above a hole, the floor jumps over the oldest hole (counted in `holes_skipped`); a batch
    from inside a skipped hole that arrives later is then taken for a duplicate."""

    def __init__(self, limit: int = DEDUP_WINDOW) -> None:
        self.limit = limit
        self.floor = 0  # every seq <= floor is stored or was declared missing
        self.held: set[int] = set()  # stored seqs above floor
        #: Disjoint, sorted seq ranges above floor that the hook declared missing.
        self.missing: list[tuple[int, int]] = []
        self.holes_skipped = 0

    def seen(self, seq: int) -> bool:
        return seq <= self.floor or seq in self.held

    def mark(self, seq: int) -> None:
        if seq > self.floor:
            self.held.add(seq)
            self._advance()

    def count_missing(self, first: int, last: int) -> int:
        """Seqs in a gap marker's range [first, last] that were never stored and not counted
        before. A hook's ranges can overlap (a dropped batch hands its own range on to the
        next one) and can span batches it delivered, so only these are new losses."""
        low = max(first, self.floor + 1)
        if low > last:
            return 0
        # One pass over each structure (both are bounded by the window's limit).
        new = sum(b - a + 1 for a, b in _subtract(low, last, self.missing))
        new -= sum(1 for s in self.held if low <= s <= last and not _within(s, self.missing))
        self.missing = _merge([*self.missing, (low, last)])
        self._advance()
        return new

    def _advance(self) -> None:
        while True:
            if self.floor + 1 in self.held:
                self.held.discard(self.floor + 1)
                self.floor += 1
            elif self.missing and self.missing[0][0] <= self.floor + 1:
                self.floor = max(self.floor, self.missing.pop(0)[1])
                self.held = {s for s in self.held if s > self.floor}
            elif len(self.held) + len(self.missing) > self.limit:
                # Give up on the oldest hole: its seqs are now taken as seen (counted).
                starts = [min(self.held)] if self.held else []
                if self.missing:
                    starts.append(self.missing[0][0])
                self.floor = min(starts) - 1
                self.holes_skipped += 1
            else:
                return


@dataclass
class SourceState:
    role: str = ""
    model: str = ""
    last_stats: pb.EngineStats | None = None
    last_stats_published: float = 0.0
    #: epoch -> its seq window, least recently used first.
    windows: OrderedDict[int, SeqWindow] = field(default_factory=OrderedDict)
    epochs_evicted: int = 0
    #: The hook's own cost, latest cumulative report (VLLM_AUDIT_SELF_TIMING hooks only).
    self_timing: pb.HookSelfTiming | None = None
    #: Batch.instance_tag: the vLLM launch this source belongs to (who may read back).
    instance_tag: bytes = b""

    def window(self, epoch: int) -> SeqWindow:
        window = self.windows.get(epoch)
        if window is None:
            window = self.windows[epoch] = SeqWindow()
            if len(self.windows) > MAX_EPOCHS_PER_SOURCE:
                self.windows.popitem(last=False)
                self.epochs_evicted += 1
        else:
            self.windows.move_to_end(epoch)
        return window


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _within(seq: int, ranges: list[tuple[int, int]]) -> bool:
    """Whether `seq` lies in one of the sorted disjoint `ranges`."""
    i = bisect.bisect_right(ranges, (seq, UINT64_LIMIT)) - 1
    return i >= 0 and ranges[i][0] <= seq <= ranges[i][1]


def _subtract(first: int, last: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[first, last] minus the sorted disjoint `ranges`, as a list of ranges."""
    out: list[tuple[int, int]] = []
    cursor = first
    start = max(0, bisect.bisect_left(ranges, (first, 0)) - 1)
    for a, b in ranges[start:]:
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
