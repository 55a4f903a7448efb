"""Reading a WAL directory's segments read-only, without opening the log (no recovery, no
rewrite, no lock): plain segments and sealed (compressed) ones, oldest first, each read through
record by record (every record's CRC checked; a sealed one by its frames' headers, never its
index). What the offline readers (`export`, `verify`) use, so they need no scratch copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vllm_audit_agent.storage.sealed import SEALED_FILE, sealed_name, walk_frames
from vllm_audit_agent.storage.segment_format import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    SEGMENT_FILE,
    scan,
    segment_name,
)


def segment_indexes(directory: Path) -> list[tuple[int, bool]]:
    """(index, sealed) of every segment file, oldest first (a sealed copy wins over a plain one
    left beside it by a crash between the two)."""
    found: dict[int, bool] = {}
    for path in directory.iterdir():
        if (match := SEALED_FILE.match(path.name)) is not None:
            found[int(match.group(1))] = True
        elif (match := SEGMENT_FILE.match(path.name)) is not None:
            found.setdefault(int(match.group(1)), False)
    return sorted(found.items())


@dataclass
class ReadCounts:
    """What a read opened: segment files whose records it read, frames it decompressed."""

    segments: int = 0
    frames: int = 0


def segment_chunks(directory: Path, index: int, sealed: bool, offset: int = 0,
                   counts: ReadCounts | None = None) -> Iterator[tuple[bytes, bool]]:
    """The raw record bytes of one segment: the plain file, or each intact frame (from the
    frame whose header starts at file `offset` on: frames are then found by their headers as
    from the start, the index is not read); and whether they are checked already (a frame:
    its CRC and zstd's content checksum held)."""
    counts = counts if counts is not None else ReadCounts()
    counts.segments += 1
    if not sealed:
        yield (directory / segment_name(index)).read_bytes(), False
        return
    with open(directory / sealed_name(index), "rb") as f:
        f.seek(offset)
        data = f.read()  # to the end: the trailer tells walk_frames where the frames end
    for frame in walk_frames(data):
        counts.frames += 1
        if frame.raw is not None:
            yield frame.raw, True


def _split_checked(data: bytes, prev_seq: int | None) -> tuple[list[bytes], int | None] | None:
    """The payloads of a frame whose checksums held, split by their headers alone (its records
    were intact when sealed, and the frame's checksums cover every byte of them since, so a
    record's own CRC would check nothing more); None when a header is not a plain record in
    order (a lost marker, or bytes the writer did not write): `scan` then reads the frame."""
    out: list[bytes] = []
    pos, size = 0, len(data)
    unpack = HEADER.unpack_from
    while pos < size:
        if size - pos < HEADER_SIZE:
            return None
        magic, length, seq, _ = unpack(data, pos)
        end = pos + HEADER_SIZE + length
        if magic != MAGIC or end > size or (prev_seq is not None and seq <= prev_seq):
            return None
        out.append(data[pos + HEADER_SIZE:end])
        prev_seq, pos = seq, end
    return out, prev_seq


def read_segment_files(directory: Path, first_segment: int = 0, first_offset: int = 0,
                       counts: ReadCounts | None = None) -> Iterator[tuple[int, bytes]]:
    """(segment, payload) of every intact record, oldest first; from `first_segment` on, in
    it from the frame at file offset `first_offset` (a sealed one's: a plain one is read
    whole). Segments are opened as the reader gets to them: one that stops early leaves the
    rest unread."""
    prev_seq: int | None = None
    for index, sealed in segment_indexes(directory):
        if index < first_segment:
            continue
        offset = first_offset if index == first_segment and sealed else 0
        for data, checked in segment_chunks(directory, index, sealed, offset, counts):
            split = _split_checked(data, prev_seq) if checked else None
            if split is not None:
                payloads, prev_seq = split
                for payload in payloads:
                    yield index, payload
                continue
            records, _ = scan(data, prev_seq)
            for record in records:
                if not record.lost:
                    yield index, data[record.start + HEADER_SIZE:record.end]
            if records:
                prev_seq = records[-1].seq
