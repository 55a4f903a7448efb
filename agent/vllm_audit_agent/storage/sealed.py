"""A sealed WAL segment, compressed: its records in zstd frames, an index of the frames, and a
trailer that finds and checks the index. The record log seals each segment it has finished
writing this way (records/log.py); the ingest WAL never does.

File `ingest-NNNNNNNN.wal.zst` (little-endian):

    frame*   FRAME_HEADER (magic "AZF1" | compressed length u32 | raw length u32 | crc32 of the
             compressed bytes u32), then one zstd frame (with its content checksum) holding a
             run of whole WAL records byte for byte as the plain segment held them
             (segment_format.py: each record keeps its own header and CRC)
    index    JSON: {"version", "frames": [[raw offset, file offset, raw length, first seq,
             last seq, records], ...], "records", "raw_bytes", "first_seq", "last_seq",
             "meta": what the writer of the segment adds (the record log: its footer)}
    trailer  index length u32 | crc32(index) u32 | TRAILER_MAGIC

Frames of about FRAME_RAW_BYTES: a read of a record range decompresses the frames that hold
it, not the segment (measured on summary records of ~2.9 KB: 256 KiB frames at zstd level 3
store ~93 B a record at ~1.5 GB/s; 1 MiB frames ~79 B, 64 KiB ~134 B; a trained dictionary
would only pay for frames of a few records).

Trust. The index is a *hint*: it is used to seek (read a range, start the log without reading
its records) only when its CRC holds, and the record log checks the footers against each other
and against the records it does read (records/footers.py). Reading a segment through
(`walk_frames`) ignores the index: frames are found by their headers and every record by its
own CRC, so a forged or damaged index can hide nothing from `verify`, which recomputes every
hash from the records. A frame that fails its CRC or zstd's checksum is damage: skipped and
counted, and the seq gap it leaves is what verify reports.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import zstandard

from vllm_audit_agent.storage.datadir import fsync_dir, open_private
from vllm_audit_agent.storage.segment_format import Record

SEALED_FILE = re.compile(r"^ingest-(\d{8})\.wal\.zst$")
FRAME_MAGIC = b"AZF1"
FRAME_HEADER = struct.Struct("<4sIII")
TRAILER_MAGIC = b"AWALZST1"
TRAILER = struct.Struct("<II8s")
FRAME_RAW_BYTES = 256 << 10
LEVEL = 3
INDEX_VERSION = 1


def sealed_name(index: int) -> str:
    return f"ingest-{index:08d}.wal.zst"


@dataclass(frozen=True, slots=True)
class Frame:
    raw_offset: int
    file_offset: int  # of its FRAME_HEADER
    raw_length: int
    first_seq: int
    last_seq: int
    records: int


@dataclass
class SealedIndex:
    """What a sealed segment's index says (or what a scan of its frames found)."""

    frames: list[Frame]
    first_seq: int
    last_seq: int
    records: int
    raw_bytes: int
    #: File offset where the frames end (the index starts).
    frames_end: int
    meta: dict[str, Any] = field(default_factory=dict)
    #: False: rebuilt by reading the frames (the trailer or the index did not check).
    trusted: bool = True

    def frame_at(self, raw_offset: int) -> int:
        """The position in `frames` of the frame holding `raw_offset` (len: past the end)."""
        lo, hi = 0, len(self.frames)
        while lo < hi:
            mid = (lo + hi) // 2
            frame = self.frames[mid]
            if frame.raw_offset + frame.raw_length <= raw_offset:
                lo = mid + 1
            else:
                hi = mid
        return lo


def pack_sealed(data: bytes, records: Sequence[Record], meta: dict[str, Any]
                ) -> tuple[bytes, SealedIndex]:
    """The bytes of a sealed segment holding the intact `records` of a plain segment's
    `data`, and its index."""
    compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
    frames: list[Frame] = []
    parts: list[bytes] = []
    raw_offset = file_offset = 0
    i = 0
    while i < len(records):
        j, size = i, 0
        while j < len(records) and (size == 0 or size + records[j].end - records[j].start
                                    <= FRAME_RAW_BYTES):
            size += records[j].end - records[j].start
            j += 1
        raw = b"".join(data[r.start:r.end] for r in records[i:j])
        packed = compressor.compress(raw)
        parts.append(FRAME_HEADER.pack(FRAME_MAGIC, len(packed), len(raw), zlib.crc32(packed)))
        parts.append(packed)
        frames.append(Frame(raw_offset, file_offset, len(raw), records[i].seq,
                            records[j - 1].seq, j - i))
        raw_offset += len(raw)
        file_offset += FRAME_HEADER.size + len(packed)
        i = j
    index = SealedIndex(frames, records[0].seq if records else 0,
                        records[-1].seq if records else 0, len(records), raw_offset,
                        file_offset, meta)
    body = orjson.dumps({
        "version": INDEX_VERSION, "frames": [[f.raw_offset, f.file_offset, f.raw_length,
                                              f.first_seq, f.last_seq, f.records] for f in frames],
        "records": index.records, "raw_bytes": index.raw_bytes, "first_seq": index.first_seq,
        "last_seq": index.last_seq, "meta": meta})
    parts.append(body)
    parts.append(TRAILER.pack(len(body), zlib.crc32(body), TRAILER_MAGIC))
    return b"".join(parts), index


