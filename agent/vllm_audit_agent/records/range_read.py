"""Reading a record log from a time on, by the sealed segments' footers and index instead of
from its first record: what `export --since` and `verify --since` read a log directory with.

Where it starts. The sealed segments are taken oldest first while their index checks (its CRC,
the footer it carries, seqs following the segment before): a segment whose footer says its
newest record (`last_time_ms`, a maximum) is older than `since` cannot hold a record of the
range, and is not opened. In the first one that can, the footer's time marks (footers.py: the
seq reached every ~256 KiB of records and the newest time up to it) name the last seq `p` up to
which every record is older than `since`; the read starts at the frame that holds `p` (the
index's seq span of each frame), so the first record of the range and the one before it are
read, and every frame before is skipped undecompressed. The read then goes on frame by frame
and segment by segment, each opened only when the reader gets to it (`until`: the reader stops
at the checkpoint after the range, so later segments are never opened). Frames are read from
there by their headers and every record by its CRC, as a whole read does.

The start is checked against the records: the first record read must be older than `since`,
so the record before the range's first is read and its hash is the `prev_hash` the range's
first record carries. When it is not (a footer, mark or frame offset that lied, or a log
whose clock stepped back across `since`), or nothing is read there, the log is read from its
start instead (`RangeStats.fallback` says why) — the same records a whole read would give.

Threat model. Footers and index are hints, never evidence: they choose where to start, not
what is said about a record. Every record read is checked by `verify` as in a whole read
(hash, chain, signatures, and the tree from the first signed checkpoint in the range: the
trusted state a range starts from, as for an export or a Kafka topic); the records skipped are
never counted as checked: the report names the first seq read and says the earlier records
were not (`notes`). So a forged or damaged footer or index cannot make a range verify say
intact for a record it changed (the record's hash or the chain to the covering checkpoint's
signature breaks) nor for one it hid inside the range after the start (a seq gap), nor claim
records it skipped. What it does not stop: someone who can write the data directory and forges
footers whose times say a segment that holds records of the range is older than it is, while
the record just before the start really is older than `since` (a clock that stepped back, or
records of the range placed before an older one): the range then starts later than a whole
read's would, and the records skipped are not checked. A whole `verify` (or one of the range
from an earlier time) reads every record and is not fooled; anchors and witnesses bind the
log's tree as before.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from vllm_audit_agent.records.chain import RECORD_TYPE_CHECKPOINT
from vllm_audit_agent.records.fields import time_and_type
from vllm_audit_agent.records.footers import FOOTER_VERSION
from vllm_audit_agent.storage.sealed import SealedIndex, read_index, sealed_name
from vllm_audit_agent.storage.segment_files import ReadCounts, read_segment_files, segment_indexes


@dataclass
class RangeStats:
    """What one range read opened and skipped (the tests and the benchmark count it)."""

    #: Sealed segments whose index (trailer) was read to plan the start.
    indexes_read: int = 0
    #: Segment files whose records were read, and frames decompressed (`counts`).
    counts: ReadCounts = field(default_factory=ReadCounts)
    segments_skipped: int = 0
    #: Frames of the segment the read starts in that lie before its start.
    frames_skipped: int = 0
    #: The first seq read (None: the log was read from its start).
    start_seq: int | None = None
    #: Why the log was read from its start after a seek ("": it was not).
    fallback: str = ""

    def notes(self) -> list[str]:
        """What a range verify says it did not check."""
        out: list[str] = []
        if self.start_seq is not None:
            out.append(f"range read: started at seq {self.start_seq}, found by the sealed "
                       f"segments' footers and index (hints, not evidence); "
                       f"{self.segments_skipped} segments and {self.frames_skipped} frames "
                       "before it were not read, and the records before it are not checked "
                       "here (a verify without --since checks them)")
        if self.fallback:
            out.append(f"range read: {self.fallback}; the log was read from its start")
        return out


@dataclass(frozen=True)
class RangeStart:
    """Where a range read starts: a sealed segment, the file offset of its frame that holds
    seq `before` (the newest record every one up to which is older than the range)."""

    segment: int
    offset: int
    before: int
    segments_skipped: int
    frames_skipped: int


def _footer(index: SealedIndex | None, prev_last: int | None) -> dict[str, Any] | None:
    """The footer of a sealed segment if its index checked and it says what a seek needs."""
    if index is None or not index.trusted or not index.frames:
        return None
    footer = index.meta
    if footer.get("footer") != FOOTER_VERSION or not isinstance(footer.get("last_time_ms"), int):
        return None
    if (footer.get("first_seq"), footer.get("last_seq")) != (index.first_seq, index.last_seq):
        return None
    if prev_last is not None and index.first_seq != prev_last + 1:
        return None
    return footer


def _marked_before(footer: dict[str, Any], index: SealedIndex, since_ms: int) -> int | None:
    """The newest marked seq up to which every record is older than `since` (None: none)."""
    found: int | None = None
    marks = footer.get("time_marks")
    for mark in marks if isinstance(marks, list) else ():
        if not (isinstance(mark, list) and len(mark) == 2 and all(type(v) is int for v in mark)):
            return found  # not a mark: the ones before it still hold
        seq, newest = mark
        if newest >= since_ms or not index.first_seq <= seq <= index.last_seq \
                or (found is not None and seq <= found):
            break
        found = seq
    return found


def plan_range(directory: Path, since_ms: int, stats: RangeStats) -> RangeStart | None:
    """Where to start reading the records recorded at or after `since` (None: at the log's
    start, as nothing before can be skipped)."""
    skipped: list[tuple[int, SealedIndex]] = []
    landing: tuple[int, SealedIndex] | None = None
    before: int | None = None
    for number, sealed in segment_indexes(directory):
        if not sealed:
            break
        index = read_index(directory / sealed_name(number))
        stats.indexes_read += 1
        footer = _footer(index, skipped[-1][1].last_seq if skipped else None)
        if footer is None or index is None:
            break
        if int(footer["last_time_ms"]) >= since_ms:
            landing = (number, index)
            before = _marked_before(footer, index, since_ms)
            break
        skipped.append((number, index))
    if before is None:
        if not skipped:
            return None
        before = skipped[-1][1].last_seq
    if landing is not None and before >= landing[1].first_seq:
        (number, index), unopened = landing, len(skipped)
    else:  # `before` is the newest segment skipped's last record: read from its last frame
        (number, index), unopened = skipped[-1], len(skipped) - 1
    lasts = [frame.last_seq for frame in index.frames]
    at = bisect.bisect_left(lasts, before)
    if at == len(lasts) or index.frames[at].first_seq > before:
        return None  # the index's frames do not hold the seq its own span says
    return RangeStart(number, index.frames[at].file_offset, before, unopened, at)


def _time_and_type(payload: bytes) -> tuple[int, Any] | None:
    """`recorded_unix_ms` and `type` (None: not a record; verify names it when it reads it)."""
    found = time_and_type(payload)
    if found is not None:
        return found
    try:
        record = orjson.loads(payload)
        return int(record.get("recorded_unix_ms", 0)), record.get("type")
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


def _whole(directory: Path, stats: RangeStats) -> Iterator[bytes]:
    stats.start_seq = None
    for _, payload in read_segment_files(directory, counts=stats.counts):
        yield payload


def read_since(directory: Path, since_ms: int | None, stats: RangeStats | None = None
               ) -> Iterator[bytes]:
    """The intact records of a record log directory, oldest first, from (about) the first one
    recorded at or after `since` (None: all) — from the record before it, or from the log's
    start: see the module's docstring. Never changes the directory."""
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory")
    stats = stats if stats is not None else RangeStats()
    start = plan_range(directory, since_ms, stats) if since_ms is not None else None
    if start is None or since_ms is None:
        yield from _whole(directory, stats)
        return
    stats.segments_skipped, stats.frames_skipped = start.segments_skipped, start.frames_skipped
    payloads = (p for _, p in read_segment_files(directory, start.segment, start.offset,
                                                 stats.counts))
    first = next(payloads, None)
    found = _time_and_type(first) if first is not None else None
    if first is None or found is None or found[0] >= since_ms:
        stats.segments_skipped = stats.frames_skipped = 0
        stats.fallback = (f"where the footers said to start (segment {start.segment}) no "
                          "record older than the range was read")
        yield from _whole(directory, stats)
        return
    try:
        stats.start_seq = int(orjson.loads(first)["seq"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        stats.start_seq = start.before  # verify names the unreadable record
    yield first
    yield from payloads


def through_checkpoint_after(payloads: Iterator[bytes], until_ms: int | None
                             ) -> Iterator[bytes]:
    """The records up to the first one recorded at or after `until`, then on to the first
    checkpoint from there, whose signature covers the range (as an export runs on); the
    reader stops there, so the segments after are never opened."""
    late = False
    for payload in payloads:
        yield payload
        if until_ms is None:
            continue
        found = _time_and_type(payload)
        if found is None:
            continue
        late = late or found[0] >= until_ms
        if late and found[1] == RECORD_TYPE_CHECKPOINT:
            return
