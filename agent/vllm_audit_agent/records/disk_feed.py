"""The publisher's reads of durable records that the record log's in-memory tail no longer
holds (it overflowed during a long outage, or the records predate this run): read back from
the log on disk in chunks of about DISK_CHUNK_BYTES, on a worker thread.

A read that follows the previous one goes on from where that stopped, and once half a chunk
is handed out the next one is read ahead while the rest is sent, so the publisher never waits
on the disk between chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import orjson

from vllm_audit_agent.records.entry import Entry, entry_of
from vllm_audit_agent.records.retention import SegmentInfo
from vllm_audit_agent.storage.wal import WriteAheadLog
from vllm_audit_agent.storage.wal_reader import Position, ReadRecord

#: What one read of the log on disk loads for the publisher (about). Reads go on from where
#: the last one stopped and the next chunk is read ahead while this one is sent, so a chunk
#: only needs to be larger than a send window.
DISK_CHUNK_BYTES = 8 << 20


class DiskFeed:
    """Reads `wal`, whose segments the record log describes in `segments` (the log's own
    dict, kept current by it); `io` is the log's lock that keeps reads and writes of the
    disk apart."""

    def __init__(self, wal: WriteAheadLog, segments: dict[int, SegmentInfo], io: asyncio.Lock,
                 counters: Counter[str]) -> None:
        self._wal = wal
        self._segments = segments
        self._io = io
        self._counters = counters
        #: Records read back from disk for the publisher (when the tail does not reach back).
        self._chunk: list[Entry] = []
        #: (seq of the last record a disk read took, where the log goes on after it).
        self._next: tuple[int, Position] | None = None
        #: The next chunk, being read ahead: (the seq it follows, its read).
        self._read_ahead: tuple[int, asyncio.Task[list[Entry]]] | None = None

    async def read(self, after_seq: int, upto: int, max_records: int) -> list[Entry]:
        """Records with after_seq < seq <= upto, oldest first (at most `max_records`; a
        chunk may end before)."""
        chunk = self._chunk
        if not chunk or not chunk[0].seq <= after_seq + 1 <= chunk[-1].seq:
            chunk = self._chunk = await self._load_chunk(after_seq, upto)
        start = after_seq + 1 - chunk[0].seq if chunk else 0
        if not 0 <= start < len(chunk) or chunk[start].seq != after_seq + 1:  # gaps
            start = next((i for i, e in enumerate(chunk) if e.seq > after_seq), len(chunk))
        if start >= 4096:
            del chunk[:start]  # keep the scan short; the publisher only reads forward
            start = 0
        out = chunk[start:start + max_records]
        if out and self._read_ahead is None and start + max_records >= len(chunk) // 2:
            # Half of this chunk handed out: the next one is read (on a worker thread) while
            # the rest is sent, so the publisher never waits on the disk between chunks.
            last = chunk[-1].seq
            if last < upto:
                self._read_ahead = (last, asyncio.create_task(self._read_chunk(last, upto)))
        return out

    def acknowledged(self, seq: int) -> None:
        """The sink has every record up to `seq`: a chunk that holds no later one goes."""
        if self._chunk and self._chunk[-1].seq <= seq:
            self._chunk = []

    async def stop(self) -> None:
        """Waits for a read-ahead still on its worker thread (the publisher stopped)."""
        ahead, self._read_ahead = self._read_ahead, None
        if ahead is not None:
            with contextlib.suppress(Exception):
                await ahead[1]

    async def _load_chunk(self, after_seq: int, upto: int) -> list[Entry]:
        ahead = self._read_ahead
        if ahead is not None:
            self._read_ahead = None
            chunk = await ahead[1]
            if ahead[0] == after_seq:
                return chunk
        return await self._read_chunk(after_seq, upto)

    async def _read_chunk(self, after_seq: int, upto: int) -> list[Entry]:
        self._counters["disk_reads"] += 1
        async with self._io:
            return await asyncio.to_thread(self._read_disk, after_seq, upto)

    def _read_disk(self, after_seq: int, upto: int) -> list[Entry]:
        """About DISK_CHUNK_BYTES of records with after_seq < seq <= upto, from disk. A read
        that follows the previous one goes on from where that stopped; any other starts at
        the first segment holding a record after the cursor (during a long outage the log
        holds hundreds of MB the publisher is past)."""
        out: list[Entry] = []
        budget = DISK_CHUNK_BYTES
        last = self._next
        if last is not None and last[0] == after_seq:
            position = last[1]
        else:
            first = min((s for s, info in list(self._segments.items()) if info.last_seq > after_seq),
                        default=0)
            position = Position(first, 0, None)
        consumed = after_seq
        while budget > 0:
            part, resume = self._wal.read_from(position, budget)
            if not part:
                break
            passed: ReadRecord | None = None  # the last record read past
            for item in part:
                payload = item[3]
                record = orjson.loads(payload)
                seq = int(record["seq"])
                if seq > upto:  # not durable when this read began: the next read takes it
                    budget = 0
                    break
                passed = item
                if seq <= after_seq:
                    continue
                out.append(entry_of(record, payload))
                consumed = seq
                budget -= len(payload)
            else:
                position = resume  # past damage the part ended with, too
                continue
            if passed is not None:
                position = Position(passed[0], passed[1], passed[2])
        self._next = (consumed, position)
        return out
