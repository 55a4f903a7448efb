"""Append-only, segmented write-ahead log of ingested batches.

Record layout: 4-byte little-endian length, 4-byte CRC32 of the payload, payload. Records go
to numbered segment files (`ingest-00000001.wal`, …); a new segment starts when the current
one reaches `segment_bytes`. Replay reads the segments in order and stops a segment at a torn
or corrupt tail (a crash mid-append), truncates it and counts it: everything that was
acknowledged was fully written (and, under fsync=always|batch, synced) before its ack.

Sealed segments are deleted by the retention ledger (retention.py) once every trail they hold
is final and its record delivered; the log is therefore bounded by what is still owed
downstream. When that reaches `max_bytes`, appends are refused (`WalFull`): the ingest handler
answers "refused", and the hook keeps the batch and retries it. Explicit and counted.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

_HEADER = struct.Struct("<II")
_SEGMENT = re.compile(r"^ingest-(\d{8})\.wal$")


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


def _segment_name(index: int) -> str:
    return f"ingest-{index:08d}.wal"


class WriteAheadLog:
    def __init__(self, directory: Path, max_bytes: int, fsync: str = "batch",
                 segment_bytes: int | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        #: Small enough that retention can reclaim space long before the cap.
        self.segment_bytes = segment_bytes or max(1 << 20, min(64 << 20, max_bytes // 16))
        self.fsync = fsync
        self.torn_tail_bytes = 0
        self.refused_appends = 0
        self.deleted_segments = 0
        # Appends run on a worker thread, deletions on the agent's loop.
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        #: index -> bytes, oldest first; the last one is open for appends.
        self._segments: dict[int, int] = {}
        for path in sorted(directory.iterdir()):
            match = _SEGMENT.match(path.name)
            if match:
                self._segments[int(match.group(1))] = self._recover(path)
        if not self._segments:
            self._segments[1] = 0
        self._size = sum(self._segments.values())
        self.current = max(self._segments)
        self._file = open(self._path(self.current), "ab")  # noqa: SIM115 - owned until close()

    def _path(self, index: int) -> Path:
        return self.directory / _segment_name(index)

    @property
    def size(self) -> int:
        """Bytes in all segments (kept as a running total: other threads read it unlocked)."""
        return self._size

    def segments(self) -> list[int]:
        with self._lock:
            return list(self._segments)

    def _recover(self, path: Path) -> int:
        """Truncates a torn tail; returns the segment's good size."""
        good = 0
        for end, _ in self._scan(path):
            good = end
        total = path.stat().st_size
        if total > good:
            self.torn_tail_bytes += total - good
            with open(path, "r+b") as f:
                f.truncate(good)
        return good

    @staticmethod
    def _scan(path: Path) -> Iterator[tuple[int, bytes]]:
        with open(path, "rb") as f:
            offset = 0
            while True:
                header = f.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    return
                length, crc = _HEADER.unpack(header)
                payload = f.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    return
                offset += _HEADER.size + length
                yield offset, payload

    def replay(self) -> Iterator[tuple[int, bytes]]:
        """(segment index, payload) of every record, oldest first."""
        self._file.flush()
        for index in self.segments():
            for _, payload in self._scan(self._path(index)):
                yield index, payload

    def append(self, payload: bytes) -> int:
        """Writes one record; returns the index of the segment that holds it.

        Raises WalFull when the log would pass its cap."""
        record_size = _HEADER.size + len(payload)
        with self._lock:
            if self.size + record_size > self.max_bytes:
                self.refused_appends += 1
                raise WalFull(f"WAL at {self.size} bytes; cap {self.max_bytes}")
            if self._segments[self.current] and (
                    self._segments[self.current] + record_size > self.segment_bytes):
                self._rotate()
            self._file.write(_HEADER.pack(len(payload), zlib.crc32(payload)))
            self._file.write(payload)
            self._segments[self.current] += record_size
            self._size += record_size
            if self.fsync == "always":
                self._sync()
            return self.current

    def _rotate(self) -> None:
        self._sync()  # a sealed segment is complete on disk
        self._file.close()
        self.current += 1
        self._segments[self.current] = 0
        self._file = open(self._path(self.current), "ab")  # noqa: SIM115 - owned until close()

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
        """Flushes (and under batch/always fsyncs) everything appended so far."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        self._file.flush()
        if self.fsync != "never":
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._sync()
                self._file.close()
