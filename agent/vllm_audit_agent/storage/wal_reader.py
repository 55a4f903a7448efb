"""Reading a WAL's records back, oldest first: all of them (`replay`), or about so many bytes
from a saved position on (`read_from`, the seek a reader that goes on where it stopped needs).

Readers run while the log is appended to: a segment is read up to the size the writer last
recorded for it, so a record being appended is never half read. A sealed (compressed) segment
(sealed.py) is read frame by frame: `replay` reads it through by its frames' headers, never its
index; `read_from` seeks by the index to the frame that holds its position.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vllm_audit_agent.storage.sealed import (
    SealedIndex,
    frame_ends,
    read_frame,
    sealed_name,
    walk_frames,
)
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
    _sealed: dict[int, SealedIndex]
    _lock: threading.Lock

    def _path(self, index: int) -> Path:
        return self.directory / segment_name(index)

    def _sealed_path(self, index: int) -> Path:
        return self.directory / sealed_name(index)

    def sealed_index(self, index: int) -> SealedIndex | None:
        """What a sealed segment's index says (None: the segment is plain, or gone)."""
        with self._lock:
            return self._sealed.get(index)

    def _state(self, index: int) -> tuple[int | None, SealedIndex | None]:
        with self._lock:
            return self._segments.get(index), self._sealed.get(index)

    def _chunks(self, index: int) -> Iterator[bytes]:
        """The raw bytes of one segment: the plain file up to its recorded size, or each
        intact frame of the sealed one (a damaged frame is counted and skipped)."""
        for attempt in (0, 1):
            size, sealed = self._state(index)
            if size is None:
                return
            try:
                if sealed is None:
                    with open(self._path(index), "rb") as f:
                        data = f.read(size)
                    yield data
                    return
                with open(self._sealed_path(index), "rb") as f:
                    packed = f.read()
            except FileNotFoundError:
                if attempt:
                    raise
                continue  # sealed (or deleted) since the state was read: read it again
            for frame in walk_frames(packed):
                if frame.raw is None:
                    self.damaged_records += 1
                    self.damaged_bytes += frame.file_end - frame.file_offset
                else:
                    yield frame.raw
            return

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
            for data in self._chunks(index):
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
            size, sealed = self._state(index)
            if sealed is not None:
                taken, prev_seq, done = self._read_sealed(index, sealed, offset, prev_seq,
                                                          max_bytes - taken, out, taken)
                if out:
                    last = out[-1]
                    resume = Position(last[0], last[1], last[2]) if last[0] == index else resume
                if done:
                    break
                resume = Position(index, sealed.raw_bytes, prev_seq)
                continue
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

    def _read_sealed(self, index: int, sealed: SealedIndex, offset: int, prev_seq: int | None,
                     budget: int, out: list[ReadRecord], taken: int
                     ) -> tuple[int, int | None, bool]:
        """`read_from` in a sealed segment: from the frame holding `offset`, records until
        `budget` bytes are taken. Returns (bytes taken so far, the last seq passed, whether the
        budget ran out here)."""
        ends = frame_ends(sealed)
        start = taken
        for i in range(sealed.frame_at(offset), len(sealed.frames)):
            frame = sealed.frames[i]
            read = read_frame(self._sealed_path(index), frame, ends[i])
            if read.raw is None:
                self.damaged_records += frame.records
                self.damaged_bytes += read.file_end - read.file_offset
                continue
            for item in walk(read.raw, prev_seq, max(0, offset - frame.raw_offset)):
                if not isinstance(item, Record):
                    self.damaged_records += 1
                    self.damaged_bytes += item.end - item.start
                    continue
                prev_seq = item.seq
                if not item.lost:
                    out.append((index, frame.raw_offset + item.end, item.seq,
                                read.raw[item.start + HEADER_SIZE:item.end]))
                    taken += item.end - item.start
            if taken - start >= budget:
                return taken, prev_seq, True
        return taken, prev_seq, False
