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

Identity and tree (identity.py, merkle.py): a log without one gets a `log_id` and a genesis
record at its first start; every record after it carries the `log_id` and is one leaf of the
log's RFC 9162 Merkle tree. The log keeps the tree's compact range, a snapshot of it after each
segment (what a retention seal names), and, for witnesses, the leaves since the newest size
they all cosigned (`consistency_proof`).

Checkpoints (chain.py, note.py) are written every `checkpoint_every` records or
`checkpoint_interval` seconds when records came in, and at a clean stop (so a stopped log ends
with one). Each names the tree size and root, carries the compact range (so a restart or a
verifier that starts there can go on) and the same head as a C2SP signed note.

Retention (`reclaim`, retention.py) deletes the oldest segments by age (and by size only when
configured), never one holding a record the sink has not acknowledged (nor, with an archive,
one the archive does not hold yet: `expiry_hold`), and only once a signed
*seal* record naming what goes and the tree at its end is durable.

Cursor: `<records dir>/cursor` holds the last `seq` the sink acknowledged (written atomically:
temp file, fsync, rename). At start the log is read back (log_start.py) to rebuild the chain
head, the segment index and the unpublished tail, and what the agent needs to know of the
records written before (recorded_before.py); the log takes the result in `_apply_start`.

Sealed segments (footers.py, storage/sealed.py): each segment the writer has finished is
rewritten compressed, with a footer saying what a start needs of it; a start reads the footers,
the newest sealed segments (for what it remembers of the newest trails) and the open segment,
so its time does not grow with the log's history. `seal_segments=False` writes the log as
versions before did (plain segments, no footers); both are read the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vllm_audit_agent.records.chain import (
    COVERED_TYPES,
    GENESIS_HASH,
    RECORD_TYPE_CHECKPOINT,
    RECORD_TYPE_COSIGNATURE,
    RECORD_TYPE_ERASURE,
    RECORD_TYPE_GENESIS,
    RECORD_TYPE_LEVEL,
    RECORD_TYPE_REQUEST,
    RECORD_TYPE_SEAL,
    Signer,
    seal,
)
from vllm_audit_agent.records.disk_feed import DiskFeed
from vllm_audit_agent.records.entry import Entry, entry_of, event_id
from vllm_audit_agent.records.footers import segment_footer
from vllm_audit_agent.records.identity import genesis_record, new_log_id
from vllm_audit_agent.records.log_start import ACCESS_TOPIC, CURSOR_NAME, LogStart, read_start
from vllm_audit_agent.records.merkle import CompactRange, leaf_hash
from vllm_audit_agent.records.note import Checkpoint, origin_of, sign_checkpoint
from vllm_audit_agent.records.proof_window import ProofWindow
from vllm_audit_agent.records.recorded_before import RecordedBefore
from vllm_audit_agent.records.retention import (
    EXPIRY_REASONS,
    ExpiryHold,
    SegmentInfo,
    TreeState,
    delete_segments,
    plan_expiry,
    seal_record,
)
from vllm_audit_agent.storage.datadir import write_private_file
from vllm_audit_agent.storage.wal import WalRefused, WriteAheadLog

logger = logging.getLogger("vllm_audit.agent")

DEAD_LETTER_NAME = "dead-letter.jsonl"
OnRecorded = Callable[[], None]
CheckpointListener = Callable[[dict[str, Any]], None]
RecordListener = Callable[[dict[str, Any]], None]


