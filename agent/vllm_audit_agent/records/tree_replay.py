"""Rebuilding a record log's identity and Merkle tree from its records at start.

From the genesis on, every record is a leaf. A log whose oldest segments expired starts
mid-way: its tree is known again from the first checkpoint (which carries the compact range
before it) or from the retention seal that names the range just before the first record (which
carries the compact range at its end; it sits later in the log, written when the segments
went). The leaves before either are kept until then, so the tree after each segment — what the
next seal names — is known for every segment.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from vllm_audit_agent.records.chain import (
    RECORD_TYPE_CHECKPOINT,
    RECORD_TYPE_GENESIS,
    RECORD_TYPE_SEAL,
)
from vllm_audit_agent.records.merkle import CompactRange, leaf_hash
from vllm_audit_agent.records.retention import SegmentInfo, TreeState

#: Leaves kept from a log's first record until its tree is known at most (a checkpoint comes
#: every --checkpoint-every records, so this is only reached by a log without any).
EARLY_LEAVES_MAX = 1 << 20


def _state(tree: CompactRange) -> TreeState:
    return TreeState(tree.size, tuple(tree.nodes))


class TreeReplay:
    def __init__(self, segments: dict[int, SegmentInfo], counters: Counter[str]) -> None:
        self.segments = segments
        self.counters = counters
        self.log_id = ""
        self.tree: CompactRange | None = None
        #: (segment, leaf) from the log's first record until its tree was known (a seal later
        #: may say what came before them).
        self._early: list[tuple[int, bytes]] = []
        self._first_seq: int | None = None
        #: Root (hex) of each checkpoint of the current log, by tree size.
        self.checkpoint_roots: dict[int, str] = {}

    def add(self, segment: int, record: dict[str, Any], payload: bytes) -> None:
        info = self.segments[segment]
        info.last_hash = str(record.get("hash", ""))
        kind, log_id = record.get("type"), record.get("log_id")
        if kind == RECORD_TYPE_GENESIS:
            self.log_id, self.tree = str(log_id), CompactRange()
            self._early.clear()
            self._first_seq = None
            self.checkpoint_roots = {}
        elif not log_id:
            return  # written before the log had an identity: not in any tree
        elif log_id != self.log_id:
            if self.log_id:  # another log's record without a genesis between
                self.counters["replay_foreign_log_records"] += 1
                return
            self.log_id = str(log_id)
        leaf = leaf_hash(payload)
        if self._first_seq is None and self.tree is None:
            self._first_seq = int(record["seq"])
        if kind == RECORD_TYPE_SEAL:
            self._apply_seal(record)
        if kind == RECORD_TYPE_CHECKPOINT and isinstance(record.get("tree_size"), int):
            self.checkpoint_roots[record["tree_size"]] = str(record.get("root_hash", ""))
        if self.tree is None and kind == RECORD_TYPE_CHECKPOINT and record.get("compact_range"):
            self.tree = self._range_of(record)
        if self.tree is None:
            if len(self._early) < EARLY_LEAVES_MAX:
                self._early.append((segment, leaf))
            return
        self.tree.append(leaf)
        info.tree_after = _state(self.tree)

    def _range_of(self, record: dict[str, Any]) -> CompactRange | None:
        try:
            return CompactRange.from_hex(int(record["tree_size"]), record["compact_range"])
        except (KeyError, TypeError, ValueError):
            self.counters["replay_bad_compact_range"] += 1
            return None

    def _apply_seal(self, record: dict[str, Any]) -> None:
        """A seal naming the range just before the log's first record: the tree there."""
        if not self._early or self._first_seq is None or not record.get("compact_range"):
            return
        if int(record.get("removed_last_seq", -1)) + 1 != self._first_seq:
            return
        tree = self._range_of(record)
        if tree is None:
            return
        for segment, leaf in self._early:  # the records before the tree was known
            tree.append(leaf)
            self.segments[segment].tree_after = _state(tree)
        if self.tree is None:
            self.tree = tree
        self._early.clear()

    def finish(self) -> tuple[str, CompactRange | None]:
        self._early.clear()
        return self.log_id, self.tree
