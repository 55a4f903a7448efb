"""The uploader: every sealed segment of the record log into the WORM archive, oldest first.

A task on the agent's loop; the disk reads and the S3 calls run on a worker thread. At start it
lists what the archive already holds (a segment counts once both its objects are there), re-drives
the dead letters a previous run left, then archives each sealed segment in log order.

Failures are counted by reason (store.py's FAILURE_REASONS, every one born at 0). A transient
one (the server unreachable or failing) is retried with backoff (up to `max_backoff`) for as
long as it lasts: meanwhile retention keeps every segment not archived (the hold this module
sets on the log), so a long outage fills the record log to its cap, which then refuses new
records — back-pressure, alerted (VllmAuditArchiveFailing), nothing lost. A permanent one
(refused, conflict) repeated `dead_letter_after` times dead-letters the segment: its two objects
are written to `dead_letter_dir` with the reason, counted, and the uploader goes on (the copy
is what retention may then rely on); each start tries the dead letters again and deletes the
ones that reach the archive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from vllm_audit_agent.archive.layout import CHECKPOINTS, SEGMENTS
from vllm_audit_agent.archive.segments import SegmentObjects, read_segment
from vllm_audit_agent.archive.store import FAILURE_REASONS, PERMANENT_REASONS, ArchiveError, S3Store
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.retention import SegmentInfo
from vllm_audit_agent.storage.datadir import private_dir, write_private_file

logger = logging.getLogger("vllm_audit.agent")
Range = tuple[int, int]
#: The dead-letter files of one segment: its two objects and why it is there.
_SEGMENT_SUFFIX, _CHECKPOINT_SUFFIX, _REASON_SUFFIX = ".segment.jsonl", ".checkpoint.jsonl", \
    ".reason.json"


class Archiver:
    def __init__(self, log: RecordLog, store: S3Store, dead_letter_dir: Path, *,
                 interval: float = 5.0, max_backoff: float = 30.0, dead_letter_after: int = 5,
                 clock: Callable[[], float] = time.time) -> None:
        self.log = log
        self.store = store
        self.dead_letter_dir = dead_letter_dir
        self.interval = interval
        self.max_backoff = max_backoff
        self.dead_letter_after = dead_letter_after
        self.clock = clock
        self.counters: Counter[str] = Counter()
        for name in ("uploaded_segments", "uploaded_bytes", "objects_already_there",
                     "redriven_segments"):
            self.counters[name] = 0
        for reason in FAILURE_REASONS:
            self.counters[f"failures_{reason}"] = 0
            self.counters[f"dead_lettered_{reason}"] = 0
        #: Segments the archive holds, or a dead letter holds (retention may delete them).
        self.done: set[Range] = set()
        self.listed = False
        #: Snapshots for the metrics (a scrape never walks the log's segments).
        self.pending_segments = 0
        self.oldest_pending_ms: int | None = None
        self.last_success: float | None = None
        self.failing_since: float | None = None
        self._permanent: Counter[Range] = Counter()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        log.expiry_hold = self.holds

    def holds(self, info: SegmentInfo) -> bool:
        """Retention's hold: True while the archive does not hold the segment."""
        return (info.first_seq, info.last_seq) not in self.done

    # -- the task --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="archive-uploader")

    async def stop(self, timeout: float) -> None:
        """Stops between two calls; an S3 call under way is given `timeout` to finish."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                self.counters["stop_timeouts"] += 1

    async def run(self) -> None:
        backoff = self.interval
        while not self._stopping.is_set():
            ok = await self.run_once()
            backoff = self.interval if ok else min(self.max_backoff, max(0.5, backoff * 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)

    async def run_once(self) -> bool:
        """One pass: list (first), re-drive dead letters (first), archive sealed segments.
        False when a call failed (the next pass waits longer)."""
        try:
            if not self.listed:
                await asyncio.to_thread(self._list)
                self.listed = True
                await asyncio.to_thread(self._redrive)
            for index in self._sealed():
                if self._stopping.is_set():
                    break
                if not await self._archive(index):
                    break  # not covered by a durable checkpoint yet: later
        except ArchiveError as exc:
            self._failed(exc)
            return False
        finally:
            self._snapshot()
        return True

    # -- steps -----------------------------------------------------------------------------
    def _list(self) -> None:
        both = self.store.ranges(SEGMENTS) & self.store.ranges(CHECKPOINTS)
        self.done |= both | self._dead_letters()

    def _sealed(self) -> list[int]:
        segments, current = self.log.segments, self.log.wal.current
        return [i for i in sorted(segments) if i < current
                and (segments[i].first_seq, segments[i].last_seq) not in self.done]

    async def _archive(self, index: int) -> bool:
        info = self.log.segments.get(index)
        if info is None:
            return True  # deleted meanwhile (it was in `done` then)
        span = (info.first_seq, info.last_seq)
        try:
            objects = await asyncio.to_thread(read_segment, self.log.wal, index,
                                              self.log.durable_seq)
        except OSError as exc:
            raise ArchiveError("unreadable", f"segment {index}: {exc}") from exc
        if objects is None:
            return False
        try:
            await asyncio.to_thread(self._put, span, objects)
        except ArchiveError as exc:
            if exc.reason not in PERMANENT_REASONS:
                raise
            self._permanent[span] += 1
            if self._permanent[span] < self.dead_letter_after:
                raise
            self._failed(exc)
            await asyncio.to_thread(self._dead_letter, span, objects, exc)
            return True
        self.done.add(span)
        self._permanent.pop(span, None)
        self.counters["uploaded_segments"] += 1
        self.counters["uploaded_bytes"] += len(objects.segment) + len(objects.checkpoint)
        self.last_success, self.failing_since = self.clock(), None
        return True

    def _put(self, span: Range, objects: SegmentObjects) -> None:
        location = self.store.location
        for kind, body in ((SEGMENTS, objects.segment), (CHECKPOINTS, objects.checkpoint)):
            if not self.store.put_locked(location.key(kind, *span), body):
                self.counters["objects_already_there"] += 1

    def _failed(self, exc: ArchiveError) -> None:
        self.counters[f"failures_{exc.reason}"] += 1
        if self.failing_since is None:
            self.failing_since = self.clock()
            logger.warning("archive %s: %s (%s); retrying", self.store.location.url, exc,
                           exc.reason)

    def _snapshot(self) -> None:
        sealed = self._sealed()
        self.pending_segments = len(sealed)
        segments = self.log.segments
        self.oldest_pending_ms = segments[sealed[0]].last_time_ms \
            if sealed and sealed[0] in segments else None

    # -- dead letters ----------------------------------------------------------------------
    def _name(self, span: Range) -> str:
        return f"{span[0]:020d}-{span[1]:020d}"

    def _dead_letter(self, span: Range, objects: SegmentObjects, exc: ArchiveError) -> None:
        private_dir(self.dead_letter_dir)
        base = self.dead_letter_dir / self._name(span)
        write_private_file(base.with_name(base.name + _SEGMENT_SUFFIX), objects.segment)
        write_private_file(base.with_name(base.name + _CHECKPOINT_SUFFIX), objects.checkpoint)
        write_private_file(base.with_name(base.name + _REASON_SUFFIX), orjson.dumps(
            {"reason": exc.reason, "detail": str(exc), "time_unix_ms": int(self.clock() * 1000),
             "archive": self.store.location.url}))
        self.done.add(span)
        self.counters[f"dead_lettered_{exc.reason}"] += 1
        logger.error("archive: segment seq %d..%d dead-lettered in %s (%s: %s)", span[0], span[1],
                     self.dead_letter_dir, exc.reason, exc)

    def _dead_letters(self) -> set[Range]:
        if not self.dead_letter_dir.is_dir():
            return set()
        found = set()
        for path in self.dead_letter_dir.glob("*" + _SEGMENT_SUFFIX):
            first, _, last = path.name.removesuffix(_SEGMENT_SUFFIX).partition("-")
            if first.isdigit() and last.isdigit():
                found.add((int(first), int(last)))
        return found

    def _redrive(self) -> None:
        """Each dead letter once more; those the archive now takes are deleted."""
        for span in sorted(self._dead_letters()):
            base = self.dead_letter_dir / self._name(span)
            paths = [base.with_name(base.name + s) for s in
                     (_SEGMENT_SUFFIX, _CHECKPOINT_SUFFIX, _REASON_SUFFIX)]
            objects = SegmentObjects(paths[0].read_bytes(), paths[1].read_bytes())
            try:
                self._put(span, objects)
            except ArchiveError as exc:
                if exc.reason not in PERMANENT_REASONS:
                    raise
                self.counters[f"failures_{exc.reason}"] += 1
                continue
            for path in paths:
                path.unlink(missing_ok=True)
            self.counters["redriven_segments"] += 1