def write_file(path: Path, data: bytes, fsync: bool = True) -> None:
    """`data` at `path` through a temp file and a rename: the file is whole or absent."""
    tmp = path.with_name(path.name + ".tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def read_index(path: Path) -> SealedIndex | None:
    """The index a sealed segment's trailer names, if its CRC and shape check (None: not)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < TRAILER.size:
                return None
            f.seek(size - TRAILER.size)
            length, crc, magic = TRAILER.unpack(f.read(TRAILER.size))
            if magic != TRAILER_MAGIC or length > size - TRAILER.size:
                return None
            f.seek(size - TRAILER.size - length)
            body = f.read(length)
    except OSError:
        return None
    if zlib.crc32(body) != crc:
        return None
    try:
        doc = orjson.loads(body)
        frames = [Frame(*map(int, row)) for row in doc["frames"]]
        meta = doc.get("meta") or {}
        if doc.get("version") != INDEX_VERSION or not isinstance(meta, dict):
            return None
        return SealedIndex(frames, int(doc["first_seq"]), int(doc["last_seq"]),
                           int(doc["records"]), int(doc["raw_bytes"]),
                           size - TRAILER.size - length, meta)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


@dataclass(slots=True)
class FrameRead:
    """One frame read: its raw bytes (None: damaged, skipped) and where it lies in the file."""

    file_offset: int
    file_end: int
    raw: bytes | None


def _frame_at(data: bytes | memoryview, pos: int, decompressor: zstandard.ZstdDecompressor
              ) -> FrameRead | None:
    """The frame whose header starts at `pos`, if its header and CRC hold (raw None: they
    hold but zstd refuses it)."""
    if len(data) - pos < FRAME_HEADER.size:
        return None
    magic, packed_length, raw_length, crc = FRAME_HEADER.unpack_from(data, pos)
    end = pos + FRAME_HEADER.size + packed_length
    if magic != FRAME_MAGIC or end > len(data):
        return None
    packed = data[pos + FRAME_HEADER.size:end]
    if zlib.crc32(packed) != crc:
        return None
    try:
        raw = decompressor.decompress(packed, max_output_size=raw_length)
    except zstandard.ZstdError:
        return FrameRead(pos, end, None)
    return FrameRead(pos, end, raw if len(raw) == raw_length else None)


def walk_frames(data: bytes) -> Iterator[FrameRead]:
    """Every frame of a sealed segment's bytes in order, found by their headers (the index is
    not used); a damaged range is yielded as one FrameRead with raw None. Never raises."""
    decompressor = zstandard.ZstdDecompressor()
    limit = len(data)
    if limit >= TRAILER.size:  # frames end where a trailer that checks says its index starts
        length, crc, magic = TRAILER.unpack_from(data, limit - TRAILER.size)
        start = limit - TRAILER.size - length
        if magic == TRAILER_MAGIC and start >= 0 and zlib.crc32(data[start:limit - TRAILER.size]) == crc:
            limit = start
    view = memoryview(data)[:limit]
    pos = 0
    while pos < limit:
        frame = _frame_at(view, pos, decompressor)
        if frame is not None:
            yield frame
            pos = frame.file_end
            continue
        probe = data.find(FRAME_MAGIC, pos + 1, limit)
        while probe >= 0 and _frame_at(view, probe, decompressor) is None:
            probe = data.find(FRAME_MAGIC, probe + 1, limit)
        end = probe if probe >= 0 else limit
        yield FrameRead(pos, end, None)
        pos = end


def read_frame(path: Path, frame: Frame, file_end: int) -> FrameRead:
    """One frame by the index (`file_end`: where the next frame starts)."""
    with open(path, "rb") as f:
        f.seek(frame.file_offset)
        data = f.read(file_end - frame.file_offset)
    found = _frame_at(data, 0, zstandard.ZstdDecompressor())
    if found is None or found.raw is None or len(found.raw) != frame.raw_length:
        return FrameRead(frame.file_offset, file_end, None)
    return FrameRead(frame.file_offset, file_end, found.raw)


def frame_ends(index: SealedIndex) -> list[int]:
    """Where each frame of the index ends in the file (the next one's start; the last one's:
    where the index starts)."""
    return [*(f.file_offset for f in index.frames[1:]), index.frames_end]


def rebuild_index(data: bytes, meta: dict[str, Any] | None = None) -> SealedIndex:
    """An index made by reading a sealed segment's frames (its own did not check): the
    frames that read, with their records' seqs; `trusted` False."""
    from vllm_audit_agent.storage.segment_format import scan

    frames: list[Frame] = []
    raw_offset = 0
    prev_seq: int | None = None
    end = 0
    for found in walk_frames(data):
        end = found.file_end
        if found.raw is None:
            continue
        records, _ = scan(found.raw, prev_seq)
        if not records:
            continue
        frames.append(Frame(raw_offset, found.file_offset, len(found.raw), records[0].seq,
                            records[-1].seq, len(records)))
        raw_offset += len(found.raw)
        prev_seq = records[-1].seq
    return SealedIndex(frames, frames[0].first_seq if frames else 0,
                       frames[-1].last_seq if frames else 0, sum(f.records for f in frames),
                       raw_offset, end, dict(meta or {}), trusted=False)
