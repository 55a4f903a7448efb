"""The bytes of a WAL segment file: how one record is framed, what the segment files are
called, and reading a segment's bytes back as intact records and damaged ranges.

Record layout (little-endian), 20-byte header then the payload:

    magic u32 | length u32 | seq u64 | crc32 u32 (over magic, length, seq, payload) | payload

`seq` counts records of this log (1, 2, …) across segments and restarts, so a gap between two
intact records says exactly how many were lost between them; the non-zero magic means a run of
zeroed bytes never parses as a record. Records go to numbered segment files
(`ingest-00000001.wal`, …).

Parsing never raises: after a damaged record it resynchronises by searching forward for the
next intact header+CRC, so one damaged record never costs the intact ones after it (Kafka's
log recovery and Vector's disk buffer do the same).
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

MAGIC = int.from_bytes(b"AWAL", "little")
#: A record that stands for records lost to damage (payload: first and last lost seq). Written
#: by recovery where it removed damage, so the seq gap it leaves is counted once, not at every
#: open. Never replayed.
LOST_MAGIC = int.from_bytes(b"ALST", "little")
PREFIX = struct.Struct("<IIQ")  # magic, length, seq: what the CRC covers before the payload
HEADER = struct.Struct("<IIQI")
HEADER_SIZE = HEADER.size
CRC = struct.Struct("<I")
MAX_PAYLOAD = 0xFFFFFFFF
SEGMENT_FILE = re.compile(r"^ingest-(\d{8})\.wal$")
_MAGIC_BYTES = (struct.pack("<I", MAGIC), struct.pack("<I", LOST_MAGIC))
_LOST = struct.Struct("<QQ")


def segment_name(index: int) -> str:
    return f"ingest-{index:08d}.wal"


def encode(seq: int, payload: bytes, magic: int = MAGIC) -> bytes:
    """One framed record (the append path inlines this)."""
    prefix = PREFIX.pack(magic, len(payload), seq)
    return prefix + struct.pack("<I", zlib.crc32(payload, zlib.crc32(prefix))) + payload


def lost_marker(first: int, last: int) -> bytes:
    """Stands for records first..last, lost and counted; takes the seq `last`."""
    return encode(last, _LOST.pack(first, last), LOST_MAGIC)


class Record(NamedTuple):
    """One intact record of a segment (a named tuple: made once per record at every scan,
    and a frozen dataclass cost a third of an agent's restart)."""

    start: int
    end: int
    seq: int
    lost: bool = False  # a lost_marker, not a payload


@dataclass
class Damage:
    """Bytes [start, end) of a segment that hold no intact record.

    `prev_seq`: seq of the last intact record before it in the log; `next_seq`: of the first
    one after it in this segment (None: the damage runs to the end of the segment)."""

    start: int
    end: int
    prev_seq: int | None
    next_seq: int | None


def marker_first(data: bytes, record: Record) -> int:
    """The first seq a lost_marker stands for (its own seq if the payload is not one)."""
    if record.end - record.start != HEADER_SIZE + _LOST.size:
        return record.seq
    first, _ = _LOST.unpack_from(data, record.start + HEADER_SIZE)
    return int(min(max(first, 1), record.seq))


def _record_at(data: memoryview, pos: int, prev_seq: int | None) -> Record | None:
    """The intact record starting at `pos`, if one does: magic, bounds, CRC and a seq past
    `prev_seq` (seqs only grow, so an older copy of a record never passes as a new one)."""
    if len(data) - pos < HEADER_SIZE:
        return None
    magic, length, seq, crc = HEADER.unpack_from(data, pos)
    end = pos + HEADER_SIZE + length
    if (magic != MAGIC and magic != LOST_MAGIC) or end > len(data) or (
            prev_seq is not None and seq <= prev_seq):
        return None
    body = pos + HEADER_SIZE
    if zlib.crc32(data[body:end], zlib.crc32(data[pos:pos + PREFIX.size])) != crc:
        return None
    return Record(pos, end, seq, magic == LOST_MAGIC)


def walk(data: bytes, prev_seq: int | None = None, pos: int = 0) -> Iterator[Record | Damage]:
    """The intact records and damaged ranges of one segment's bytes from offset `pos`, in
    order, found lazily (a reader that stops early does not check the rest). Never raises."""
    view = memoryview(data)
    size = len(data)
    while pos < size:
        record = _record_at(view, pos, prev_seq)
        if record is not None:
            yield record
            prev_seq, pos = record.seq, record.end
            continue
        # Resynchronise: the next offset where an intact record starts (find() runs in C;
        # each magic's next hit is kept, so the region is searched once per magic).
        hits = [data.find(m, pos + 1) for m in _MAGIC_BYTES]
        while True:
            probe = min((at for at in hits if at >= 0), default=-1)
            if probe < 0:
                break
            record = _record_at(view, probe, prev_seq)
            if record is not None:
                break
            hits = [data.find(m, probe + 1) if at == probe else at
                    for m, at in zip(_MAGIC_BYTES, hits, strict=True)]
        if record is None:
            yield Damage(pos, size, prev_seq, None)
            return
        yield Damage(pos, probe, prev_seq, record.seq)
        pos = probe


def scan(data: bytes, prev_seq: int | None = None) -> tuple[list[Record], list[Damage]]:
    """Splits one segment's bytes into intact records and damaged ranges. Never raises."""
    records: list[Record] = []
    damage: list[Damage] = []
    for item in walk(data, prev_seq):
        if isinstance(item, Record):
            records.append(item)
        else:
            damage.append(item)
    return records, damage