class RecordLog:
    def __init__(self, directory: Path, max_bytes: int, fsync: str, signer: Signer, *,
                 retention_days: float = 180.0, checkpoint_every: int = 1000,
                 checkpoint_interval: float = 10.0, tail_max_bytes: int = 64 << 20,
                 access_budget_bytes: int | None = None,
                 segment_bytes: int | None = None,
                 expire_by_size: bool = True,
                 identity: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time,
                 seal_segments: bool = True,
                 recall_since_ms: int | None = None) -> None:
        self.directory = directory
        #: Whether finished segments are sealed (compressed, with a footer).
        self.seal_segments = seal_segments
        self._unsealable: set[int] = set()
        #: Records footers kept (erasures) of the segments the start did not read (log_start.py).
        self.footer_records: list[dict[str, Any]] = []
        self.signer = signer
        self.retention_days = retention_days
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.tail_max_bytes = tail_max_bytes
        #: Bytes of the cap access records may hold (retention.py); a tenth of it by default.
        self.access_budget_bytes = max_bytes // 10 if access_budget_bytes is None \
            else access_budget_bytes
        #: Whether the size rule may expire records (published and sealed) before their age.
        self.expire_by_size = expire_by_size
        self.clock = clock
        self.counters: Counter[str] = Counter({f"expired_segments_{r}": 0 for r in EXPIRY_REASONS})
        for name in ("seals_written", "expired_before_seal_durable", "proof_leaves_dropped"):
            self.counters[name] = 0
        self.wal = WriteAheadLog(directory, max_bytes, fsync, segment_bytes)
        self.head_seq = 0
        self.head_hash = GENESIS_HASH
        #: Highest seq written and synced; the publisher reads up to here.
        self.durable_seq = 0
        self.segments: dict[int, SegmentInfo] = {}
        #: Last seq the sink acknowledged (persisted in `cursor`; read at start).
        self.cursor = 0
        #: Bytes of durable records after the cursor.
        self.unpublished_bytes = 0
        self._tail: deque[Entry] = deque()
        self._tail_bytes = 0
        self._pending: list[tuple[Entry, OnRecorded | None, TreeState | None]] = []
        self._writing = 0
        #: Bytes of access records in the group being written (see write_pending).
        self._writing_access_bytes = 0
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._wake = asyncio.Event()
        self._durable = asyncio.Event()
        self._stopping = asyncio.Event()
        self._io = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        #: Records the tail no longer holds, for the publisher (shares `segments` and `_io`).
        self._disk = DiskFeed(self.wal, self.segments, self._io, self.counters)
        self.replay_event_ids: set[str] | None = None
        self._earlier = RecordedBefore()
        #: The log's identity and Merkle tree (None: records before any genesis).
        self.log_id = ""
        self.tree: CompactRange | None = None
        self._checkpoint_listeners: list[CheckpointListener] = []
        self._record_listeners: list[RecordListener] = []
        #: What witnesses' consistency proofs need (kept once a witness listens).
        self._proofs = ProofWindow(self.counters)
        #: A seal appended whose segments are deleted once it is durable.
        self._sealing: list[int] | None = None
        #: Root (hex) of each of this log's checkpoints by tree size: what an anchor held
        #: elsewhere is compared with at start (anchor_check.py).
        self.checkpoint_roots: dict[int, str] = {}
        #: The audit level the newest level record names (None: none yet).
        self.last_level: str | None = None
        self._identity = dict(identity or {})
        #: Set by the WORM archive (archive/uploader.py): True keeps a segment retention would
        #: otherwise delete, until the archive holds it (retention.py's plan_expiry).
        self.expiry_hold: ExpiryHold | None = None
        #: Content keys the log's erasure records name (erasure.py): the key store follows
        #: the log, so those still present at a start are destroyed then (server.py).
        self.erased_content_keys: list[str] = []
        self._apply_start(read_start(self.wal, directory, tail_max_bytes, recall_since_ms))
        if not self.log_id or self.tree is None:
            self._start_log(self._identity)

    # -- start ---------------------------------------------------------------------------
    def _apply_start(self, start: LogStart) -> None:
        """Takes what the start read of the log (log_start.py), in this one place."""
        self.cursor = start.cursor
        self.head_seq, self.head_hash = start.head_seq, start.head_hash
        self.durable_seq = start.head_seq
        # The same dict as before: the disk feed holds it.
        self.segments.clear()
        self.segments.update(start.segments)
        self._tail, self._tail_bytes = start.tail, start.tail_bytes
        self.unpublished_bytes = start.unpublished_bytes
        self._since_checkpoint = start.since_checkpoint
        self.last_level = start.last_level
        self.log_id, self.tree = start.log_id, start.tree
        self.checkpoint_roots = start.checkpoint_roots
        self._earlier = start.recorded_before
        self.replay_event_ids = start.replay_event_ids
        self.erased_content_keys = list(start.erased_content_keys)
        self.footer_records = list(start.footer_records)
        self.counters.update(start.counters)

    @property
    def recorded_trails(self) -> OrderedDict[str, tuple[int, bytes | None]]:
        """Until `take_recorded_trails`: trail id -> (newest revision, its bytes if forced)."""
        return self._earlier.trails

    def recorded_before(self, trail_id: str) -> tuple[int, bool] | None:
        """Until `take_recorded_trails`: the newest revision recorded for a trail before this
        start and whether that record was forced (None: not among the newest trails)."""
        return self._earlier.newest(trail_id)

    def take_recorded_trails(self) -> list[tuple[str, int, dict[str, Any] | None]]:
        """What the start remembered of the newest trails, oldest first: (trail id, newest
        revision, that record when it was forced). Handed over once."""
        return self._earlier.take_trails()

    def end_replay(self) -> None:
        """The ingest WAL has been replayed: the start-up de-duplication set can go."""
        self.replay_event_ids = None

    def start_new_log(self, reason: str, detail: Mapping[str, Any]) -> None:
        """A break found in this log (an anchor held elsewhere disagrees with it): the agent
        goes on under a new identity whose genesis names the break and the head it follows;
        the log as found stays, for the investigation."""
        logger.error("record log %s: %s (%s); going on as a new log", self.log_id, reason,
                     dict(detail))
        self.counters[f"break_{reason}"] += 1
        self.checkpoint_roots = {}
        self._start_log(self._identity, {"reason": reason, "log_id": self.log_id, **detail})

    def _start_log(self, identity: Mapping[str, str],
                   found_break: Mapping[str, Any] | None = None) -> None:
        """A new log identity and tree, opened by a signed genesis record. A chain that already
        had records (written before identities, or by a log whose tree could not be rebuilt)
        goes on: the genesis names the head it follows."""
        if self.log_id and self.tree is None:
            logger.warning("record log %s: its Merkle tree cannot be rebuilt from what is left; "
                           "a new log identity follows its head", self.log_id)
            self.counters["tree_unrecoverable"] += 1
        self.log_id = new_log_id()
        self.tree = CompactRange()
        follows = (self.head_seq, self.head_hash) if self.head_seq else None
        self.append(genesis_record(self.log_id, self.signer, identity, int(self.clock() * 1000),
                                   follows, found_break), kind=RECORD_TYPE_GENESIS)

    # -- appending (agent loop) -----------------------------------------------------------
    def append(self, record: dict[str, Any], on_recorded: OnRecorded | None = None,
               kind: str = RECORD_TYPE_REQUEST) -> int:
        """Chains and queues one record; returns its seq. `on_recorded` runs once it is
        durable. The record gets `type`, `recorded_unix_ms`, `log_id` and (requests)
        `event_id`, and becomes a leaf of the log's tree."""
        record["type"] = kind
        record["recorded_unix_ms"] = int(self.clock() * 1000)
        record["log_id"] = self.log_id
        if kind == RECORD_TYPE_REQUEST:
            record["event_id"] = event_id(record)
        seq = self.head_seq + 1
        value = seal(record, seq, self.head_hash)
        self.head_seq, self.head_hash = seq, record["hash"]
        tree = self.tree
        snapshot: TreeState | None = None
        if tree is not None:
            leaf = leaf_hash(value)
            tree.append(leaf)
            snapshot = TreeState(tree.size, tuple(tree.nodes))
            if self._proofs.keeping:
                self._proofs.keep(leaf)
        self._pending.append((entry_of(record, value), on_recorded, snapshot))
        self.counters[f"appended_{kind}"] += 1
        self._wake.set()
        for listener in self._record_listeners:
            listener(record)
        if kind in COVERED_TYPES:  # what checkpoints are about
            self._since_checkpoint += 1
            if self._since_checkpoint >= self.checkpoint_every:
                self.checkpoint()
        return seq

    def checkpoint(self) -> int:
        """Appends a signed checkpoint over the current head: the chain's head, the tree's
        size and root, its compact range, and the same as a C2SP signed note."""
        tree = self.tree if self.tree is not None else CompactRange()
        root = tree.root()
        note = sign_checkpoint(Checkpoint(origin_of(self.log_id), tree.size, root),
                               self.signer.private_key)
        record: dict[str, Any] = {
            "type": RECORD_TYPE_CHECKPOINT, "chain": 1, "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "count": self.head_seq, "time_unix_ms": int(self.clock() * 1000),
            "log_id": self.log_id, "tree_size": tree.size, "root_hash": root.hex(),
            "compact_range": tree.to_hex(), "note": note.text(),
        }
        self.checkpoint_roots[tree.size] = root.hex()
        self.signer.sign(record)
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        listeners = list(self._checkpoint_listeners)

        def durable() -> None:
            for listener in listeners:
                listener(record)
        return self.append(record, durable if listeners else None, kind=RECORD_TYPE_CHECKPOINT)

    # -- witnesses ----------------------------------------------------------------------------
    def add_checkpoint_listener(self, listener: CheckpointListener) -> None:
        """`listener(checkpoint record)` runs once each later checkpoint is durable; from now
        on the log keeps the leaves witnesses' consistency proofs need."""
        self._checkpoint_listeners.append(listener)
        self._proofs.start(self.tree)

    def add_record_listener(self, listener: RecordListener) -> None:
        """`listener(record)` runs right after each later append, on the appending loop, with
        the sealed record (do not change it): it must only take it (the detections' runner
        queues it and evaluates off this path)."""
        self._record_listeners.append(listener)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof between two sizes of this log's tree (proof_window.py)."""
        return self._proofs.consistency_proof(old_size, new_size)

    def witnessed(self, size: int) -> None:
        """Every witness has cosigned the tree up to `size`: proofs need not start earlier."""
        self._proofs.witnessed(size)

    def record_level(self, level: str, how: str) -> int | None:
        """A level record when the level in effect is not the one the log last recorded:
        `how` says through what (the control API, or found at a start: then it was changed
        outside the API — the level file or the configuration)."""
        if level == self.last_level:
            return None
        previous, self.last_level = self.last_level, level
        return self.append({"level": level, "previous_level": previous, "how": how},
                           kind=RECORD_TYPE_LEVEL)

    def append_erasure(self, record: dict[str, Any], on_recorded: OnRecorded) -> int:
        """A signed erasure record (erasure.py); `on_recorded` (which destroys the keys it
        names) runs once it is durable."""
        self.signer.sign(record)
        return self.append(record, on_recorded, kind=RECORD_TYPE_ERASURE)

    def append_cosignature(self, checkpoint_seq: int, tree_size: int, witness: str,
                           note_text: str) -> int:
        """A witness's cosignature of one of this log's checkpoints, as a record."""
        return self.append({"checkpoint_seq": checkpoint_seq, "tree_size": tree_size,
                            "witness": witness, "note": note_text},
                           kind=RECORD_TYPE_COSIGNATURE)

    @property
    def access_bytes(self) -> int:
        """Bytes of access records in the log, written or queued (against their budget)."""
        return sum(i.access_bytes for i in self.segments.values()) + sum(
            len(e.value) for e, _, _ in self._pending if e.topic == ACCESS_TOPIC) + \
            self._writing_access_bytes

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
                if not self._pending and not self._stopping.is_set():
                    await self.seal_finished()
                continue
            if self._stopping.is_set():
                return
            # Refused: retention may free published segments now (the publisher moves on).
            if self.reclaim(need=sum(len(e.value) for e, _, _ in self._pending), refused=True):
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(0.5, backoff * 2)

    async def seal_finished(self) -> int | None:
        """Seals (compresses, with its footer) the oldest finished segment not sealed yet, on
        a worker thread; returns its index (None: none to seal, or it could not be)."""
        if not self.seal_segments:
            return None
        unsealed = [i for i in self.wal.unsealed() if i not in self._unsealable]
        if not unsealed:
            return None
        segment = unsealed[0]
        info = self.segments.get(segment)
        async with self._io:
            sealed = await asyncio.to_thread(self.wal.seal_segment, segment,
                                             lambda payloads: segment_footer(info, payloads))
        if sealed is None:  # damaged since it was written (or gone): left as it is
            self._unsealable.add(segment)
            self.counters["seal_skipped"] += 1
            return None
        self.counters["sealed_segments"] += 1
        return segment

    def _checkpoint_due_in(self) -> float:
        return max(0.05, self.checkpoint_interval - (time.monotonic() - self._last_checkpoint))

    async def write_pending(self) -> bool:
        """Writes and syncs what is queued; returns False if the log refused (kept queued)."""
        group, self._pending = self._pending, []
        self._writing = len(group)
        # Counted against the access budget while being written (and while waiting for a
        # segment being sealed): without it the budget read low for the whole write.
        self._writing_access_bytes = sum(len(e.value) for e, _, _ in group
                                         if e.topic == ACCESS_TOPIC)
        try:
            async with self._io:
                written, segments, refusal = await asyncio.to_thread(self._write, group)
        finally:
            # No await from here until the written entries are in their segments' counts.
            self._writing = self._writing_access_bytes = 0
        if refusal is not None:
            self._pending[:0] = group[written:]
            self.counters[f"refused_{refusal.reason}"] += 1
            if self.counters[f"refused_{refusal.reason}"] == 1 or written == 0:
                logger.warning("record log refused an append (%s): %s; retrying",
                               refusal.reason, refusal)
        for (entry, on_recorded, tree), segment in zip(group[:written], segments, strict=True):
            info = self.segments.get(segment)
            if info is None:
                info = self.segments[segment] = SegmentInfo(entry.seq, entry.seq, entry.time_ms)
            else:
                info.last_seq, info.last_time_ms = entry.seq, entry.time_ms
            info.tree_after, info.last_hash = tree, entry.hash
            if entry.topic == ACCESS_TOPIC:
                info.access_bytes += len(entry.value)
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

    def _write(self, group: list[tuple[Entry, OnRecorded | None, TreeState | None]]
               ) -> tuple[int, list[int], WalRefused | None]:
        segments, refusal = self.wal.append_many([entry.value for entry, _, _ in group])
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
        await self._disk.stop()

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

        From the in-memory tail when it reaches back that far, else from disk (disk_feed.py:
        the tail overflowed during a long outage, or the records predate this run)."""
        tail = self._tail
        if after_seq >= self.durable_seq:
            return []
        if tail and tail[0].seq <= after_seq + 1:
            start = after_seq + 1 - tail[0].seq
            if start >= len(tail) or tail[start].seq != after_seq + 1:  # a gap at replay
                start = next((i for i, e in enumerate(tail) if e.seq > after_seq), len(tail))
            return [tail[i] for i in range(start, min(len(tail), start + max_records))]
        upto = tail[0].seq - 1 if tail else self.durable_seq
        return await self._disk.read(after_seq, upto, max_records)

    def acknowledged(self, seq: int, nbytes: int) -> None:
        """The sink acknowledged every record up to `seq` (`nbytes` since the last call)."""
        self.cursor = max(self.cursor, seq)
        self.unpublished_bytes = max(0, self.unpublished_bytes - nbytes)
        while self._tail and self._tail[0].seq <= seq:
            self._tail_bytes -= len(self._tail.popleft().value)
        self._disk.acknowledged(seq)

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
    def reclaim(self, need: int = 0, refused: bool = False) -> int:
        """Expires the oldest segments past the age (or, when configured, the size) limit:
        appends a seal naming them and deletes them once it is durable. Returns how many
        segments were deleted now.

        `need`: bytes waiting to be written (after a refusal), to make room for. `refused`:
        the log refused an append; a seal queued behind the refusal cannot become durable
        before room is made, so its segments go first (counted: expired_before_seal_durable)."""
        if self._sealing is not None:
            if not refused:
                return 0
            planned, self._sealing = self._sealing, None
            self.counters["expired_before_seal_durable"] += 1
            return delete_segments(self.wal, self.segments, planned, self.counters)
        horizon_ms = (self.clock() - self.retention_days * 86400) * 1000
        plan = plan_expiry(self.wal, self.segments, self.cursor, horizon_ms, need, self.counters,
                           access_budget=self.access_budget_bytes, by_size=self.expire_by_size,
                           hold=self.expiry_hold)
        if not plan:
            return 0
        record = seal_record([self.segments[s] for s in plan], self.log_id,
                             int(self.clock() * 1000))
        self.signer.sign(record)
        self._sealing = plan

        def sealed() -> None:
            if self._sealing is plan:
                self._sealing = None
                delete_segments(self.wal, self.segments, plan, self.counters)
        self.append(record, sealed, kind=RECORD_TYPE_SEAL)
        self.counters["seals_written"] += 1
        return 0
