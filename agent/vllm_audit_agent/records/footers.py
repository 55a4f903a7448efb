"""The record log's segment footers: what a start needs to know of a sealed segment without
reading its records, kept in the sealed segment's index (storage/sealed.py, `meta`).

A footer is written when a finished segment is sealed (compressed), from the segment's records
and what the log knows of it: its seq and time range, the hash of the record before it and of
its last record, the log it belongs to and the Merkle tree's compact range after it, the roots
of its checkpoints, the newest audit level it names, its records per type, their bytes, how
many records follow its last checkpoint, and time marks: at the end of each frame the sealed
segment gets, the seq reached and the newest `recorded_unix_ms` up to it (a running maximum, so
it only grows even if the clock stepped back), which a range read seeks by (range_read.py).

A start (`plan_start`) takes the footers of the sealed segments from the oldest on, as long as
each one checks (its index's CRC holds, it has a tree, and it follows the one before: seq and
hash); the records are read from the first segment without a usable footer on (the open one at
least), and the newest sealed segments are read for what the agent remembers of its newest
trails and for the ingest WAL's replay (RECALL_MIN_RECORDS). The first record read must follow
the last footer used (seq and `prev_hash`), else the log is read whole (counted:
`footer_fallbacks`, logged once).

Threat model. Footers are hints for the log's own start and for where a range read starts,
never evidence: `verify` and `export` read the records (every hash recomputed, every record's
CRC checked); a range read uses them only to skip what lies before its range (range_read.py
says what that trusts). Whoever can write the data directory can forge a footer with a valid
CRC — and could as well rewrite the segments; a start that trusts a forged tree would then
sign checkpoints that `verify` finds disagree with the records (tree_mismatch), and anchors
and witnesses held elsewhere catch a rewritten past as before. The CRC guards against damage,
not against an attacker.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from vllm_audit_agent.records.chain import (
    COVERED_TYPES,
    RECORD_TYPE_CHECKPOINT,
    RECORD_TYPE_GENESIS,
    RECORD_TYPE_LEVEL,
    RECORD_TYPE_REQUEST,
)
from vllm_audit_agent.records.merkle import CompactRange
from vllm_audit_agent.records.retention import SegmentInfo, TreeState
from vllm_audit_agent.storage.sealed import FRAME_RAW_BYTES, SealedIndex
from vllm_audit_agent.storage.segment_format import HEADER_SIZE

logger = logging.getLogger("vllm_audit.agent")

FOOTER_VERSION = 1
#: What a start reads back from the newest sealed segments (whole segments, newest first): what
#: the agent remembers of its newest trails (recorded_before.py) and the event ids replaying
#: the ingest WAL is de-duplicated against. It must reach back as far as the ingest WAL
#: replays: a trail replayed whose record is not recalled is recorded again, a second record
#: under the same event id (a 20 s Kafka outage at 10k requests/s kept ~280k trails in the
#: ingest WAL: the combined fault test). So the start is given `recall_since_ms`, a lower
#: bound on when the oldest batch the ingest WAL replays arrived (ingest/replay_bound.py),
#: and reads back every segment with a record at or after it, and at least RECALL_MIN_RECORDS
#: records (for the remembered trails). Reading back costs ~10 us a record (orjson): a clean
#: restart reads ~50k (~0.5 CPU-s) whatever the history; after an outage it reads what the
#: outage left unrecorded. Without a bound (None: a log opened on its own) it reads back
#: RECALL_RECORDS.
RECALL_MIN_RECORDS = 50_000
RECALL_RECORDS = 1_000_000
#: Rare records a start needs whole wherever they lie (erasure: the content keys to destroy):
#: a footer keeps them, so a start finds them without reading the segment.
KEPT_TYPES = ("erasure",)
#: Bytes of records between two time marks: a sealed frame's, so a range read can start at
#: the frame before its first record; ~256 marks in a 64 MiB segment.
MARK_BYTES = FRAME_RAW_BYTES


def segment_footer(info: SegmentInfo | None, payloads: Iterable[bytes]) -> dict[str, Any]:
    """The footer of a finished segment from its records (`info`: what the log knows of it;
    its tree after the last record is what the records alone cannot give)."""
    counts: Counter[str] = Counter()
    roots: dict[str, str] = {}
    first: dict[str, Any] | None = None
    last: dict[str, Any] = {}
    level: str | None = None
    since_checkpoint = 0
    checkpointed = genesis = False
    nbytes = first_time = last_time = 0
    kept: list[dict[str, Any]] = []
    marks: list[list[int]] = []
    unmarked = marked_seq = marked_time = 0
    for payload in payloads:
        record = orjson.loads(payload)
        kind = str(record.get("type", RECORD_TYPE_REQUEST))
        counts[kind] += 1
        nbytes += len(payload)
        t = int(record.get("recorded_unix_ms", 0))
        if first is None:
            first, first_time = record, t
        last_time = max(last_time, t)
        last = record
        # A mark at the last record of each frame the sealed segment will have (frames take
        # whole records while they fit in FRAME_RAW_BYTES, sealed.py): a range read then
        # starts at the frame just before its first record.
        size = HEADER_SIZE + len(payload)
        if unmarked and unmarked + size > MARK_BYTES:
            marks.append([marked_seq, marked_time])
            unmarked = 0
        unmarked += size
        marked_seq, marked_time = int(record.get("seq", 0)), last_time
        if kind == RECORD_TYPE_CHECKPOINT:
            checkpointed, since_checkpoint = True, 0
            if isinstance(record.get("tree_size"), int):
                roots[str(record["tree_size"])] = str(record.get("root_hash", ""))
        elif kind in COVERED_TYPES:
            since_checkpoint += 1
        elif kind == RECORD_TYPE_GENESIS:
            genesis, roots = True, {}
        elif kind == RECORD_TYPE_LEVEL:
            level = str(record.get("level"))
        if kind in KEPT_TYPES:
            kept.append(record)
    tree = info.tree_after if info is not None else None
    return {
        "footer": FOOTER_VERSION, "first_seq": int(first["seq"]) if first else 0,
        "last_seq": int(last.get("seq", 0)),
        "first_prev_hash": str(first.get("prev_hash", "")) if first else "",
        "last_hash": str(last.get("hash", "")), "first_time_ms": first_time,
        "last_time_ms": last_time, "log_id": str(last.get("log_id") or ""),
        "genesis": genesis, "counts": dict(sorted(counts.items())), "payload_bytes": nbytes,
        "access_bytes": info.access_bytes if info is not None else 0,
        "checkpoint_roots": roots, "last_level": level, "checkpointed": checkpointed,
        "since_checkpoint": since_checkpoint, "kept_records": kept, "time_marks": marks,
        "tree_after": None if tree is None else {"size": tree.size,
                                                 "nodes": [n.hex() for n in tree.nodes]},
    }


def _tree_of(footer: dict[str, Any]) -> CompactRange | None:
    tree = footer.get("tree_after")
    if not isinstance(tree, dict):
        return None
    try:
        return CompactRange.from_hex(int(tree["size"]), tree["nodes"])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class StartPlan:
    """What the footers say of the oldest sealed segments, and what is left to read."""

    #: Segments whose footers were used, oldest first.
    footed: list[int] = field(default_factory=list)
    infos: dict[int, SegmentInfo] = field(default_factory=dict)
    log_id: str = ""
    tree: CompactRange | None = None
    checkpoint_roots: dict[int, str] = field(default_factory=dict)
    last_level: str | None = None
    since_checkpoint: int = 0
    head_seq: int = 0
    head_hash: str = ""
    #: Bytes of records after the cursor in the footed segments (in the one holding the
    #: cursor: its share after it, by records; a gauge's estimate, exact again once passed).
    unpublished_bytes: int = 0
    #: The records of KEPT_TYPES in the footed segments, oldest first.
    kept_records: list[dict[str, Any]] = field(default_factory=list)
    #: The first footed segment read back for the newest trails (None: none).
    recall_from: int | None = None


def _usable(index: SealedIndex | None, before: dict[str, Any] | None) -> dict[str, Any] | None:
    if index is None or not index.trusted:
        return None
    footer = index.meta
    if footer.get("footer") != FOOTER_VERSION or _tree_of(footer) is None:
        return None
    if (footer.get("first_seq"), footer.get("last_seq")) != (index.first_seq, index.last_seq):
        return None
    if before is not None and (footer["first_seq"] != before["last_seq"] + 1
                               or footer.get("first_prev_hash") != before.get("last_hash")):
        return None
    return footer


def plan_start(segments: Sequence[int], sealed: dict[int, SealedIndex | None],
               cursor: int, recall_since_ms: int | None = None) -> StartPlan:
    """The footers usable from the oldest segment on (see the module's docstring);
    `recall_since_ms`: see RECALL_MIN_RECORDS."""
    plan = StartPlan()
    before: dict[str, Any] | None = None
    footers: list[dict[str, Any]] = []
    for segment in segments:
        footer = _usable(sealed.get(segment), before)
        if footer is None:
            break
        plan.footed.append(segment)
        footers.append(footer)
        before = footer
    for segment, footer in zip(plan.footed, footers, strict=True):
        info = SegmentInfo(footer["first_seq"], footer["last_seq"], int(footer["last_time_ms"]),
                           int(footer.get("access_bytes", 0)))
        tree = _tree_of(footer)
        info.tree_after = TreeState(tree.size, tuple(tree.nodes)) if tree is not None else None
        info.last_hash = str(footer["last_hash"])
        plan.infos[segment] = info
        if footer.get("genesis"):
            plan.checkpoint_roots = {}
        plan.checkpoint_roots.update({int(k): str(v) for k, v in
                                      footer.get("checkpoint_roots", {}).items()})
        plan.kept_records.extend(footer.get("kept_records") or ())
        if footer.get("last_level") is not None:
            plan.last_level = str(footer["last_level"])
        plan.since_checkpoint = int(footer.get("since_checkpoint", 0)) + (
            0 if footer.get("checkpointed") else plan.since_checkpoint)
        if info.first_seq > cursor:
            plan.unpublished_bytes += int(footer.get("payload_bytes", 0))
        elif info.last_seq > cursor:  # holds the cursor: its share after it, by records
            plan.unpublished_bytes += int(footer.get("payload_bytes", 0)) * (
                info.last_seq - cursor) // max(1, info.last_seq - info.first_seq + 1)
        plan.log_id, plan.tree = str(footer.get("log_id") or plan.log_id), tree
        plan.head_seq, plan.head_hash = info.last_seq, info.last_hash
    recalled = 0
    for segment, footer in zip(reversed(plan.footed), reversed(footers), strict=True):
        if recalled >= RECALL_MIN_RECORDS and (
                recalled >= RECALL_RECORDS if recall_since_ms is None
                else int(footer["last_time_ms"]) < recall_since_ms):
            break
        plan.recall_from = segment
        recalled += sum(int(n) for n in footer.get("counts", {}).values())
    return plan
