"""The write-ahead log of ingested batches: appends to segmented files, each append either
complete or refused with the log left exactly as it was.

The format of a segment is in segment_format.py, the repair of a directory at open in
wal_recovery.py and reading back (`replay`, `read_from`) in wal_reader.py; this module writes.

Records go to numbered segment files; a new one starts when the current one reaches
`segment_bytes`. An append either completes or leaves the log exactly as it was: on a
write/fsync/rotation error the segment is truncated back and `WalWriteError` says why
(disk_full, disk_error); `healthy` is False until an append succeeds again. Under fsync=batch
a record is acknowledged only after `sync()`, so a failed sync truncates the records appended
since the last good one.

Sealed segments are deleted by the agent's retention (state.reclaim_wal) once every trail they
hold is final and its record delivered; the log is therefore bounded by what is still owed
downstream. When that reaches `max_bytes`, appends are refused (`WalFull`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from vllm_audit_agent.storage.datadir import fsync_dir, open_private, private_dir
from vllm_audit_agent.storage.sealed import SealedIndex, pack_sealed, write_file
from vllm_audit_agent.storage.segment_format import CRC, HEADER_SIZE, MAGIC, MAX_PAYLOAD, PREFIX, scan
from vllm_audit_agent.storage.wal_reader import WalReader
from vllm_audit_agent.storage.wal_recovery import QUARANTINE_DIR, Recovery

#: Records in one `append_many` write: two iovecs each, under Linux's IOV_MAX (1024).
MAX_RUN_RECORDS = 500
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


class WriteAheadLog(WalReader):
    def __init__(self, directory: Path, max_bytes: int, fsync: str = "batch",
                 segment_bytes: int | None = None) -> None:
        self.directory = directory
        self.quarantine_dir = directory / QUARANTINE_DIR
        self.max_bytes = max_bytes
        #: Small enough that retention can reclaim space long before the cap.
        self.segment_bytes = segment_bytes or max(1 << 20, min(64 << 20, max_bytes // 16))
        self.fsync = fsync
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
        recovery = Recovery(directory, self.quarantine_dir)
        self._next_seq = recovery.run()
        # Found at open: a crash mid-append (never acknowledged) vs damage to stored records.
        # (Readers add damage found later to the same counters.)
        self.torn_tail_bytes = recovery.torn_tail_bytes
        self.damaged_records = recovery.damaged_records
        self.damaged_bytes = recovery.damaged_bytes
        #: index -> bytes, oldest first; the last one is open for appends.
        self._segments = recovery.segments
        #: index -> the index of a sealed (compressed) segment (sealed.py; `seal_segment`).
        self._sealed = recovery.sealed
        self.sealed_index_rebuilt = recovery.sealed_index_rebuilt
        if not self._segments or max(self._segments) in self._sealed:
            self._segments[max(self._segments, default=0) + 1] = 0
        self._size = sum(self._segments.values())
        self.current = max(self._segments)
        self._fd = open_private(self._path(self.current), os.O_WRONLY | os.O_APPEND)
        # What a failed sync rolls back to: the current segment's synced end and next seq.
        self._synced = (self._segments[self.current], self._next_seq)
        #: Set when a failed append could not truncate its partial record away.
        self._truncate_to: int | None = None

    @property
    def size(self) -> int:
        """Bytes in all segments (kept as a running total: other threads read it unlocked)."""
        return self._size

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
            prefix = PREFIX.pack(MAGIC, length, seq)
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
                prefix = PREFIX.pack(MAGIC, length, seq + len(iov) // 2)
                iov.append(prefix + CRC.pack(zlib.crc32(payload, zlib.crc32(prefix))))
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

    def segment_size(self, index: int) -> int:
        """Bytes in one segment (0: not in the log)."""
        return self._segments.get(index, 0)

    def delete(self, index: int) -> bool:
        """Deletes a sealed segment. The open one is never deleted; returns whether it was."""
        with self._lock:
            if index == self.current or index not in self._segments:
                return False
            self._size -= self._segments.pop(index)
            self._sealed.pop(index, None)
            self._path(index).unlink(missing_ok=True)
            self._sealed_path(index).unlink(missing_ok=True)
            self.deleted_segments += 1
            return True

    def seal_segment(self, index: int, meta_of: Callable[[list[bytes]], dict[str, Any]]
                     ) -> SealedIndex | None:
        """Rewrites a finished segment compressed (sealed.py), with `meta_of(its payloads)` in
        its index; the plain file goes once the sealed one is durable. Returns its index, or
        None when it is not to be sealed (the open one, gone, sealed already, or holding
        damage: that stays as found, for recovery to quarantine and count)."""
        with self._lock:
            size = self._segments.get(index)
            if index >= self.current or size is None or index in self._sealed:
                return None
        with open(self._path(index), "rb") as f:
            data = f.read(size)
        records, damage = scan(data)
        if damage or len(data) != size or not records:
            return None
        payloads = [data[r.start + HEADER_SIZE:r.end] for r in records if not r.lost]
        packed, sealed = pack_sealed(data, records, meta_of(payloads))
        on_disk = len(packed)
        if on_disk >= size:  # a few small records: their footer outweighs them (tests)
            return None
        write_file(self._sealed_path(index), packed, fsync=self.fsync != "never")
        with self._lock:
            if index not in self._segments:  # deleted meanwhile
                self._sealed_path(index).unlink(missing_ok=True)
                return None
            self._size += on_disk - self._segments[index]
            self._segments[index] = on_disk
            self._sealed[index] = sealed
        # A reader that took the segment as plain and opens it after this retries as sealed.
        self._path(index).unlink(missing_ok=True)
        return sealed

    def unsealed(self) -> list[int]:
        """Finished segments not sealed yet, oldest first."""
        with self._lock:
            return [i for i in self._segments if i < self.current and i not in self._sealed]

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
