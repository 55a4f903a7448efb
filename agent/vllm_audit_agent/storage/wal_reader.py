"""Reading a WAL's records back, oldest first: all of them (`replay`), or about so many bytes
from a saved position on (`read_from`, the seek a reader that goes on where it stopped needs).

Readers run while the log is appended to: a segment is read up to the size the writer last
recorded for it, so a record being appended is never half read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vllm_audit_agent.storage.segment_format import HEADER_SIZE, Damage, Record, scan, segment_name, walk


@dataclass(frozen=True, slots=True)
class Position:
    """Where a sequential read of the log goes on: a segment, a byte offset in it, and the
    seq of the record before (a record there must have a greater one; None: any)."""

    segment: int
    offset: int
    prev_seq: int | None


#: One record as `read_from` gives it: (segment, end offset, seq, payload).
ReadRecord = tuple[int, int, int, bytes]


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _records_in(data: bytes, prev_seq: int | None, partial: bool
                ) -> tuple[list[Record], list[Damage], int]:
    """The records and damage of a window of a segment, and how far they reach (0: read a
    larger window). When the window stops short of the segment's end (`partial`), damage
    running to its end may be a record cut by the window: it is left for the next read,
    which starts after the records before it (if there are none, after a larger read)."""
    found: list[Record] = []
    damaged: list[Damage] = []
    for item in walk(data, prev_seq):
        if isinstance(item, Record):
            found.append(item)
            prev_seq = item.seq
        elif partial and item.next_seq is None:
            return found, damaged, found[-1].end if found else 0
        else:
            damaged.append(item)
    return found, damaged, len(data)


class WalReader:
    """The read side of `WriteAheadLog`, its base class: it reads the segments the writer
    keeps (their sizes under the writer's lock) and counts damage found since open on the
    log's own counters, so a damaged record is counted once whichever path found it."""

    directory: Path
    damaged_records: int
    damaged_bytes: int
    #: index -> bytes, oldest first (the writer's; read under `_lock`).
    _segments: dict[int, int]
    _lock: threading.Lock

    def _path(self, index: int) -> Path:
        return self.directory / segment_name(index)

    def segments(self) -> list[int]:
        """A snapshot of the segment indexes, without the lock: `sync()` holds it for a whole
        fsync, and the agent's loop calls this every sweep (it stalled ingest for an fsync
        each time). list() copies the dict's keys in one C call that keeps the GIL, so
        another thread's append cannot change it half-way."""
        return list(self._segments)

    def replay(self, first_segment: int = 0) -> Iterator[tuple[int, bytes]]:
        """(segment index, payload) of every record, oldest first; segments before
        `first_segment` are not read at all."""
        prev_seq: int | None = None
        for index in self.segments():
            if index < first_segment:
                continue
            with self._lock:
                size = self._segments.get(index)
            if size is None:
                continue  # deleted meanwhile
            with open(self._path(index), "rb") as f:
                data = f.read(size)
            records, damage = scan(data, prev_seq)
            for item in damage:  # damaged since open: counted, never silently skipped
                self.damaged_records += 1
                self.damaged_bytes += item.end - item.start
            for record in records:
                if not record.lost:
                    yield index, data[record.start + HEADER_SIZE:record.end]
            if records:
                prev_seq = records[-1].seq

    def read_from(self, position: Position, max_bytes: int
                  ) -> tuple[list[ReadRecord], Position]:
        """Intact records from `position` on, oldest first, about `max_bytes` of them (at
        least one when there is one), and where the next read goes on: the seek `replay()`
        lacks. A reader that goes on from there (or from the end of the last record it
        took) never rescans what it read before. Damage passed over is counted as by
        `replay()`, once."""
        out: list[ReadRecord] = []
        segment, offset, prev_seq = position.segment, position.offset, position.prev_seq
        resume = position
        taken = 0
        for index in self.segments():
            if index < segment:
                continue
            if index > segment:
                offset = 0
            with self._lock:
                size = self._segments.get(index)
            if size is None or offset >= size:
                continue  # deleted meanwhile, or read to its end
            window = size - offset
            if window > max_bytes - taken:
                window = max(max_bytes - taken, 1 << 20)
            while True:
                want = min(window, size - offset)
                data = _read_range(self._path(index), offset, want)
                # Short of the segment's end: more to read later. (A file cut shorter than
                # its recorded size since open is read to its end: that is damage.)
                partial = len(data) == want and offset + want < size
                found, damaged, walked = _records_in(data, prev_seq, partial)
                if walked or not partial:
                    break
                window *= 2  # damage or a large record across the window's end: look further
            for item in damaged:
                self.damaged_records += 1
                self.damaged_bytes += item.end - item.start
            for record in found:
                if not record.lost:
                    out.append((index, offset + record.end, record.seq,
                                data[record.start + HEADER_SIZE:record.end]))
                    taken += record.end - record.start
                prev_seq = record.seq
            resume = Position(index, offset + walked, prev_seq)
            if taken >= max_bytes or partial:
                break
        return out, resume
