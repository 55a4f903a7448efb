"""The record log: every final trail (and revision) as one hash-chained canonical JSON record.

It is the single ordered source for Kafka (the publisher reads it from a cursor), for
`vllm-audit export` and `verify`, and, without Kafka, the archive. It reuses the ingest WAL's
machinery (`WriteAheadLog`, one record per payload) in `<data_dir>/records/`.

Flow: `append()` runs on the agent's loop: it assigns `seq`, chains and seals the record (see
chain.py) and queues its bytes. The writer task (`run()`) group-commits the queue on a worker
thread (append + sync per group, so the loop never waits on a disk), then marks the records
durable, keeps them in a bounded in-memory tail for the publisher and calls each record's
`on_recorded` (the trail store then releases the ingest WAL segments that held the trail).
The publisher only ever sees durable records, so a crash never reuses a published `seq`.

A refused append (log at its cap while unpublished records fill it, disk full or error) keeps
the records queued and retries with backoff; meanwhile their ingest segments stay pinned, the
ingest WAL fills and refuses hooks' batches: back-pressure, nothing dropped. Counted.

Checkpoints (chain.py) are written every `checkpoint_every` records or `checkpoint_interval`
seconds when records came in, and at a clean stop (so a stopped log ends with one).

Retention (`reclaim`): the oldest sealed segments go while the log is above 90% of its cap or
their newest record is older than `retention_days`, each counted by reason (size, age) — but
never a segment holding a record the publisher has not had acknowledged: with Kafka down the
log keeps everything owed and refuses at its cap instead.

Cursor: `<records dir>/cursor` holds the last `seq` the sink acknowledged (written atomically:
temp file, fsync, rename). At start the log is replayed to rebuild the chain head, the
segment index and the unpublished tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from vllm_audit_agent.model import record as records
from vllm_audit_agent.records.chain import (
    GENESIS_HASH,
    RECORD_TYPE_ACCESS,
    RECORD_TYPE_CHECKPOINT,
    RECORD_TYPE_REQUEST,
    Signer,
    seal,
)
from vllm_audit_agent.storage.datadir import write_private_file
from vllm_audit_agent.storage.wal import Position, ReadRecord, WalRefused, WriteAheadLog

logger = logging.getLogger("vllm_audit.agent")

CURSOR_NAME = "cursor"
DEAD_LETTER_NAME = "dead-letter.jsonl"
#: Topic suffix per record type (`<prefix>.<suffix>`).
TOPICS = {RECORD_TYPE_REQUEST: "requests", RECORD_TYPE_CHECKPOINT: "checkpoints",
          RECORD_TYPE_ACCESS: "access"}
#: Share of the cap retention keeps the log under (the rest is headroom between sweeps).
RETENTION_RATIO = 0.9
#: Event ids of this many newest records are remembered at start, so that replaying the
#: ingest WAL does not record again a trail already in the log. Freed once replay is over.
REPLAY_DEDUP_RECORDS = 1_000_000
#: Trails whose newest record is remembered at start (its revision, and its bytes when it was
#: forced), so that a half arriving after a restart continues the trail: the next revision,
#: with the half recorded before. At most this many, and at most REMEMBERED_FORCED_BYTES of
#: forced records (a record at level full carries its grammar steps). Freed once handed to
#: the trail store.
REMEMBERED_TRAILS = 100_000
REMEMBERED_FORCED_BYTES = 64 << 20
#: What one read of the log on disk loads for the publisher (about). Reads go on from where
#: the last one stopped and the next chunk is read ahead while this one is sent, so a chunk
#: only needs to be larger than a send window.
DISK_CHUNK_BYTES = 8 << 20
#: Reasons retention deletes a segment.
EXPIRY_REASONS = ("size", "age")
OnRecorded = Callable[[], None]


def event_id(record: dict[str, Any]) -> str:
    """Trail id + revision: unique per record, stable across re-delivery, so a consumer that
    keeps the newest revision per trail id never takes a forced finalisation for the real
    record. Falls back to `request_id` and revision 0 for records without a trail id."""
    trail = record.get("trail_id") or record.get("request_id") or ""
    return records.event_id(str(trail), int(record.get("revision") or 0))


@dataclass(slots=True)
class Entry:
    """One durable record as the publisher needs it."""
    seq: int
    topic: str
    key: bytes
    value: bytes
    time_ms: int


@dataclass(slots=True)
class SegmentInfo:
    first_seq: int
    last_seq: int
    last_time_ms: int


def _entry(record: dict[str, Any], value: bytes) -> Entry:
    kind = record.get("type", RECORD_TYPE_REQUEST)
    key = (record.get("trail_id") or record.get("request_id") or kind) if kind == \
        RECORD_TYPE_REQUEST else kind
    return Entry(int(record["seq"]), TOPICS.get(kind, "requests"), str(key).encode(), value,
                 int(record.get("recorded_unix_ms", 0)))


class RecordLog:
    def __init__(self, directory: Path, max_bytes: int, fsync: str, signer: Signer, *,
                 retention_days: float = 180.0, checkpoint_every: int = 1000,
                 checkpoint_interval: float = 10.0, tail_max_bytes: int = 64 << 20,
                 segment_bytes: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.signer = signer
        self.retention_days = retention_days
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.tail_max_bytes = tail_max_bytes
        self.clock = clock
        self.counters: Counter[str] = Counter({f"expired_segments_{r}": 0 for r in EXPIRY_REASONS})
        self.wal = WriteAheadLog(directory, max_bytes, fsync, segment_bytes)
        self.head_seq = 0
        self.head_hash = GENESIS_HASH
        #: Highest seq written and synced; the publisher reads up to here.
        self.durable_seq = 0
        self.segments: dict[int, SegmentInfo] = {}
        #: Last seq the sink acknowledged (persisted in `cursor`).
        self.cursor = self._load_cursor()
        #: Bytes of durable records after the cursor.
        self.unpublished_bytes = 0
        self._tail: deque[Entry] = deque()
        self._tail_bytes = 0
        #: Records read back from disk for the publisher (when the tail does not reach back).
        self._disk_chunk: list[Entry] = []
        #: (seq of the last record a disk read took, where the log goes on after it).
        self._disk_next: tuple[int, Position] | None = None
        #: The next chunk, being read ahead: (the seq it follows, its read).
        self._read_ahead: tuple[int, asyncio.Task[list[Entry]]] | None = None
        self._pending: list[tuple[Entry, OnRecorded | None]] = []
        self._writing = 0
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._wake = asyncio.Event()
        self._durable = asyncio.Event()
        self._stopping = asyncio.Event()
        self._io = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self.replay_event_ids: set[str] | None = None
        #: trail id -> (newest revision recorded, that record's bytes if it was forced).
        self.recorded_trails: OrderedDict[str, tuple[int, bytes | None]] = OrderedDict()
        self._forced_bytes = 0
        self._replay()

    # -- start ---------------------------------------------------------------------------
    def _load_cursor(self) -> int:
        try:
            return int((self.directory / CURSOR_NAME).read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            logger.warning("record log cursor unreadable; publishing from the start")
            self.counters["cursor_unreadable"] += 1
            return 0

    def _replay(self) -> None:
        ids: deque[str] = deque(maxlen=REPLAY_DEDUP_RECORDS)
        tail: deque[Entry] = deque()
        replayed = 0
        for segment, payload in self.wal.replay():
            replayed += 1
            try:
                record = orjson.loads(payload)
                seq = int(record["seq"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                self.counters["replay_unreadable_records"] += 1
                continue
            if self.head_seq and seq != self.head_seq + 1:
                self.counters["replay_seq_gaps"] += 1
                logger.warning("record log: seq %d follows %d", seq, self.head_seq)
            self.head_seq, self.head_hash = seq, str(record.get("hash", ""))
            entry = _entry(record, payload)
            info = self.segments.get(segment)
            if info is None:
                self.segments[segment] = SegmentInfo(seq, seq, entry.time_ms)
            else:
                info.last_seq, info.last_time_ms = seq, max(info.last_time_ms, entry.time_ms)
            if record.get("type") == RECORD_TYPE_REQUEST and "event_id" in record:
                ids.append(str(record["event_id"]))
                self._remember_trail(record, payload)
            if seq > self.cursor:
                self.unpublished_bytes += len(payload)
                tail.append(entry)
                self._tail_bytes += len(payload)
                while self._tail_bytes > self.tail_max_bytes and len(tail) > 1:
                    self._tail_bytes -= len(tail.popleft().value)
            if record.get("type") == RECORD_TYPE_CHECKPOINT:
                self._since_checkpoint = 0
            else:
                self._since_checkpoint += 1
        self._tail = tail
        if self.cursor > self.head_seq:
            logger.warning("record log cursor %d is past the log's head %d", self.cursor,
                           self.head_seq)
            self.counters["cursor_past_head"] += 1
            self.cursor = self.head_seq
        self.durable_seq = self.head_seq
        self.counters["replayed_records"] = replayed
        self.replay_event_ids = set(ids)

    def _remember_trail(self, record: dict[str, Any], payload: bytes) -> None:
        trail = str(record.get("trail_id") or "")
        if not trail:
            return
        revision = int(record.get("revision") or 0)
        known = self.recorded_trails.get(trail)
        if known is not None and known[0] > revision:
            return
        forced = record.get("finalised_by", "FINALISED_BY_COMPLETE") != "FINALISED_BY_COMPLETE"
        kept = payload if forced else None
        if known is not None and known[1] is not None:
            self._forced_bytes -= len(known[1])
        self.recorded_trails[trail] = (revision, kept)
        self.recorded_trails.move_to_end(trail)
        if kept is not None:
            self._forced_bytes += len(kept)
        while self.recorded_trails and (len(self.recorded_trails) > REMEMBERED_TRAILS
                                        or self._forced_bytes > REMEMBERED_FORCED_BYTES):
            _, (_, old) = self.recorded_trails.popitem(last=False)
            if old is not None:
                self._forced_bytes -= len(old)

    def recorded_before(self, trail_id: str) -> tuple[int, bool] | None:
        """Until `take_recorded_trails`: the newest revision recorded for a trail before this
        start and whether that record was forced (None: not among the newest trails)."""
        known = self.recorded_trails.get(trail_id)
        return None if known is None else (known[0], known[1] is not None)

    def take_recorded_trails(self) -> list[tuple[str, int, dict[str, Any] | None]]:
        """What `_replay` remembered of the newest trails, oldest first: (trail id, newest
        revision, that record when it was forced). Handed over once."""
        out = [(trail, revision, orjson.loads(forced) if forced is not None else None)
               for trail, (revision, forced) in self.recorded_trails.items()]
        self.recorded_trails = OrderedDict()
        self._forced_bytes = 0
        return out

    def end_replay(self) -> None:
        """The ingest WAL has been replayed: the start-up de-duplication set can go."""
        self.replay_event_ids = None

    # -- appending (agent loop) -----------------------------------------------------------
    def append(self, record: dict[str, Any], on_recorded: OnRecorded | None = None,
               kind: str = RECORD_TYPE_REQUEST) -> int:
        """Chains and queues one record; returns its seq. `on_recorded` runs once it is
        durable. The record gets `type`, `recorded_unix_ms` and (requests) `event_id`."""
        record["type"] = kind
        record["recorded_unix_ms"] = int(self.clock() * 1000)
        if kind == RECORD_TYPE_REQUEST:
            record["event_id"] = event_id(record)
        seq = self.head_seq + 1
        value = seal(record, seq, self.head_hash)
        self.head_seq, self.head_hash = seq, record["hash"]
        self._pending.append((_entry(record, value), on_recorded))
        self.counters[f"appended_{kind}"] += 1
        self._wake.set()
        if kind != RECORD_TYPE_CHECKPOINT:  # trails and access records are signed over
            self._since_checkpoint += 1
            if self._since_checkpoint >= self.checkpoint_every:
                self.checkpoint()
        return seq

    def checkpoint(self) -> int:
        """Appends a signed checkpoint over the current head."""
        record: dict[str, Any] = {
            "type": RECORD_TYPE_CHECKPOINT, "chain": 1, "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "count": self.head_seq, "time_unix_ms": int(self.clock() * 1000),
        }
        self.signer.sign(record)
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        return self.append(record, kind=RECORD_TYPE_CHECKPOINT)

    @property
    def pending(self) -> int:
        """Records appended but not yet durable (queued or being written)."""
        return len(self._pending) + self._writing

    # -- writer task ----------------------------------------------------------------------
    def start(self) -> None:
        self._writer = asyncio.create_task(self._run(), name="record-log-writer")

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self._pending:
                if self._stopping.is_set():
                    return  # everything queued (the final checkpoint included) is written
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._checkpoint_due_in())
                self._wake.clear()
                if (self._since_checkpoint and
                        time.monotonic() - self._last_checkpoint >= self.checkpoint_interval):
                    self.checkpoint()
                if self._stopping.is_set() and not self._pending:
                    return
                continue
            if await self.write_pending():
                backoff = 0.05
                continue
            if self._stopping.is_set():
                return
            # Refused: retention may free published segments now (the publisher moves on).
            if self.reclaim(need=sum(len(e.value) for e, _ in self._pending)):
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(0.5, backoff * 2)

    def _checkpoint_due_in(self) -> float:
        return max(0.05, self.checkpoint_interval - (time.monotonic() - self._last_checkpoint))

    async def write_pending(self) -> bool:
        """Writes and syncs what is queued; returns False if the log refused (kept queued)."""
        group, self._pending = self._pending, []
        self._writing = len(group)
        try:
            async with self._io:
                written, segments, refusal = await asyncio.to_thread(self._write, group)
        finally:
            self._writing = 0
        if refusal is not None:
            self._pending[:0] = group[written:]
            self.counters[f"refused_{refusal.reason}"] += 1
            if self.counters[f"refused_{refusal.reason}"] == 1 or written == 0:
                logger.warning("record log refused an append (%s): %s; retrying",
                               refusal.reason, refusal)
        for (entry, on_recorded), segment in zip(group[:written], segments, strict=True):
            info = self.segments.get(segment)
            if info is None:
                self.segments[segment] = SegmentInfo(entry.seq, entry.seq, entry.time_ms)
            else:
                info.last_seq, info.last_time_ms = entry.seq, entry.time_ms
            self.durable_seq = entry.seq
            self.unpublished_bytes += len(entry.value)
            self._tail.append(entry)
            self._tail_bytes += len(entry.value)
            if on_recorded is not None:
                on_recorded()
        while self._tail_bytes > self.tail_max_bytes and len(self._tail) > 1:
            self._tail_bytes -= len(self._tail.popleft().value)
            self.counters["tail_overflow_records"] += 1
        if written:
            self._durable.set()
        return refusal is None

    def _write(self, group: list[tuple[Entry, OnRecorded | None]]
               ) -> tuple[int, list[int], WalRefused | None]:
        segments, refusal = self.wal.append_many([entry.value for entry, _ in group])
        if refusal is not None:
            with contextlib.suppress(WalRefused, OSError):
                self.wal.sync()
            return len(segments), segments, refusal
        self.wal.sync()
        return len(segments), segments, None

    async def stop(self, timeout: float) -> int:
        """Writes a final checkpoint and everything queued within `timeout`; returns the
        number of records left unwritten (their trails' ingest segments still hold them)."""
        if self._since_checkpoint:
            self.checkpoint()
        self._stopping.set()
        self._wake.set()
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer, timeout)
            except TimeoutError:
                self.counters["stop_timeouts"] += 1
        left = len(self._pending)
        if left:
            self.counters["unwritten_at_stop"] += left
            logger.warning("record log stopped with %d records unwritten", left)
        return left

    def close(self) -> None:
        self.wal.close()

    async def stop_reading(self) -> None:
        """Waits for a read-ahead still on its worker thread (the publisher stopped)."""
        ahead, self._read_ahead = self._read_ahead, None
        if ahead is not None:
            with contextlib.suppress(Exception):
                await ahead[1]

    # -- reading (publisher) --------------------------------------------------------------
    async def wait_durable(self, after_seq: int, timeout: float | None = None) -> bool:
        """Waits until a record after `after_seq` is durable; returns whether one is."""
        if self.durable_seq > after_seq:
            return True
        self._durable.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._durable.wait(), timeout)
        return self.durable_seq > after_seq

    async def read(self, after_seq: int, max_records: int) -> list[Entry]:
        """Durable records with seq > `after_seq`, oldest first (at most `max_records`).

        From the in-memory tail when it reaches back that far, else from disk (the tail
        overflowed during a long outage, or the records predate this run)."""
        tail = self._tail
        if after_seq >= self.durable_seq:
            return []
        if tail and tail[0].seq <= after_seq + 1:
            start = after_seq + 1 - tail[0].seq
            if start >= len(tail) or tail[start].seq != after_seq + 1:  # a gap at replay
                start = next((i for i, e in enumerate(tail) if e.seq > after_seq), len(tail))
            return [tail[i] for i in range(start, min(len(tail), start + max_records))]
        upto = tail[0].seq - 1 if tail else self.durable_seq
        chunk = self._disk_chunk
        if not chunk or not chunk[0].seq <= after_seq + 1 <= chunk[-1].seq:
            chunk = self._disk_chunk = await self._load_chunk(after_seq, upto)
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

    async def _load_chunk(self, after_seq: int, upto: int) -> list[Entry]:
        ahead = self._read_ahead
        if ahead is not None:
            self._read_ahead = None
            chunk = await ahead[1]
            if ahead[0] == after_seq:
                return chunk
        return await self._read_chunk(after_seq, upto)

    async def _read_chunk(self, after_seq: int, upto: int) -> list[Entry]:
        self.counters["disk_reads"] += 1
        async with self._io:
            return await asyncio.to_thread(self._read_disk, after_seq, upto)

    def _read_disk(self, after_seq: int, upto: int) -> list[Entry]:
        """About DISK_CHUNK_BYTES of records with after_seq < seq <= upto, from disk. A read
        that follows the previous one goes on from where that stopped; any other starts at
        the first segment holding a record after the cursor (during a long outage the log
        holds hundreds of MB the publisher is past)."""
        out: list[Entry] = []
        budget = DISK_CHUNK_BYTES
        last = self._disk_next
        if last is not None and last[0] == after_seq:
            position = last[1]
        else:
            first = min((s for s, info in list(self.segments.items()) if info.last_seq > after_seq),
                        default=0)
            position = Position(first, 0, None)
        consumed = after_seq
        while budget > 0:
            part, resume = self.wal.read_from(position, budget)
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
                out.append(_entry(record, payload))
                consumed = seq
                budget -= len(payload)
            else:
                position = resume  # past damage the part ended with, too
                continue
            if passed is not None:
                position = Position(passed[0], passed[1], passed[2])
        self._disk_next = (consumed, position)
        return out

    def acknowledged(self, seq: int, nbytes: int) -> None:
        """The sink acknowledged every record up to `seq` (`nbytes` since the last call)."""
        self.cursor = max(self.cursor, seq)
        self.unpublished_bytes = max(0, self.unpublished_bytes - nbytes)
        while self._tail and self._tail[0].seq <= seq:
            self._tail_bytes -= len(self._tail.popleft().value)
        if self._disk_chunk and self._disk_chunk[-1].seq <= seq:
            self._disk_chunk = []

    def persist_cursor(self) -> None:
        """Writes the cursor atomically (temp file, fsync, rename); run off the loop."""
        write_private_file(self.directory / CURSOR_NAME, f"{self.cursor}\n".encode())

    def oldest_unpublished_ms(self) -> int | None:
        """Recorded time of the oldest record after the cursor, when it is in memory."""
        if self.cursor >= self.durable_seq:
            return None
        if self._tail and self._tail[0].seq <= self.cursor + 1:
            return self._tail[0].time_ms
        info = next((i for i in self.segments.values() if i.last_seq > self.cursor), None)
        return info.last_time_ms if info is not None else None

    @property
    def backlog_records(self) -> int:
        return max(0, self.durable_seq - self.cursor)

    # -- retention ------------------------------------------------------------------------
    def reclaim(self, need: int = 0) -> int:
        """Deletes the oldest sealed segments past the size or age limit; returns how many.

        `need`: bytes waiting to be written (after a refusal), to make room for."""
        deleted = 0
        horizon_ms = (self.clock() - self.retention_days * 86400) * 1000
        for segment in sorted(self.segments):
            info = self.segments[segment]
            if info.last_seq > self.cursor:
                break  # owed to the sink: kept (and the log refuses at its cap)
            if self.wal.size + need > self.wal.max_bytes * RETENTION_RATIO:
                reason = "size"
            elif info.last_time_ms < horizon_ms:
                reason = "age"
            else:
                break
            if not self.wal.delete(segment):
                break
            del self.segments[segment]
            self.counters[f"expired_segments_{reason}"] += 1
            deleted += 1
        return deleted


def read_records(directory: Path) -> Iterator[bytes]:
    """Every record payload in a record log directory, oldest first, without changing it.

    The WAL's recovery may truncate or rewrite a damaged file, so the segments are copied
    to a scratch directory and opened there: readers (export, verify) never modify the log."""
    import shutil
    import tempfile

    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory")
    with tempfile.TemporaryDirectory(prefix="vllm-audit-read-") as scratch:
        copy = Path(scratch) / "records"
        shutil.copytree(directory, copy, ignore=shutil.ignore_patterns(
            CURSOR_NAME, CURSOR_NAME + ".tmp", DEAD_LETTER_NAME))
        wal = WriteAheadLog(copy, 1 << 62, "never")
        try:
            for _, payload in wal.replay():
                yield payload
        finally:
            wal.close()
