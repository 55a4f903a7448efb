"""Append-only write-ahead log of ingested batches.

Record layout: 4-byte little-endian length, 4-byte CRC32 of the payload, payload. Replay stops
at a torn or corrupt tail (a crash mid-append), truncates it and counts it: everything that
was acknowledged was fully written (and, under fsync=always|batch, synced) before its ack.

When the log reaches its size cap, appends are refused (`WalFull`): the ingest handler then
does not acknowledge, and the hook keeps the batch and resends it later. Explicit and counted.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

_HEADER = struct.Struct("<II")


class WalFull(Exception):
    pass


class WriteAheadLog:
    def __init__(self, directory: Path, max_bytes: int, fsync: str = "batch") -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.torn_tail_bytes = 0
        self.refused_appends = 0
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "ingest.wal"
        self._recover()
        self._file = open(self.path, "ab")  # noqa: SIM115 - owned until close()
        self.size = self._file.tell()
        self._dirty = False

    def _recover(self) -> None:
        if not self.path.exists():
            return
        good = 0
        for end, _ in self._scan():
            good = end
        total = self.path.stat().st_size
        if total > good:
            self.torn_tail_bytes = total - good
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def _scan(self) -> Iterator[tuple[int, bytes]]:
        with open(self.path, "rb") as f:
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

    def replay(self) -> Iterator[bytes]:
        self._file.flush()
        for _, payload in self._scan():
            yield payload

    def append(self, payload: bytes) -> int:
        """Writes one record. Returns the offset after it. Raises WalFull at the size cap."""
        record_size = _HEADER.size + len(payload)
        if self.size + record_size > self.max_bytes:
            self.refused_appends += 1
            raise WalFull(f"WAL at {self.size} bytes; cap {self.max_bytes}")
        self._file.write(_HEADER.pack(len(payload), zlib.crc32(payload)))
        self._file.write(payload)
        self.size += record_size
        if self.fsync == "always":
            self.sync()
        else:
            self._dirty = True
        return self.size

    def sync(self) -> None:
        """Flushes (and under batch/always fsyncs) everything appended so far."""
        self._file.flush()
        if self.fsync != "never":
            os.fsync(self._file.fileno())
        self._dirty = False

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()
