"""Append-only, segmented write-ahead log of ingested batches.

Record layout (little-endian), 20-byte header then the payload:

    magic u32 | length u32 | seq u64 | crc32 u32 (over magic, length, seq, payload) | payload

`seq` counts records of this log (1, 2, …) across segments and restarts, so a gap between two
intact records says exactly how many were lost between them; the non-zero magic means a run of
zeroed bytes never parses as a record. Records go to numbered segment files
(`ingest-00000001.wal`, …); a new one starts when the current one reaches `segment_bytes`.

Recovery (at open) validates record by record and resynchronises after a damaged record by
searching forward for the next intact header+CRC, so one damaged record never costs the intact
ones after it (Kafka's log recovery and Vector's disk buffer do the same). Damaged byte ranges
are copied to `quarantine/<segment>.<offset>.bad` (0600), counted (`damaged_records`,
`damaged_bytes`) and the segment is rewritten atomically with its intact records, plus a
"lost" marker record where an exact count was known, so that the seq gap is counted once and
not again at the next open. An incomplete record at the very end of the newest segment is a
crash mid-append — never acknowledged — and is truncated and counted apart
(`torn_tail_bytes`); a damaged length field in the newest segment's last record looks the
same and is counted as torn too.

An append either completes or leaves the log exactly as it was: on a write/fsync/rotation
error the segment is truncated back and `WalWriteError` says why (disk_full, disk_error);
`healthy` is False until an append succeeds again. Under fsync=batch a record is acknowledged
only after `sync()`, so a failed sync truncates the records appended since the last good one.

Sealed segments are deleted by the agent's retention (state.reclaim_wal) once every trail they
hold is final and its record delivered; the log is therefore bounded by what is still owed
downstream. When that reaches `max_bytes`, appends are refused (`WalFull`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, NoReturn

from vllm_audit_agent.storage.datadir import (
    FILE_MODE,
    fsync_dir,
    open_private,
    private_dir,
    write_private_file,
)

MAGIC = int.from_bytes(b"AWAL", "little")
#: A record that stands for records lost to damage (payload: first and last lost seq). Written
#: by recovery where it removed damage, so the seq gap it leaves is counted once, not at every
#: open. Never replayed.
LOST_MAGIC = int.from_bytes(b"ALST", "little")
_PREFIX = struct.Struct("<IIQ")  # magic, length, seq: what the CRC covers before the payload
_HEADER = struct.Struct("<IIQI")
HEADER_SIZE = _HEADER.size
_MAGIC_BYTES = (struct.pack("<I", MAGIC), struct.pack("<I", LOST_MAGIC))
_LOST = struct.Struct("<QQ")
MAX_PAYLOAD = 0xFFFFFFFF
#: Records in one `append_many` write: two iovecs each, under Linux's IOV_MAX (1024).
MAX_RUN_RECORDS = 500
_CRC = struct.Struct("<I")
_SEGMENT = re.compile(r"^ingest-(\d{8})\.wal$")
QUARANTINE_DIR = "quarantine"
#: The closed set of WalWriteError reasons (failed_appends is born at 0 for each).
WRITE_ERROR_REASONS = ("disk_full", "disk_error")
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class WalRefused(Exception):
    """An append that did not happen: the log is exactly as it was before the call.

    `reason` is the lower-case name of a `vllm_audit.v1.RefusalReason` (wal_full,
    disk_full, disk_error); ingest answers the batch with that refusal."""

    reason = "disk_error"


class WalFull(WalRefused):
    """The log is at its configured cap."""

    reason = "wal_full"


class WalWriteError(WalRefused):
    """The file system refused the write or the fsync (ENOSPC → disk_full, else disk_error)."""

    def __init__(self, message: str, reason: str = "disk_error") -> None:
        super().__init__(message)
        self.reason = reason


def write_error_reason(exc: OSError) -> str:
    return "disk_full" if exc.errno in _DISK_FULL_ERRNOS else "disk_error"


def _segment_name(index: int) -> str:
    return f"ingest-{index:08d}.wal"


def encode(seq: int, payload: bytes, magic: int = MAGIC) -> bytes:
    """One framed record (the append path inlines this)."""
    prefix = _PREFIX.pack(magic, len(payload), seq)
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


def _record_at(data: memoryview, pos: int, prev_seq: int | None) -> Record | None:
    """The intact record starting at `pos`, if one does: magic, bounds, CRC and a seq past
    `prev_seq` (seqs only grow, so an older copy of a record never passes as a new one)."""
    if len(data) - pos < HEADER_SIZE:
        return None
    magic, length, seq, crc = _HEADER.unpack_from(data, pos)
    end = pos + HEADER_SIZE + length
    if (magic != MAGIC and magic != LOST_MAGIC) or end > len(data) or (
            prev_seq is not None and seq <= prev_seq):
        return None
    body = pos + HEADER_SIZE
    if zlib.crc32(data[body:end], zlib.crc32(data[pos:pos + _PREFIX.size])) != crc:
        return None
    return Record(pos, end, seq, magic == LOST_MAGIC)


def _marker_first(data: bytes, record: Record) -> int:
    """The first seq a lost_marker stands for (its own seq if the payload is not one)."""
    if record.end - record.start != HEADER_SIZE + _LOST.size:
        return record.seq
    first, _ = _LOST.unpack_from(data, record.start + HEADER_SIZE)
    return int(min(max(first, 1), record.seq))


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


def is_torn(data: bytes, damage: Damage) -> bool:
    """Damage that looks like an append cut short: it runs to the end, and there is either
    less than a header or a header whose record would end past the end of the file."""
    if damage.end != len(data) or damage.next_seq is not None:
        return False
    if len(data) - damage.start < HEADER_SIZE:
        return True
    magic, length, _, _ = _HEADER.unpack_from(data, damage.start)
    return bool(magic in (MAGIC, LOST_MAGIC) and damage.start + HEADER_SIZE + length > len(data))


class WriteAheadLog:
    def __init__(self, directory: Path, max_bytes: int, fsync: str = "batch",
                 segment_bytes: int | None = None) -> None:
        self.directory = directory
        self.quarantine_dir = directory / QUARANTINE_DIR
        self.max_bytes = max_bytes
        #: Small enough that retention can reclaim space long before the cap.
        self.segment_bytes = segment_bytes or max(1 << 20, min(64 << 20, max_bytes // 16))
        self.fsync = fsync
        # Found at open: a crash mid-append (never acknowledged) vs damage to stored records.
        self.torn_tail_bytes = 0
        self.damaged_records = 0
        self.damaged_bytes = 0
        self.refused_appends = 0  # WalFull: the log is at max_bytes
        #: append()/sync() calls that failed (the batch refused, the log left as it was).
        self.failed_appends = dict.fromkeys(WRITE_ERROR_REASONS, 0)
        self.deleted_segments = 0
        #: False from a failed append/sync until one succeeds again (readiness).
        self.healthy = True
        self.last_error = ""
        # Appends run on a worker thread, deletions on the agent's loop.
        self._lock = threading.Lock()
        private_dir(directory)
        #: index -> bytes, oldest first; the last one is open for appends.
        self._segments: dict[int, int] = {}
        self._next_seq = self._recover()
        if not self._segments:
            self._segments[1] = 0
        self._size = sum(self._segments.values())
        self.current = max(self._segments)
        self._fd = open_private(self._path(self.current), os.O_WRONLY | os.O_APPEND)
        # What a failed sync rolls back to: the current segment's synced end and next seq.
        self._synced = (self._segments[self.current], self._next_seq)
        #: Set when a failed append could not truncate its partial record away.
        self._truncate_to: int | None = None

    def _path(self, index: int) -> Path:
        return self.directory / _segment_name(index)

    @property
    def size(self) -> int:
        """Bytes in all segments (kept as a running total: other threads read it unlocked)."""
        return self._size

    def segments(self) -> list[int]:
        """A snapshot of the segment indexes, without the lock: `sync()` holds it for a whole
        fsync, and the agent's loop calls this every sweep (it stalled ingest for an fsync
        each time). list() copies the dict's keys in one C call that keeps the GIL, so
        another thread's append cannot change it half-way."""
        return list(self._segments)

    # -- recovery ---------------------------------------------------------------------------

    def _recover(self) -> int:
        """Scans every segment, keeps the intact records; returns the next record seq."""
        indexes = []
        for path in self.directory.iterdir():
            match = _SEGMENT.match(path.name)
            if match:
                indexes.append(int(match.group(1)))
            elif path.name.endswith(".wal.tmp"):
                path.unlink()  # a rewrite that crashed before its rename; the original stands
        indexes.sort()
        # Lost records are counted per run of damaged ranges with no intact record between
        # them (a run may cross a segment boundary): exactly from the seq gap when the intact
        # records on both sides are known and no deleted segment lies between them (so a
        # sealed segment cut at a record boundary is counted too); else one record per range
        # (at least one: records never span segments). Segment 1 starts the log at seq 1.
        run: list[Damage] = []
        run_exact = exact = bool(indexes) and indexes[0] == 1
        last_seq: int | None = 0 if exact else None
        for position, index in enumerate(indexes):
            if position and index != indexes[position - 1] + 1:
                self._count_run(run, last_seq, None, run_exact)
                run, exact = [], False  # a deleted segment in between: its seqs are gone
            path = self._path(index)
            os.chmod(path, FILE_MODE)  # tighten files an older version left 0644
            data = path.read_bytes()
            records, damage = scan(data, last_seq)
            torn = None
            if index == indexes[-1] and damage and is_torn(data, damage[-1]):
                torn = damage.pop()
                self.torn_tail_bytes += len(data) - torn.start
            events: list[Record | Damage] = sorted([*records, *damage], key=lambda e: e.start)
            markers: dict[int, bytes] = {}  # record start -> lost_marker to put before it
            for event in events:
                if isinstance(event, Record):
                    # A marker from an earlier recovery continues the gap it stands for.
                    upto = _marker_first(data, event) if event.lost else event.seq
                    lost = self._count_run(run, last_seq, upto, run_exact if run else exact)
                    if lost:
                        markers[event.start] = lost_marker(upto - lost, upto - 1)
                    run, last_seq, exact = [], event.seq, True
                else:
                    if not run:
                        run_exact = exact
                    run.append(event)
                    self.damaged_bytes += event.end - event.start
                    self._quarantine(path.name, event.start, data[event.start:event.end])
            if damage or markers:
                write_private_file(path, b"".join(
                    markers.get(r.start, b"") + data[r.start:r.end] for r in records))
            elif torn is not None:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, torn.start)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._segments[index] = (sum(r.end - r.start for r in records)
                                     + sum(map(len, markers.values())))
        self._count_run(run, last_seq, None, run_exact)
        return (last_seq or 0) + 1

    def _count_run(self, run: list[Damage], prev_seq: int | None, next_seq: int | None,
                   exact: bool) -> int:
        """Counts the records lost in `run`; returns how many when known exactly."""
        if exact and prev_seq is not None and next_seq is not None:
            lost = max(0, next_seq - prev_seq - 1)
            self.damaged_records += lost
            return lost
        self.damaged_records += len(run)
        return 0

    def _quarantine(self, segment: str, offset: int, data: bytes) -> None:
        """Keeps damaged bytes for inspection; a rerun after a crash rewrites the same file."""
        private_dir(self.quarantine_dir)
        path = self.quarantine_dir / f"{segment}.{offset}.bad"
        n = 1
        while path.exists() and path.read_bytes() != data:  # a later, different damage
            path = self.quarantine_dir / f"{segment}.{offset}.{n}.bad"
            n += 1
        write_private_file(path, data)

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

    # -- appends ----------------------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Writes one record; returns the index of the segment that holds it.

        Raises WalFull when the log would pass its cap, WalWriteError when the file system
        refuses (the log is then exactly as it was)."""
        length = len(payload)
        record_size = HEADER_SIZE + length
        with self._lock:
            if self._size + record_size > self.max_bytes:
                self.refused_appends += 1
                raise WalFull(f"WAL at {self._size} bytes; cap {self.max_bytes}")
            if length > MAX_PAYLOAD:
                raise ValueError(f"WAL record of {length} bytes; at most {MAX_PAYLOAD}")
            if self._fd < 0:
                raise WalWriteError("WAL is closed", "disk_error")
            offset = self._segments[self.current]
            if self._truncate_to is not None:
                self._repair(offset)
            fd = self._fd
            # A new segment becomes current only once its first record is written: a failed
            # append leaves neither a record nor an empty segment behind.
            rotating = bool(offset) and offset + record_size > self.segment_bytes
            if rotating:
                fd = self._open_next()
            seq = self._next_seq
            prefix = _PREFIX.pack(MAGIC, length, seq)
            header = prefix + struct.pack("<I", zlib.crc32(payload, zlib.crc32(prefix)))
            try:
                written = os.writev(fd, (header, payload))
                if written != record_size:  # a short write (the disk filling up): finish it
                    _write_all(fd, memoryview(header + payload)[written:])
                if self.fsync == "always":
                    os.fsync(fd)
            except OSError as exc:
                if rotating:
                    self._discard_next(fd)
                    self._refuse(exc)
                self._roll_back(offset, seq, exc)
            if rotating:
                os.close(self._fd)
                self._fd = fd
                self.current += 1
                offset = 0
            self._next_seq = seq + 1
            self._segments[self.current] = offset + record_size
            self._size += record_size
            if self.fsync == "always" or rotating:
                # The sealed segment was synced; the new one holds one record (maybe unsynced).
                self._synced = (offset + record_size, seq + 1) if self.fsync == "always" \
                    else (0, seq)
            self.healthy = True
            return self.current

    def append_many(self, payloads: Sequence[bytes]) -> tuple[list[int], WalRefused | None]:
        """Appends records in order, each run of them that fits in the open segment with one
        `writev` (the record log writes a group of small records at a time: a write call,
        a lock and a header per record each cost more than the bytes). Returns the segment
        of each record appended and the refusal that stopped the rest (None: all went in).
        A run that fails is rolled back whole, as `append` rolls back its one record; a
        record that needs a new segment goes through `append`."""
        out: list[int] = []
        i, n = 0, len(payloads)
        try:
            while i < n:
                taken = self._append_run(payloads, i)
                if taken:
                    out += [self.current] * taken
                    i += taken
                else:
                    out.append(self.append(payloads[i]))  # rotation, a cap, the checks
                    i += 1
        except WalRefused as exc:
            return out, exc
        return out, None

    def _append_run(self, payloads: Sequence[bytes], start: int) -> int:
        """Writes the records from `start` on that fit in the open segment and under the
        caps, with one writev; returns how many (0: leave the next one to `append`)."""
        with self._lock:
            if self._fd < 0 or self._truncate_to is not None:
                return 0
            offset = self._segments[self.current]
            cap_room, segment_room = self.max_bytes - self._size, self.segment_bytes - offset
            seq = self._next_seq
            iov: list[bytes] = []
            size = 0
            for payload in payloads[start:start + MAX_RUN_RECORDS]:
                length = len(payload)
                end = size + HEADER_SIZE + length
                if end > cap_room or length > MAX_PAYLOAD:
                    break
                if end > segment_room and (offset or size):  # (an empty segment takes one)
                    break
                prefix = _PREFIX.pack(MAGIC, length, seq + len(iov) // 2)
                iov.append(prefix + _CRC.pack(zlib.crc32(payload, zlib.crc32(prefix))))
                iov.append(payload)
                size += HEADER_SIZE + length
            if not iov:
                return 0
            try:
                written = os.writev(self._fd, iov)
                if written != size:  # a short write (the disk filling up): finish it
                    _write_all(self._fd, memoryview(b"".join(iov))[written:])
                if self.fsync == "always":
                    os.fsync(self._fd)
            except OSError as exc:
                self._segments[self.current] = offset + size  # what _roll_back takes back
                self._size += size
                self._roll_back(offset, seq, exc)
            taken = len(iov) // 2
            self._next_seq = seq + taken
            self._segments[self.current] = offset + size
            self._size += size
            if self.fsync == "always":
                self._synced = (offset + size, seq + taken)
            self.healthy = True
            return taken

    def _refuse(self, exc: OSError) -> NoReturn:
        reason = write_error_reason(exc)
        self.failed_appends[reason] += 1
        self.healthy = False
        self.last_error = f"{reason}: {exc}"
        raise WalWriteError(f"WAL write failed, batch not stored: {exc}", reason) from exc

    def _roll_back(self, offset: int, seq: int, exc: OSError) -> NoReturn:
        """Truncates the current segment back to `offset` and raises WalWriteError."""
        try:
            os.ftruncate(self._fd, offset)
        except OSError:
            # Nothing may land behind the partial record: the next append truncates first.
            self._truncate_to = offset
        self._size -= self._segments[self.current] - offset
        self._segments[self.current] = offset
        self._next_seq = seq
        self._refuse(exc)

    def _repair(self, offset: int) -> None:
        """Retries the truncation a failed append could not finish."""
        try:
            os.ftruncate(self._fd, offset)
        except OSError as exc:
            self._refuse(exc)
        self._truncate_to = None

    def _open_next(self) -> int:
        """Seals the current segment and creates the next; on failure nothing has changed."""
        if self.fsync != "never":
            try:
                os.fsync(self._fd)  # a sealed segment is complete on disk
            except OSError as exc:
                self._roll_back(*self._synced, exc)
            self._synced = (self._segments[self.current], self._next_seq)
        fd = -1
        try:
            # O_TRUNC: a leftover of an earlier failed rotation never holds an acked record.
            fd = open_private(self._path(self.current + 1), os.O_WRONLY | os.O_APPEND | os.O_TRUNC)
            if self.fsync != "never":
                fsync_dir(self.directory)  # the new file's name is durable before its records
        except OSError as exc:
            if fd >= 0:
                self._discard_next(fd)
            self._refuse(exc)
        return fd

    def _discard_next(self, fd: int) -> None:
        os.close(fd)
        with contextlib.suppress(OSError):  # if it stays, it is empty: harmless at open
            self._path(self.current + 1).unlink()

    def delete(self, index: int) -> bool:
        """Deletes a sealed segment. The open one is never deleted; returns whether it was."""
        with self._lock:
            if index == self.current or index not in self._segments:
                return False
            self._size -= self._segments.pop(index)
            self._path(index).unlink(missing_ok=True)
            self.deleted_segments += 1
            return True

    def sync(self) -> None:
        """Under batch/always fsyncs everything appended so far. On failure the records
        appended since the last good sync (not acknowledged yet) are truncated away."""
        with self._lock:
            if self.fsync == "never" or self._fd < 0:
                return
            end = (self._segments[self.current], self._next_seq)
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._roll_back(*self._synced, exc)
            self._synced = end
            self.healthy = True

    def close(self) -> None:
        """Idempotent; syncs first (a failed sync is in last_error and failed_appends)."""
        with contextlib.suppress(WalWriteError):
            self.sync()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]
