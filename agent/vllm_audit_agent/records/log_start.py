"""The record log's start: what a `RecordLog` keeps in memory, read back from its directory.

`read_start` loads the cursor, takes what the sealed segments' footers say (footers.py:
`plan_start`) and reads the records after them (and those of the newest footed segments, for
what the agent remembers of its newest trails: recorded_before.py), rebuilding the chain's
head, the segment index, the unpublished tail, the identity and Merkle tree (tree_replay.py),
the checkpoints' roots, the last audit level and the content keys erasure records name. If the
first record read does not follow the last footer, the whole log is read instead (counted:
`footer_fallbacks`). It returns a `LogStart`, which the log takes in one place
(`RecordLog._apply_start`); it changes nothing on disk and nothing of the log.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from vllm_audit_agent.records.chain import (
    COVERED_TYPES,
    GENESIS_HASH,
    RECORD_TYPE_ACCESS,
    RECORD_TYPE_ADMIN,
    RECORD_TYPE_CHECKPOINT,
    RECORD_TYPE_ERASURE,
    RECORD_TYPE_LEVEL,
    RECORD_TYPE_REQUEST,
)
from vllm_audit_agent.records.entry import TOPICS, Entry, entry_of
from vllm_audit_agent.records.erasure import erased_by
from vllm_audit_agent.records.footers import StartPlan, plan_start
from vllm_audit_agent.records.merkle import CompactRange
from vllm_audit_agent.records.recorded_before import RecordedBefore
from vllm_audit_agent.records.retention import SegmentInfo
from vllm_audit_agent.records.tree_replay import TreeReplay
from vllm_audit_agent.storage.wal import WriteAheadLog

logger = logging.getLogger("vllm_audit.agent")

#: The file in the records directory holding the last seq the sink acknowledged.
CURSOR_NAME = "cursor"
ACCESS_TOPIC = TOPICS[RECORD_TYPE_ACCESS]
#: Records whose trail (and event id) a start remembers.
_TRAIL_TYPES = (RECORD_TYPE_REQUEST, RECORD_TYPE_ADMIN)


@dataclass(frozen=True)
class LogStart:
    """What a start read of the log (frozen: the log takes its parts, it is not changed)."""

    #: Last seq the sink acknowledged (the cursor file; at most `head_seq`).
    cursor: int
    head_seq: int
    head_hash: str
    segments: dict[int, SegmentInfo]
    #: Durable records after the cursor, oldest first, at most the log's tail bytes.
    tail: deque[Entry]
    tail_bytes: int
    #: Bytes of the records after the cursor.
    unpublished_bytes: int
    #: Records of the types checkpoints are about since the newest checkpoint.
    since_checkpoint: int
    last_level: str | None
    #: The log's identity and tree ("" / None: none to go on with, a genesis follows).
    log_id: str
    tree: CompactRange | None
    checkpoint_roots: dict[int, str]
    #: The newest trails remembered (its event ids are `replay_event_ids`, already taken).
    recorded_before: RecordedBefore
    replay_event_ids: set[str] | None
    #: Content keys the log's erasure records name (read and footed segments).
    erased_content_keys: list[str]
    #: Records footers kept (footers.KEPT_TYPES) of the segments this start did not read.
    footer_records: list[dict[str, Any]]
    #: To add to the log's counters (replay_*, footer_fallbacks, started_from_footers, ...).
    counters: Counter[str]


def load_cursor(directory: Path, counters: Counter[str]) -> int:
    try:
        return int((directory / CURSOR_NAME).read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError:
        logger.warning("record log cursor unreadable; publishing from the start")
        counters["cursor_unreadable"] += 1
        return 0


def read_start(wal: WriteAheadLog, directory: Path, tail_max_bytes: int,
               recall_since_ms: int | None = None) -> LogStart:
    """Reads the log in `wal` (and its cursor in `directory`) back; see the module docstring
    (`recall_since_ms`: footers.RECALL_MIN_RECORDS)."""
    counters: Counter[str] = Counter()
    cursor = load_cursor(directory, counters)
    segments = wal.segments()
    plan = plan_start(segments, {i: wal.sealed_index(i) for i in segments}, cursor,
                      recall_since_ms)
    replay = _Replay(plan, cursor, tail_max_bytes, counters, recall_since_ms)
    if plan.footed and not replay.read(wal, plan):
        counters["footer_fallbacks"] += 1
        logger.warning("record log: the first record after segment %d does not follow its "
                       "footer; reading the whole log", plan.footed[-1])
        plan = StartPlan()
        replay = _Replay(plan, cursor, tail_max_bytes, counters, recall_since_ms)
    if not plan.footed:
        replay.read(wal, plan)
    counters["started_from_footers"] = len(plan.footed)
    return replay.result()


class _Replay:
    """One reading of the log from `plan` on (a fallback starts a new one from nothing)."""

    def __init__(self, plan: StartPlan, cursor: int, tail_max_bytes: int,
                 counters: Counter[str], recall_since_ms: int | None) -> None:
        self.cursor = cursor
        self.tail_max_bytes = tail_max_bytes
        self.counters = counters
        self.segments: dict[int, SegmentInfo] = dict(plan.infos)
        self.head_seq, self.head_hash = (plan.head_seq, plan.head_hash) if plan.footed \
            else (0, GENESIS_HASH)
        self.last_level, self.since_checkpoint = plan.last_level, plan.since_checkpoint
        self.unpublished_bytes = plan.unpublished_bytes
        self.footer_records = list(plan.kept_records)
        self.erasures: list[dict[str, Any]] = []
        self.tail: deque[Entry] = deque()
        self.tail_bytes = 0
        self.earlier = RecordedBefore(recall_since_ms)
        self.replay_event_ids: set[str] | None = None
        self.trees = TreeReplay(self.segments, counters)
        self.trees.log_id, self.trees.checkpoint_roots = plan.log_id, dict(plan.checkpoint_roots)
        self.trees.tree = plan.tree.copy() if plan.tree is not None else None
        self.log_id = ""
        self.tree: CompactRange | None = None

    def read(self, wal: WriteAheadLog, plan: StartPlan) -> bool:
        """Takes what `plan`'s footers say, then reads the records after them (and those of
        the newest footed segments, for the trails only). False: the first record read does
        not follow the last footer (the caller reads the whole log instead)."""
        replayed = 0
        footed = set(plan.footed)
        first = plan.recall_from if plan.recall_from is not None else \
            (plan.footed[-1] + 1 if plan.footed else 0)
        check_link = bool(plan.footed)
        for segment, payload in wal.replay(first_segment=first):
            replayed += 1
            try:
                record = orjson.loads(payload)
                seq = int(record["seq"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                self.counters["replay_unreadable_records"] += 1
                continue
            if segment in footed:  # read back for the newest trails only
                if record.get("type") in _TRAIL_TYPES and "event_id" in record:
                    self.earlier.note(record, payload)
                continue
            if check_link:
                if seq != self.head_seq + 1 or record.get("prev_hash") != self.head_hash:
                    return False
                check_link = False
            self._record(segment, record, seq, payload)
        self.log_id, self.tree = self.trees.finish()
        if self.cursor > self.head_seq:
            logger.warning("record log cursor %d is past the log's head %d", self.cursor,
                           self.head_seq)
            self.counters["cursor_past_head"] += 1
            self.cursor = self.head_seq
        self.counters["replayed_records"] = replayed
        self.replay_event_ids = self.earlier.take_event_ids()
        return True

    def _record(self, segment: int, record: dict[str, Any], seq: int, payload: bytes) -> None:
        if self.head_seq and seq != self.head_seq + 1:
            self.counters["replay_seq_gaps"] += 1
            logger.warning("record log: seq %d follows %d", seq, self.head_seq)
        self.head_seq, self.head_hash = seq, str(record.get("hash", ""))
        entry = entry_of(record, payload)
        info = self.segments.get(segment)
        if info is None:
            info = self.segments[segment] = SegmentInfo(seq, seq, entry.time_ms)
        else:
            info.last_seq, info.last_time_ms = seq, max(info.last_time_ms, entry.time_ms)
        if entry.topic == ACCESS_TOPIC:
            info.access_bytes += len(payload)
        self.trees.add(segment, record, payload)
        kind = record.get("type")
        if kind == RECORD_TYPE_LEVEL:
            self.last_level = str(record.get("level"))
        if kind in _TRAIL_TYPES and "event_id" in record:
            self.earlier.note(record, payload)
        if seq > self.cursor:
            self.unpublished_bytes += len(payload)
            self.tail.append(entry)
            self.tail_bytes += len(payload)
            while self.tail_bytes > self.tail_max_bytes and len(self.tail) > 1:
                self.tail_bytes -= len(self.tail.popleft().value)
        if kind == RECORD_TYPE_CHECKPOINT:
            self.since_checkpoint = 0
        elif kind in COVERED_TYPES:
            self.since_checkpoint += 1
        if kind == RECORD_TYPE_ERASURE:
            self.erasures.append(record)

    def result(self) -> LogStart:
        # Those still in the key store are destroyed at start (the agent stopped between an
        # erasure record and the keys' deletion): from the segments read and the footers.
        erased, _ = erased_by([*self.footer_records, *self.erasures])
        return LogStart(
            cursor=self.cursor, head_seq=self.head_seq, head_hash=self.head_hash,
            segments=self.segments, tail=self.tail, tail_bytes=self.tail_bytes,
            unpublished_bytes=self.unpublished_bytes, since_checkpoint=self.since_checkpoint,
            last_level=self.last_level, log_id=self.log_id, tree=self.tree,
            checkpoint_roots=self.trees.checkpoint_roots, recorded_before=self.earlier,
            replay_event_ids=self.replay_event_ids, erased_content_keys=list(erased),
            footer_records=self.footer_records, counters=self.counters)
