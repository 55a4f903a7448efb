"""What `verify` checks beyond the hash chain: identity, Merkle tree, seals, anchors, witnesses.

Fed every record of one chain in order (after the chain checks of verify.py), it follows the
log's identity from its genesis, rebuilds the Merkle tree, and names:

  log_id_mismatch     a record of another log (or none) after a genesis
  bad_signature       a genesis or seal whose Ed25519 signature does not verify
  tree_mismatch       a checkpoint's tree size, root or signed note disagrees with the records
  unsealed_start      the log starts after its genesis and no retention seal names what is
                      missing (the oldest records were deleted some other way)
  truncated           the log ends before a checkpoint that an anchor holds
  rewritten           the log's root at an anchored size is not the anchored root
  unwitnessed         fewer than the required witnesses cosigned the checkpoint that covers
                      the log's last request or access record

A log that starts mid-way is checked from the seal's tree on; until the seal is read (it was
written later, when the segments went), the first records' leaves are kept.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vllm_audit_agent.records.chain import (
    RECORD_TYPE_ACCESS,
    RECORD_TYPE_ADMIN,
    RECORD_TYPE_CHECKPOINT,
    RECORD_TYPE_COSIGNATURE,
    RECORD_TYPE_FINDING,
    RECORD_TYPE_GENESIS,
    RECORD_TYPE_REQUEST,
    RECORD_TYPE_SEAL,
    verify_signature,
)
from vllm_audit_agent.records.merkle import CompactRange, leaf_hash
from vllm_audit_agent.records.note import (
    SignedNote,
    cosignature_time,
    log_signature_valid,
    origin_of,
    parse,
)

TREE_BREAK_REASONS = ("log_id_mismatch", "bad_signature", "tree_mismatch", "unsealed_start",
                      "truncated", "rewritten", "unwitnessed")
EARLY_LEAVES_MAX = 1 << 22


@dataclass(frozen=True)
class Anchor:
    """A checkpoint trusted from elsewhere (a file, a witness, the Kafka checkpoint topic)."""
    origin: str
    size: int
    root: bytes
    source: str
    #: The signed note it came from (its witness cosignatures count towards --require).
    note: SignedNote | None = None


@dataclass
class TreeFinding:
    seq: int
    reason: str
    detail: str


@dataclass
class TreeSummary:
    log_id: str = ""
    tree_size: int = 0
    root_hash: str = ""
    sealed_start: bool = False
    anchors_checked: int = 0
    witnessed_size: int = 0
    notes: list[str] = field(default_factory=list)


class TreeCheck:
    def __init__(self, public_key: Ed25519PublicKey, anchors: Sequence[Anchor] = (),
                 witness_keys: Sequence[Ed25519PublicKey] = (), required_cosignatures: int = 0
                 ) -> None:
        self.public_key = public_key
        self.anchors = list(anchors)
        self.witness_keys = list(witness_keys)
        self.required = required_cosignatures
        #: A live log: its newest records are not witnessed yet (--allow-unsigned-tail).
        self.allow_unwitnessed_tail = False
        self.summary = TreeSummary()
        self.tree: CompactRange | None = None
        self._early: list[bytes] = []
        self._first: dict[str, Any] | None = None  # the log's first record, when not a genesis
        self._checkpoint_ranges: dict[int, CompactRange] = {}  # tree size -> checkpoint's range
        self._witnessed: dict[int, set[bytes]] = {}  # tree size -> witness keys that cosigned
        self._last_covered_needed = 0  # tree size that covers the last request/access record
        self._anchors_checked: set[int] = set()
        self._logs_left: set[str] = set()  # origins of the logs this chain went through
        self.finding: TreeFinding | None = None

    # -- per record ------------------------------------------------------------------------
    def add(self, record: dict[str, Any], payload: bytes) -> TreeFinding | None:
        seq, kind = int(record["seq"]), record.get("type")
        if not record.get("log_id") and not self.summary.log_id and kind != RECORD_TYPE_GENESIS:
            return None  # a chain written before log identities
        found = self._identity(seq, record)
        if found:
            return found
        leaf = leaf_hash(payload)
        if kind == RECORD_TYPE_SEAL:
            found = self._seal(seq, record)
        elif kind == RECORD_TYPE_CHECKPOINT:
            found = self._checkpoint(seq, record)
        elif kind == RECORD_TYPE_COSIGNATURE:
            self._cosignature(record)
        if found:
            return found
        if self.tree is None:
            if len(self._early) >= EARLY_LEAVES_MAX:
                return self._break(seq, "unsealed_start", "no seal or checkpoint within "
                                   f"{EARLY_LEAVES_MAX} records of the log's start")
            self._early.append(leaf)
            return None
        self.tree.append(leaf)
        if kind in (RECORD_TYPE_REQUEST, RECORD_TYPE_ACCESS, RECORD_TYPE_ADMIN, RECORD_TYPE_FINDING):
            self._last_covered_needed = self.tree.size
        return self._anchor_at(seq)

    def _identity(self, seq: int, record: dict[str, Any]) -> TreeFinding | None:
        """Follows the log a record belongs to: a genesis starts one, anything else must be of
        the current one (the first record names it when the log starts mid-way)."""
        log_id = record.get("log_id")
        if record.get("type") == RECORD_TYPE_GENESIS:
            if not verify_signature(self.public_key, record):
                return self._break(seq, "bad_signature", "the genesis record's signature does "
                                   "not verify with the public key")
            if self.summary.log_id:  # the chain goes on as a new log: the one left must hold
                left = self._truncation(seq)  # what anchors hold of it
                if left is not None:
                    return left
            self.summary.log_id, self.tree = str(log_id), CompactRange()
            self._early.clear()
            self._first = None
        elif log_id != self.summary.log_id:
            if self.summary.log_id:
                return self._break(seq, "log_id_mismatch", f"record of log {log_id!r} inside "
                                   f"log {self.summary.log_id}")
            self.summary.log_id = str(log_id)
            self._first = record
        return None

    def _break(self, seq: int, reason: str, detail: str) -> TreeFinding:
        self.finding = TreeFinding(seq, reason, detail)
        return self.finding

    def _range(self, record: dict[str, Any]) -> CompactRange | None:
        try:
            return CompactRange.from_hex(int(record["tree_size"]), record["compact_range"])
        except (KeyError, TypeError, ValueError):
            return None

    def _checkpoint(self, seq: int, record: dict[str, Any]) -> TreeFinding | None:
        if "tree_size" not in record:
            return None  # a checkpoint from before trees: the chain checks cover it
        claimed = self._range(record)
        if claimed is None or claimed.root().hex() != record.get("root_hash"):
            return self._break(seq, "tree_mismatch", "the checkpoint's compact range does not "
                               "give its root")
        try:
            note = parse(str(record.get("note", "")))
        except ValueError as exc:
            return self._break(seq, "tree_mismatch", f"the checkpoint's note: {exc}")
        cp = note.checkpoint
        if (cp.origin, cp.size, cp.root.hex()) != (origin_of(self.summary.log_id), claimed.size,
                                                    record["root_hash"]) \
                or not log_signature_valid(note, self.public_key):
            return self._break(seq, "tree_mismatch", "the checkpoint's signed note does not "
                               "name this log's tree, or its signature does not verify")
        if self.tree is None:
            if self._early:  # the start is checked once its seal is read
                self._checkpoint_ranges[claimed.size] = claimed
            self.tree = claimed.copy()
        elif (self.tree.size, self.tree.root()) != (claimed.size, claimed.root()):
            return self._break(seq, "tree_mismatch", f"the checkpoint names tree size "
                               f"{claimed.size}, root {record['root_hash'][:16]}…; the records "
                               f"give {self.tree.size}, {self.tree.root().hex()[:16]}…")
        self._witnessed.setdefault(claimed.size, set())
        return None

    def _seal(self, seq: int, record: dict[str, Any]) -> TreeFinding | None:
        if not verify_signature(self.public_key, record):
            return self._break(seq, "bad_signature", "the seal's signature does not verify "
                               "with the public key")
        first = self._first
        if first is None or self.summary.sealed_start:
            return None  # a seal about what an earlier part of this log already removed
        if int(record.get("removed_last_seq", -1)) + 1 != int(first["seq"]):
            return None
        if record.get("removed_last_hash") != first.get("prev_hash"):
            return self._break(seq, "unsealed_start", "the seal's last removed record is not "
                               "the one the log's first record follows")
        sealed = self._range(record)
        if sealed is None:
            return self._break(seq, "unsealed_start", "the seal carries no tree to go on from")
        for leaf in self._early:
            sealed.append(leaf)
            known = self._checkpoint_ranges.get(sealed.size)
            if known is not None and known.root() != sealed.root():
                return self._break(seq, "tree_mismatch", "the records between the seal and the "
                                   "first checkpoint do not give the checkpoint's tree")
        if self.tree is None:
            self.tree = sealed
        self._early.clear()
        self._checkpoint_ranges.clear()
        self.summary.sealed_start = True
        return None

    def _cosignature(self, record: dict[str, Any]) -> None:
        try:
            note = parse(str(record.get("note", "")))
        except ValueError:
            return
        self._count_cosignatures(note)

    def _count_cosignatures(self, note: SignedNote) -> None:
        if note.checkpoint.origin != origin_of(self.summary.log_id):
            return
        for key in self.witness_keys:
            for name, _ in note.signatures:
                if cosignature_time(note, name, key) is not None:
                    self._witnessed.setdefault(note.checkpoint.size, set()).add(
                        base64.b64encode(key.public_bytes_raw()))

    def _anchor_at(self, seq: int) -> TreeFinding | None:
        tree = self.tree
        assert tree is not None
        for i, anchor in enumerate(self.anchors):
            if anchor.origin == origin_of(self.summary.log_id) and anchor.size == tree.size:
                self.summary.anchors_checked += 1
                self._anchors_checked.add(i)
                if anchor.root != tree.root():
                    return self._break(seq, "rewritten", f"the log's root at tree size "
                                       f"{anchor.size} is not the one {anchor.source} holds")
        return None

    def _truncation(self, seq: int) -> TreeFinding | None:
        """An anchor of the current log beyond its end (at its end, or where a new log starts)."""
        origin = origin_of(self.summary.log_id)
        self._logs_left.add(origin)
        size = self.tree.size if self.tree is not None else 0
        for anchor in self.anchors:
            if anchor.origin == origin and anchor.size > size:
                return self._break(seq, "truncated", f"log {self.summary.log_id} ends at tree "
                                   f"size {size}; {anchor.source} holds a checkpoint of it at "
                                   f"{anchor.size}")
        return None

    def accept_partial_start(self) -> None:
        """An export or a Kafka topic: a start after the genesis is expected, not a deletion."""
        if self._first is not None and not self.summary.sealed_start:
            self.summary.notes.append(
                f"the records start at seq {self._first['seq']}, after the log's genesis: those "
                "before its first checkpoint are checked by the chain alone")
            self._first = None

    # -- at the end ---------------------------------------------------------------------------
    def finish(self, last_seq: int | None) -> TreeFinding | None:
        if self.finding is not None:
            return self.finding
        if self._first is not None and not self.summary.sealed_start:
            return self._break(int(self._first["seq"]), "unsealed_start", "the log starts "
                               f"at seq {self._first['seq']}, after its genesis, and no "
                               "retention seal names the records before it (deleted)")
        tree = self.tree
        size = tree.size if tree is not None else 0
        self.summary.tree_size = size
        self.summary.root_hash = tree.root().hex() if tree is not None else ""
        origin = origin_of(self.summary.log_id)
        left = self._truncation(last_seq or 0)
        if left is not None:
            return left
        for anchor in self.anchors:
            if anchor.origin != origin and anchor.origin not in self._logs_left:
                self.summary.notes.append(f"anchor from {anchor.source} is for another log "
                                          f"({anchor.origin})")
        for i, anchor in enumerate(self.anchors):
            if anchor.origin == origin and anchor.size <= size and i not in self._anchors_checked:
                self.summary.notes.append(f"anchor at tree size {anchor.size} from "
                                          f"{anchor.source} precedes what the log holds")
            if anchor.origin == origin and anchor.note is not None:
                self._count_cosignatures(anchor.note)
        if self.required:
            covered = max((s for s, keys in self._witnessed.items()
                           if len(keys) >= self.required), default=0)
            self.summary.witnessed_size = covered
            if covered < self._last_covered_needed:
                message = (f"{self.required} witness cosignature(s) cover the tree up to "
                           f"{covered}; the log's records reach {self._last_covered_needed}")
                if not self.allow_unwitnessed_tail:
                    return self._break(last_seq or 0, "unwitnessed", message)
                self.summary.notes.append(message + " (a live log's newest records: allowed)")
        return None



def anchor_from_note(text: str, source: str, public_key: Ed25519PublicKey) -> Anchor:
    """An anchor from a signed-note checkpoint, whose log signature must verify."""
    try:
        note = parse(text)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    if not log_signature_valid(note, public_key):
        raise ValueError(f"{source}: the checkpoint's log signature does not verify with the "
                         "public key")
    cp = note.checkpoint
    return Anchor(cp.origin, cp.size, cp.root, source, note)
